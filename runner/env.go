package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/jetci/jetci/events"
)

// A step's environment starts clean: nothing of the runner's own environment
// reaches it (NATS credentials, admin tokens, cloud keys) except PATH, the
// locale, and the names the runner is told to pass (Config.PassEnv). HOME and
// TMPDIR are the job's own, outside the workspace.

// defaultPassEnv is passed from the runner's environment to every step.
var defaultPassEnv = []string{"PATH", "LANG", "LC_*", "TZ", "USER", "LOGNAME"}

// defaultPath is the PATH of steps when the runner has none.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validPassEnv checks a PassEnv entry: a variable name, or a prefix and *.
func validPassEnv(p string) error {
	if !envNameRE.MatchString(strings.TrimSuffix(p, "*")) {
		return fmt.Errorf("%q is not a variable name (or a name prefix and *)", p)
	}
	return nil
}

// passes reports whether the runner variable name matches one of the patterns.
func passes(patterns []string, name string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(name, prefix) || p == name {
			return true
		}
	}
	return false
}

// jobDirs are a job's HOME and TMPDIR, both emptied before each job: nothing a
// job leaves there (a ~/.gitconfig, a shell profile, a poisoned tool cache)
// reaches a later job, of another branch say. Both are outside the workspace
// and the git cache.
//
// caches is the job's XDG_CACHE_HOME (Go's build cache, pip's, ...): kept
// between jobs, but one per slot, repo and branch, so that what a job of one
// branch leaves there (a poisoned build cache entry) reaches only later jobs
// of that same branch, never those of main.
func (r *Runner) jobDirs(slot int, repo, branch string) (home, tmp, caches string, err error) {
	home = filepath.Join(r.cfg.WorkDir, "home", strconv.Itoa(slot), events.Token(repo))
	tmp = filepath.Join(r.cfg.WorkDir, "tmp", strconv.Itoa(slot))
	caches = filepath.Join(r.cfg.WorkDir, "cache-home", strconv.Itoa(slot), events.Token(repo), events.Token(branch))
	for _, d := range []struct{ path, name string }{{tmp, "TMPDIR"}, {home, "HOME"}} {
		// Steps on the host run as the runner: they could reach anything
		// the runner can, so a directory of the runner's user that they
		// left is emptied in place. Sandboxed steps may have set the
		// directory's owner, mode or ACLs: it is made anew.
		if r.mode == ExecHost && emptyOwnDir(d.path) {
			continue
		}
		if err := removeAll(d.path); err != nil {
			return "", "", "", fmt.Errorf("empty %s: %w", d.name, err)
		}
		if err := os.MkdirAll(d.path, 0o700); err != nil {
			return "", "", "", err
		}
	}
	if err := os.MkdirAll(caches, 0o700); err != nil {
		return "", "", "", err
	}
	return home, tmp, caches, nil
}

// secretsFor returns the values of the secrets the job asks for, or an error
// naming the first this runner does not have.
func (r *Runner) secretsFor(job *events.JobQueued) (map[string]string, error) {
	vals := make(map[string]string, len(job.Secrets))
	for _, name := range job.Secrets {
		var scopes []string
		for _, s := range r.cfg.Secrets {
			if s.Name != name {
				continue
			}
			if s.For(job.Repo, job.Branch) {
				vals[name] = s.Value
				break
			}
			scopes = append(scopes, s.Scope())
		}
		switch _, ok := vals[name]; {
		case ok:
		case len(scopes) > 0:
			return nil, fmt.Errorf("secret %s is not given to repo %s, branch %s on runner %s (only to %s)", name, job.Repo, job.Branch, r.cfg.ID, strings.Join(scopes, "; "))
		default:
			return nil, fmt.Errorf("secret %s is not configured on runner %s (start it with --secret %s=env:VAR or =file:PATH)", name, r.cfg.ID, name)
		}
	}
	return vals, nil
}

// stepEnv is the environment of a job's steps, from a clean slate: the passed
// runner variables, HOME and TMPDIR, the job's env, jetci's variables, and the
// secrets (which nothing overrides).
func (r *Runner) stepEnv(job *events.JobQueued, attempt uint64, home, tmp, caches string, secrets map[string]string) []string {
	vars := map[string]string{"PATH": defaultPath}
	patterns := append(append([]string(nil), defaultPassEnv...), r.cfg.PassEnv...)
	for _, kv := range os.Environ() {
		k, v, ok := strings.Cut(kv, "=")
		if ok && passes(patterns, k) {
			vars[k] = v
		}
	}
	vars["HOME"], vars["TMPDIR"] = home, tmp
	vars["XDG_CACHE_HOME"] = caches
	if r.emulated != "" {
		// Go builds for the emulated architecture; the job's env may say otherwise.
		vars["GOARCH"], vars["JETCI_EMULATED"] = job.Arch, r.emulated
	}
	for k, v := range job.Env {
		vars[k] = v
	}
	for k, v := range map[string]string{"CI": "true", "JETCI_REPO": job.Repo, "JETCI_BRANCH": job.Branch, "JETCI_COMMIT": job.Commit,
		"JETCI_ARCH": job.Arch, "JETCI_JOB": job.Job, "JETCI_MODULE": job.Module, "JETCI_JOB_ID": job.JobID, "JETCI_ATTEMPT": strconv.FormatUint(attempt, 10)} {
		vars[k] = v
	}
	for k, v := range secrets {
		vars[k] = v
	}
	env := make([]string, 0, len(vars))
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}
