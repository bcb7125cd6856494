package observer

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Repo is a watched repository: its name in jetci and where to fetch it from.
type Repo struct {
	Name string
	URL  string
}

var (
	schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*://`)
	scpRE    = regexp.MustCompile(`^[^/@:]+@[^/:]+:`) // user@host:path
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// ParseRepo parses a --repo argument: "PATH_OR_URL" or "name=PATH_OR_URL". The
// name defaults to the base name of the path or URL without ".git". A local path
// is made absolute; it need not exist yet: like an unreachable URL, a missing
// repository is reported by the observer's polls and picked up when it appears.
func ParseRepo(arg string) (Repo, error) {
	arg = strings.TrimSpace(arg)
	if arg == "" {
		return Repo{}, errors.New("--repo: empty: give a path or URL")
	}
	var r Repo
	if i := strings.Index(arg, "="); i > 0 && !schemeRE.MatchString(arg[:i+1]) && nameRE.MatchString(arg[:i]) {
		r.Name, r.URL = arg[:i], arg[i+1:]
		if r.URL == "" {
			return Repo{}, fmt.Errorf("--repo %q: no path or URL after the name", arg)
		}
	} else {
		r.URL = arg
	}
	local := !schemeRE.MatchString(r.URL) && !scpRE.MatchString(r.URL)
	if local || strings.HasPrefix(r.URL, "file://") {
		p := strings.TrimPrefix(r.URL, "file://")
		abs, err := filepath.Abs(p)
		if err != nil {
			return Repo{}, fmt.Errorf("--repo %q: %w", arg, err)
		}
		r.URL = abs
	}
	if r.Name == "" {
		base := strings.TrimRight(r.URL, "/")
		if i := strings.LastIndexAny(base, "/:"); i >= 0 {
			base = base[i+1:]
		}
		base = strings.TrimSuffix(path.Clean("/" + base)[1:], ".git")
		if base == "" || base == "." {
			return Repo{}, fmt.Errorf("--repo %q: cannot name it from its path; use --repo name=%s", arg, r.URL)
		}
		r.Name = base
	}
	return r, nil
}
