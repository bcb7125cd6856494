package runner

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
)

// maskChunks feeds the chunks through a masker and returns what it let out,
// write by write, and the whole.
func maskChunks(m *masker, chunks []string) ([]string, string) {
	var outs []string
	for _, c := range chunks {
		outs = append(outs, string(m.write([]byte(c))))
	}
	outs = append(outs, string(m.flush()))
	return outs, strings.Join(outs, "")
}

func TestMaskerCatchesValuesSplitAcrossWrites(t *testing.T) {
	secrets := []string{"hunter2-long-secret", "abc", "abcdef"}
	text := "x hunter2-long-secret y abcdef z abc abcd hunter2 end hunter2-long-secret"
	want := "x *** y *** z *** ***d hunter2 end ***"
	for i := 0; i <= len(text); i++ {
		for j := i; j <= len(text); j++ {
			outs, got := maskChunks(newMasker(secrets), []string{text[:i], text[i:j], text[j:]})
			if got != want {
				t.Fatalf("split at %d,%d: got %q, want %q", i, j, got, want)
			}
			for _, o := range outs {
				if strings.Contains(o, "hunter2-") || strings.Contains(o, "def") {
					t.Fatalf("split at %d,%d: a write let out part of a value: %q", i, j, o)
				}
			}
		}
	}
}

func TestMaskerHoldsOnlyWhatCouldBeAValue(t *testing.T) {
	m := newMasker([]string{"secret"})
	if got := string(m.write([]byte("plain output\n"))); got != "plain output\n" {
		t.Errorf("plain output held back: %q", got)
	}
	if got := string(m.write([]byte("token: sec"))); got != "token: " {
		t.Errorf("got %q, want the text before a possible value", got)
	}
	if got := string(m.write([]byte("ond\n"))); got != "second\n" {
		t.Errorf("got %q: what turned out not to be a value comes out whole", got)
	}
	if got := string(m.write([]byte("sec"))) + string(m.flush()); got != "sec" {
		t.Errorf("flush = %q", got)
	}
}

func TestMaskerMultiLineAndEmptyValues(t *testing.T) {
	m := newMasker([]string{"", "line-one\nline-two\n"})
	if got := m.String("a line-one\nline-two\n b\nline-two c"); got != "a *** b\n*** c" {
		t.Errorf("got %q", got)
	}
	if newMasker([]string{""}) != nil {
		t.Error("a masker for no value")
	}
	var none *masker
	if got := string(none.write([]byte("x"))) + none.String("y"); got != "xy" {
		t.Errorf("nil masker: %q", got)
	}
}

// FuzzMasker: however the output is cut into writes, no value comes out, and
// the result is the same as masking it in one piece.
func FuzzMasker(f *testing.F) {
	f.Add("tok3n", "", "a tok3n b tok", 3, 7)
	f.Add("aa", "a", "aaaaa", 1, 2)
	f.Add("ab", "bcd", "aabcd", 1, 1)
	f.Fuzz(func(t *testing.T, secret, secret2, text string, i, j int) {
		var values []string
		for _, v := range []string{secret, secret2} {
			if v != "" && !strings.ContainsAny(v, "\r\n*") {
				values = append(values, v)
			}
		}
		if len(values) == 0 {
			return
		}
		i, j = clampCut(i, len(text)), clampCut(j, len(text))
		if i > j {
			i, j = j, i
		}
		_, got := maskChunks(newMasker(values), []string{text[:i], text[i:j], text[j:]})
		if whole := newMasker(values).String(text); got != whole {
			t.Fatalf("in writes %q, in one piece %q", got, whole)
		}
		for _, v := range values {
			if strings.Contains(got, v) {
				t.Fatalf("the value %q comes out: %q", v, got)
			}
		}
	})
}

func clampCut(i, n int) int {
	if n == 0 {
		return 0
	}
	if i < 0 {
		i = -i
	}
	return i % (n + 1)
}

