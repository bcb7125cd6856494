package runner

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

func TestCompleteUTF8(t *testing.T) {
	euro := "€"   // 3 bytes
	rocket := "🚀" // 4 bytes
	for _, c := range []struct {
		in   string
		want int
	}{
		{"", 0},
		{"abc", 3},
		{"a" + euro, 4},
		{"a" + euro[:1], 1},
		{"a" + euro[:2], 1},
		{"a" + rocket[:3], 1},
		{"a" + rocket, 5},
		{"a\xff", 2},        // invalid byte: sent as is
		{"\x80\x80\x80", 3}, // stray continuation bytes
	} {
		if got := completeUTF8([]byte(c.in)); got != c.want {
			t.Errorf("completeUTF8(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

func TestOutputCapsAndStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	var mu sync.Mutex
	var live bytes.Buffer
	var chunks [][]byte
	o, err := newOutput(path, 1000, func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		live.Write(b)
		chunks = append(chunks, append([]byte(nil), b...))
	})
	if err != nil {
		t.Fatal(err)
	}
	o.Note("$ step")
	line := strings.Repeat("é", 100) + "\n" // 201 bytes
	for range 50 {
		if n, err := o.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	size, cut, err := o.Close()
	if err != nil || !cut {
		t.Fatalf("Close = %d, %v, %v", size, cut, err)
	}
	data, inMem := o.inMemory()
	if !inMem {
		t.Fatal("a log of about 1,000 bytes is not held in memory")
	}
	if int64(len(data)) != size {
		t.Fatalf("size %d, file has %d bytes", size, len(data))
	}
	if !strings.Contains(string(data), "[jetci: output truncated after 1000 bytes]\n") {
		t.Fatalf("no truncation note in\n%s", data)
	}
	if kept := strings.Index(string(data), "\n[jetci: output truncated"); kept != 1000 {
		t.Fatalf("%d bytes before the note, want the limit 1000", kept)
	}
	mu.Lock()
	defer mu.Unlock()
	if !bytes.Equal(live.Bytes(), data) {
		t.Fatal("live output differs from the log")
	}
	for _, ch := range chunks[:len(chunks)-1] { // the last one may end where the cap cut a character
		if !utf8.Valid(ch) {
			t.Fatalf("chunk splits a character: %q", ch)
		}
	}
	if n, err := o.Write([]byte("late")); err == nil || n != 0 {
		t.Fatal("write after Close succeeded")
	}
}

// TestOutputSpillsToAFile: a log longer than what is kept in memory goes to
// its file whole, the bytes held in memory first.
func TestOutputSpillsToAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	o, err := newOutput(path, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	o.memMax = 100
	var want strings.Builder
	o.Note("$ step")
	want.WriteString("$ step\n")
	for i := range 50 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		if _, err := o.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	size, _, err := o.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, inMem := o.inMemory(); inMem {
		t.Fatal("a log over memMax is still in memory")
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != want.String() || int64(len(data)) != size {
		t.Fatalf("file (%v, size %d):\n%q\nwant\n%q", err, size, data, want.String())
	}
}
