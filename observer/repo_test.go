package observer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRepo(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"x/y/proj.git", "x/y/proj", "plain", "with=sign"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	for _, tt := range []struct{ in, name, url, err string }{
		{filepath.Join(dir, "x/y/proj.git"), "proj", filepath.Join(dir, "x/y/proj.git"), ""},
		{filepath.Join(dir, "x/y/proj") + "/", "proj", filepath.Join(dir, "x/y/proj"), ""},
		{"x/y/proj.git", "proj", filepath.Join(dir, "x/y/proj.git"), ""}, // relative: made absolute
		{"./plain", "plain", filepath.Join(dir, "plain"), ""},
		{"mine=" + filepath.Join(dir, "plain"), "mine", filepath.Join(dir, "plain"), ""},
		{"mine=plain", "mine", filepath.Join(dir, "plain"), ""},
		{filepath.Join(dir, "with=sign"), "with=sign", filepath.Join(dir, "with=sign"), ""},
		{"file://" + filepath.Join(dir, "plain"), "plain", filepath.Join(dir, "plain"), ""},
		{"https://git.example.com/team/repo.git", "repo", "https://git.example.com/team/repo.git", ""},
		{"https://h/o/proj", "proj", "https://h/o/proj", ""},
		{"https://h/o/proj/", "proj", "https://h/o/proj/", ""},
		{"git@git.example.com:team/thing.git", "thing", "git@git.example.com:team/thing.git", ""},
		{"git@git.example.com:thing.git", "thing", "git@git.example.com:thing.git", ""},
		{"ssh://git@host:22/x/y", "y", "ssh://git@host:22/x/y", ""},
		{"n=https://h/o/r", "n", "https://h/o/r", ""},
		{"  " + filepath.Join(dir, "plain") + "  ", "plain", filepath.Join(dir, "plain"), ""},
		{"", "", "", "empty"},
		{"   ", "", "", "empty"},
		{filepath.Join(dir, "missing"), "missing", filepath.Join(dir, "missing"), ""}, // watched until it appears
		{"n=missing", "n", filepath.Join(dir, "missing"), ""},
		{"x=", "", "", "no path"},
	} {
		r, err := ParseRepo(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseRepo(%q) = %+v, %v; want error %q", tt.in, r, err, tt.err)
			}
			continue
		}
		if err != nil || r.Name != tt.name || r.URL != tt.url {
			t.Errorf("ParseRepo(%q) = %+v, %v; want %s %s", tt.in, r, err, tt.name, tt.url)
		}
	}
}
