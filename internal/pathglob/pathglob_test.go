package pathglob

import (
	"math/rand"
	"path"
	"slices"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		glob, path string
		want       bool
	}{
		{"core", "core", true}, {"core", "core/a.go", true}, {"core", "core/x/y/z.go", true}, {"core", "corex/a.go", false},
		{"core", "cor", false}, {"core/**", "core/a.go", true}, {"core/**", "core", true}, {"core/", "core/a", true},
		{"apps/app/**", "apps/app/main.go", true}, {"apps/app/**", "apps/application/main.go", false},
		{"apps/*", "apps/x/y", true}, {"apps/*", "apps", false}, {"*.go", "a.go", true}, {"*.go", "d/a.go", false},
		{"**/*.proto", "a.proto", true}, {"**/*.proto", "x/y/a.proto", true}, {"**/*.proto", "x/y/a.protox", false},
		{"a/**/b", "a/b", true}, {"a/**/b", "a/x/y/b", true}, {"a/**/b", "a/x/y/b/c.go", true}, {"a/**/b", "a/x/y/c", false},
		{"lib/[ab]*/src", "lib/alpha/src/x.c", true}, {"lib/[ab]*/src", "lib/gamma/src/x.c", false}, {"lib/?/s", "lib/x/s", true},
		{"a/**/**/b", "a/b", true}, {"**", "anything/at/all", true},
	}
	for _, tt := range tests {
		g, err := Compile(tt.glob)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tt.glob, err)
		}
		if got := g.Match(tt.path); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.glob, tt.path, got, tt.want)
		}
	}
}

func TestCompileRefuses(t *testing.T) {
	for _, g := range []string{"", " ", "/etc", "a//b", "a/../b", "./a", "a\\b", "a/[", "a**b", "**/a/**/b/**/c/**/d/**/e"} {
		if _, err := Compile(g); err == nil {
			t.Errorf("Compile(%q) accepted", g)
		}
	}
}

func TestPrefix(t *testing.T) {
	for glob, want := range map[string]string{"core/**": "core", "apps/app": "apps/app", "**/*.go": "", "a/b/*.c": "a/b", "x/**/y": "x"} {
		g, _ := Compile(glob)
		if got := g.Prefix(); got != want {
			t.Errorf("%q.Prefix() = %q, want %q", glob, got, want)
		}
	}
}

// reference matches the slow, obvious way: split everything, try the path
// and each folder above it, with a recursive "**".
func reference(glob, p string) bool {
	var segs func(pat, name []string) bool
	segs = func(pat, name []string) bool {
		if len(pat) == 0 {
			return len(name) == 0
		}
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if segs(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		ok, _ := path.Match(pat[0], name[0])
		return ok && segs(pat[1:], name[1:])
	}
	pat := strings.Split(strings.TrimSuffix(glob, "/"), "/")
	name := strings.Split(p, "/")
	for i := len(name); i >= 1; i-- {
		if segs(pat, name[:i]) {
			return true
		}
	}
	return false
}

// TestSetAgainstReference checks the indexed set against matching every glob
// one by one on random globs and paths.
func TestSetAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	words := []string{"a", "b", "core", "net", "x.go", "y.proto", "*", "*.go", "**", "?", "[ab]"}
	pick := func(n int, glob bool) string {
		var parts []string
		for range 1 + rng.Intn(n) {
			w := words[rng.Intn(len(words))]
			if !glob {
				w = strings.NewReplacer("*", "q", "?", "z", "[ab]", "b").Replace(w)
			}
			parts = append(parts, w)
		}
		return strings.Join(parts, "/")
	}
	for range 200 {
		var set Set
		var globs []*Glob
		for len(globs) < 20 {
			if g, err := Compile(pick(4, true)); err == nil {
				set.Add(g, len(globs))
				globs = append(globs, g)
			}
		}
		for range 50 {
			p := pick(5, false)
			var want []int
			for i, g := range globs {
				ref := reference(g.String(), p)
				if g.Match(p) != ref {
					t.Fatalf("%q.Match(%q) = %v, reference says %v", g, p, !ref, ref)
				}
				if ref {
					want = append(want, i)
				}
			}
			var got []int
			matched := set.Owners(p, nil, func(o int) { got = append(got, o) })
			slices.Sort(got)
			if !slices.Equal(got, want) || matched != (len(want) > 0) {
				t.Fatalf("path %q: owners %v (matched %v), want %v", p, got, matched, want)
			}
			// Skipping the owners found must still say the path is owned.
			if len(want) > 0 && !set.Owners(p, func(int) bool { return true }, func(int) { t.Fatal("skipped owner reported") }) {
				t.Fatalf("path %q: not owned when every owner is skipped", p)
			}
		}
	}
}

// TestExistsAgainstMatch checks Exists, which lists only the folders that can
// hold a match, against matching every file of random trees.
func TestExistsAgainstMatch(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	words := []string{"a", "b", "core", "x.go", "y.proto"}
	globWords := append(words, "*", "*.go", "**", "?", "[ab]")
	for range 300 {
		var files []string
		dirs := map[string]map[string]bool{} // dir -> entry -> is a folder
		for range 1 + rng.Intn(12) {
			var parts []string
			for range 1 + rng.Intn(4) {
				parts = append(parts, words[rng.Intn(len(words))])
			}
			f := strings.Join(parts, "/")
			clash := false // a file where a folder is, or the other way round
			for i := 1; i <= len(parts); i++ {
				dir, name := strings.Join(parts[:i-1], "/"), parts[i-1]
				if folder, ok := dirs[dir][name]; ok && folder != (i < len(parts)) {
					clash = true
				}
			}
			if clash {
				continue
			}
			for i := 1; i <= len(parts); i++ {
				dir := strings.Join(parts[:i-1], "/")
				if dirs[dir] == nil {
					dirs[dir] = map[string]bool{}
				}
				dirs[dir][parts[i-1]] = i < len(parts)
			}
			files = append(files, f)
		}
		list := func(dir string) ([]string, []bool, error) {
			var names []string
			var folder []bool
			for n, f := range dirs[dir] {
				names, folder = append(names, n), append(folder, f)
			}
			return names, folder, nil
		}
		for range 20 {
			var parts []string
			for range 1 + rng.Intn(4) {
				parts = append(parts, globWords[rng.Intn(len(globWords))])
			}
			g, err := Compile(strings.Join(parts, "/"))
			if err != nil {
				continue
			}
			want := slices.ContainsFunc(files, g.Match)
			if got, _ := g.Exists(list); got != want {
				t.Fatalf("%q.Exists = %v, want %v; files %q", g, got, want, files)
			}
		}
	}
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"core/**", "core/a.go"}, {"**/*.proto", "x/y.proto"}, {"a/**/b", "a/x/b/c"}, {"lib/[ab]*", "lib/b"}, {"x/?", "x/yy"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, glob, p string) {
		g, err := Compile(glob)
		if err != nil || len(p) > 200 {
			return
		}
		if got, want := g.Match(p), reference(glob, p); got != want && p != "" && !strings.Contains(p, "//") && !strings.HasPrefix(p, "/") && !strings.HasSuffix(p, "/") {
			t.Fatalf("%q.Match(%q) = %v, reference %v", glob, p, got, want)
		}
		var s Set
		s.Add(g, 0)
		if got := s.Owners(p, nil, func(int) {}); got != g.Match(p) {
			t.Fatalf("set says %v, Match %v", got, g.Match(p))
		}
	})
}
