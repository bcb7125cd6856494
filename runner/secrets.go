package runner

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
)

// Secret is a value jobs may ask for by name (secrets: in the pipeline file).
// Only the jobs of the repos and branches its scope matches get it: a pipeline
// file names a secret, but any branch of any repo can name any secret.
type Secret struct {
	Name, Value string
	Repo        string // "" or "*": every repo
	Branch      string // a path.Match pattern; "": every branch
}

// For reports whether a job of repo and branch may have the secret.
func (s Secret) For(repo, branch string) bool {
	if s.Repo != "" && s.Repo != "*" && s.Repo != repo {
		return false
	}
	if s.Branch == "" {
		return true
	}
	ok, _ := path.Match(s.Branch, branch)
	return ok
}

// Scope says to whom the secret is given, for messages.
func (s Secret) Scope() string {
	switch {
	case (s.Repo == "" || s.Repo == "*") && s.Branch == "":
		return "every repo"
	case s.Branch == "":
		return "repo " + s.Repo
	}
	return fmt.Sprintf("repo %s, branches %s", s.Repo, s.Branch)
}

func (s Secret) validate() error {
	if !envNameRE.MatchString(s.Name) {
		return fmt.Errorf("%q is not a variable name", s.Name)
	}
	if _, err := path.Match(s.Branch, ""); err != nil {
		return fmt.Errorf("secret %s: branch pattern %q: %w", s.Name, s.Branch, err)
	}
	if s.Value == "" {
		return errors.New("secret " + s.Name + ": the value is empty")
	}
	return nil
}

// ParseSecret reads a --secret flag, NAME[@REPO[:BRANCH_PATTERN]]=SOURCE.
// SOURCE is env:VAR, the value of the runner's variable VAR, or file:PATH, the
// content of a file (one trailing newline dropped); the value is read now,
// once. Without @REPO every repo's jobs may have it.
func ParseSecret(spec string) (Secret, error) {
	key, src, ok := strings.Cut(spec, "=")
	name, scope, scoped := strings.Cut(key, "@")
	if !ok || !envNameRE.MatchString(name) {
		return Secret{}, fmt.Errorf("secret %q: want NAME[@REPO[:BRANCH]]=env:VAR or =file:PATH", spec)
	}
	s := Secret{Name: name}
	if scoped {
		s.Repo, s.Branch, _ = strings.Cut(scope, ":")
		if s.Repo == "" {
			return Secret{}, fmt.Errorf("secret %q: no repo after @ (use * for every repo)", spec)
		}
	}
	kind, where, _ := strings.Cut(src, ":")
	switch kind {
	case "env":
		if !envNameRE.MatchString(where) {
			return Secret{}, fmt.Errorf("secret %s: %q is not a variable name", name, where)
		}
		v, ok := os.LookupEnv(where)
		if !ok {
			return Secret{}, fmt.Errorf("secret %s: $%s is not set", name, where)
		}
		s.Value = v
	case "file":
		if where == "" {
			return Secret{}, fmt.Errorf("secret %s: file: needs a path", name)
		}
		b, err := os.ReadFile(where)
		if err != nil {
			return Secret{}, fmt.Errorf("secret %s: %w", name, err)
		}
		s.Value = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	default:
		return Secret{}, fmt.Errorf("secret %s: %q: the value comes from env:VAR or file:PATH, never from the command line", name, src)
	}
	if err := s.validate(); err != nil {
		return Secret{}, err
	}
	return s, nil
}
