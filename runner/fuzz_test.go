package runner

import (
	"strings"
	"testing"
)

// FuzzArtifactPattern: a pattern from a pipeline file is refused if it could
// leave the workspace, and matching never panics.
func FuzzArtifactPattern(f *testing.F) {
	for _, s := range []string{"out/*.txt", "dist/**", "../x", "/etc/passwd", "a/**/b", "[", "**", "a/../../b"} {
		f.Add(s, "dist/x/y.bin")
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if checkPattern(pattern) == nil {
			if strings.HasPrefix(pattern, "/") {
				t.Fatalf("absolute pattern %q accepted", pattern)
			}
			for _, seg := range strings.Split(pattern, "/") {
				if seg == ".." {
					t.Fatalf("pattern %q with .. accepted", pattern)
				}
			}
		}
		_ = matches(pattern, name)
	})
}
