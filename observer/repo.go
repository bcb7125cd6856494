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
	// Pulls, when set, also watches the repository's pull or merge
	// requests: "github" (GitHub and Gitea: refs/pull/N/head, tested as
	// branch pull/N) or "gitlab" (refs/merge-requests/N/head, branch
	// merge-requests/N).
	Pulls string
}

// Pull-request ref layouts.
const (
	PullsGitHub = "github" // refs/pull/N/head; Gitea and Forgejo too
	PullsGitLab = "gitlab" // refs/merge-requests/N/head
)

// SetPulls turns on pull-request watching from a --pull-requests argument,
// REPO or REPO=github|gitea|forgejo|gitlab (default github).
func SetPulls(c *Config, arg string) error {
	name, kind, _ := strings.Cut(arg, "=")
	switch strings.ToLower(kind) {
	case "", "github", "gitea", "forgejo":
		kind = PullsGitHub
	case "gitlab":
		kind = PullsGitLab
	default:
		return fmt.Errorf("--pull-requests %q: want REPO or REPO=github|gitea|gitlab", arg)
	}
	for i := range c.Repos {
		if c.Repos[i].Name == name {
			c.Repos[i].Pulls = kind
			return nil
		}
	}
	return fmt.Errorf("--pull-requests %q: no --repo is named %s", arg, name)
}

// PullBranch is jetci's branch name for a pull-request ref ("" if ref is not
// one): refs/pull/12/head is pull/12, refs/merge-requests/7/head is
// merge-requests/7.
func PullBranch(layout, ref string) string {
	prefix := "refs/pull/"
	if layout == PullsGitLab {
		prefix = "refs/merge-requests/"
	}
	n, ok := strings.CutPrefix(ref, prefix)
	if !ok {
		return ""
	}
	if n, ok = strings.CutSuffix(n, "/head"); !ok || n == "" || len(n) > 9 || strings.Trim(n, "0123456789") != "" || n[0] == '0' {
		return ""
	}
	return strings.TrimPrefix(prefix, "refs/") + n
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
