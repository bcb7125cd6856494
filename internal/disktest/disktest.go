// Package disktest gives tests a small real filesystem to fill: the full-disk
// tests of the broker and of jetci up share it.
package disktest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Small mounts a tmpfs of size (e.g. "24m") for the test and returns its
// directory. Without the right to mount it skips, unless JETCI_REQUIRE_MOUNT
// is set (CI), where it fails.
func Small(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := "cannot mount a small tmpfs to fill (needs root): " + strings.TrimSpace(string(out))
		if os.Getenv("JETCI_REQUIRE_MOUNT") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill writes path until its filesystem has no block left, down to 512-byte
// writes so that the last partial blocks are taken too.
func Fill(t testing.TB, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := len(buf); n >= 512; n /= 2 {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
}