func TestParseSecret(t *testing.T) {
	t.Setenv("FROM_ENV", "env-value")
	t.Setenv("EMPTY_ENV", "")
	file := t.TempDir() + "/tok"
	if err := os.WriteFile(file, []byte("file-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for spec, want := range map[string]Secret{
		"A=env:FROM_ENV":                {Name: "A", Value: "env-value"},
		"B_2=file:" + file:              {Name: "B_2", Value: "file-value"},
		"C@proj=env:FROM_ENV":           {Name: "C", Value: "env-value", Repo: "proj"},
		"C@proj:release/*=env:FROM_ENV": {Name: "C", Value: "env-value", Repo: "proj", Branch: "release/*"},
		"C@*:main=env:FROM_ENV":         {Name: "C", Value: "env-value", Repo: "*", Branch: "main"},
	} {
		if got, err := ParseSecret(spec); err != nil || got != want {
			t.Errorf("ParseSecret(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for spec, why := range map[string]string{"A=plain": "never from the command line", "A": "NAME[@REPO", "1A=env:X": "NAME[@REPO",
		"A=env:NOT_SET_ANYWHERE": "not set", "A=env:EMPTY_ENV": "empty", "A=file:" + file + ".missing": "no such file", "A=file:": "needs a path",
		"A@=env:FROM_ENV": "no repo after @", "A@p:[=env:FROM_ENV": "branch pattern"} {
		if _, err := ParseSecret(spec); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseSecret(%q) = %v, want an error saying %q", spec, err, why)
		}
	}
}

func TestSecretScope(t *testing.T) {
	for _, tt := range []struct {
		s            Secret
		repo, branch string
		want         bool
	}{
		{Secret{}, "proj", "main", true},
		{Secret{Repo: "*"}, "proj", "x", true},
		{Secret{Repo: "proj"}, "proj", "feature/x", true},
		{Secret{Repo: "proj"}, "other", "main", false},
		{Secret{Repo: "proj", Branch: "main"}, "proj", "main", true},
		{Secret{Repo: "proj", Branch: "main"}, "proj", "main2", false},
		{Secret{Repo: "proj", Branch: "release/*"}, "proj", "release/1.2", true},
		{Secret{Repo: "proj", Branch: "release/*"}, "proj", "release/1/hack", false},
	} {
		if got := tt.s.For(tt.repo, tt.branch); got != tt.want {
			t.Errorf("%+v.For(%s, %s) = %v", tt.s, tt.repo, tt.branch, got)
		}
	}
}

// BenchmarkMaskerWrite measures masking job output with three secrets, in
// 32 KiB writes (what a pipe read gives), against passing it unmasked.
//
//	go test -run '^$' -bench Masker -benchtime 2s ./runner
func BenchmarkMaskerWrite(b *testing.B) {
	line := "ok  \tgithub.com/example/project/pkg/thing\t0.123s coverage: 81.2% of statements\n"
	chunk := []byte(strings.Repeat(line, (32<<10)/len(line)))
	for _, tt := range []struct {
		name   string
		values []string
	}{{"none", nil}, {"3secrets", []string{"ghp_0123456789abcdefABCDEF0123456789abcd", "s3cr3t-value", "another-token-0001"}}} {
		b.Run(tt.name, func(b *testing.B) {
			m := newMasker(tt.values)
			b.SetBytes(int64(len(chunk)))
			for b.Loop() {
				_ = m.write(chunk)
			}
		})
	}
}

// TestMaskerCatchesEncodings: hex, URL-escaped and base64 forms of a secret
// are masked, base64 also inside a longer encoded text at every alignment.
func TestMaskerCatchesEncodings(t *testing.T) {
	const secret = "s3cr3t/value+with=odd&chars"
	m := newMasker([]string{secret})
	for _, enc := range []string{
		hex.EncodeToString([]byte(secret)),
		strings.ToUpper(hex.EncodeToString([]byte(secret))),
		url.QueryEscape(secret),
		url.PathEscape(secret),
		base64.StdEncoding.EncodeToString([]byte(secret)),
		base64.RawURLEncoding.EncodeToString([]byte(secret)),
		base64.StdEncoding.EncodeToString([]byte("x" + secret + "tail")),
		base64.StdEncoding.EncodeToString([]byte("xy" + secret)),
		base64.URLEncoding.EncodeToString([]byte("prefix: " + secret + "\n")),
	} {
		out := string(append(m.write([]byte("line "+enc+" end\n")), m.flush()...))
		if !strings.Contains(out, maskText) {
			t.Errorf("%q not masked: %q", enc, out)
		}
		for _, part := range []string{"s3cr3t", hex.EncodeToString([]byte("s3cr3t/va"))} {
			if strings.Contains(out, part) {
				t.Errorf("%q leaks %q: %q", enc, part, out)
			}
		}
	}
	// Ordinary output stays as it is.
	if out := string(append(m.write([]byte("ok 42 done\n")), m.flush()...)); out != "ok 42 done\n" {
		t.Errorf("plain output changed: %q", out)
	}
}
