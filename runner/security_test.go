package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// enqueueJob publishes a job after mod has set what the test needs.
func enqueueMod(t *testing.T, s *brokertest.Server, repo *gitRepo, commit string, mod func(*events.JobQueued), steps ...string) *events.JobQueued {
	t.Helper()
	return publishJob(t, s, commit, &events.JobQueued{RepoURL: repo.Dir, Steps: steps, TimeoutMs: 60000}, mod)
}

// liveLog collects the live log chunks of a job.
func liveLog(t *testing.T, s *brokertest.Server, jobID string) func() []string {
	var mu sync.Mutex
	var chunks []string
	sub, err := s.NC.Subscribe(events.LogSubject(jobID), func(m *nats.Msg) {
		if c, err := events.DecodeAs[events.LogChunk](m.Data); err == nil {
			mu.Lock()
			chunks = append(chunks, c.Data)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	s.NC.Flush()
	t.Cleanup(func() { sub.Unsubscribe() })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), chunks...)
	}
}

// TestStepEnvironmentIsCleanAndSecretsMasked: a job that prints its
// environment sees none of the runner's own variables (an admin token, a NATS
// password, anything else), only what it is given; its secret reaches it and
// shows as *** in the stored and the live log, also when printed in two writes.
func TestStepEnvironmentIsCleanAndSecretsMasked(t *testing.T) {
	const secret = "s3cr3t-value-123"
	t.Setenv("JETCI_ADMIN_TOKEN", "planted-admin-token")
	t.Setenv("NATS_PASSWORD", "planted-nats-password")
	t.Setenv("JETCI_NATS_CREDS", "/planted/creds")
	t.Setenv("SOME_RANDOM_VAR", "planted-random")
	t.Setenv("PASSED_VAR", "passed-on")
	t.Setenv("GOPASS_ONE", "prefix-passed")
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	r, _ := startRunner(t, s, func(c *Config) {
		c.Secrets = []Secret{{Name: "DEPLOY_TOKEN", Value: "for-another-repo", Repo: "other"}, {Name: "DEPLOY_TOKEN", Value: secret, Repo: "proj", Branch: "ma*"},
			{Name: "OTHER_SECRET", Value: "not-for-this-job"}}
		c.PassEnv = []string{"PASSED_VAR", "GOPASS_*"}
	})
	jobID := events.JobID("proj", "main", c, "j"+strconv.Itoa(jobN+1), "amd64")
	live := liveLog(t, s, jobID)
	j := enqueueMod(t, s, repo, c, func(j *events.JobQueued) {
		j.Secrets = []string{"DEPLOY_TOKEN"}
		j.Env = map[string]string{"FROM_PIPELINE": "yes"}
	},
		"env",
		`test "${#DEPLOY_TOKEN}" = 16 && case "$DEPLOY_TOKEN" in s3cr3t*123) ;; *) exit 1;; esac`, // the value arrives whole
		`printf '%s' "$DEPLOY_TOKEN" | cut -c1-7 | tr -d '\n'; sleep 0.3; printf '%s\n' "$DEPLOY_TOKEN" | cut -c8-`,
		`echo "token: $DEPLOY_TOKEN, again $DEPLOY_TOKEN."`,
		`test "$HOME" != "$PWD" && test -d "$HOME" && test -d "$TMPDIR"`)
	if j.JobID != jobID {
		t.Fatalf("job id %s, want %s", j.JobID, jobID)
	}
	fin := res.wait(t, j.JobID)
	log := readLog(t, s, fin.Log)
	if fin.Status != events.StatusPassed {
		t.Fatalf("job %+v\n%s", fin, log)
	}
	env := map[string]string{}
	for _, line := range strings.Split(log, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && envNameRE.MatchString(k) {
			env[k] = v
		}
	}
	for _, bad := range []string{"planted", "/planted/", "not-for-this-job", "for-another-repo", secret} {
		if strings.Contains(log, bad) {
			t.Errorf("the log shows %q:\n%s", bad, log)
		}
	}
	for _, name := range []string{"JETCI_ADMIN_TOKEN", "NATS_PASSWORD", "JETCI_NATS_CREDS", "SOME_RANDOM_VAR", "OTHER_SECRET"} {
		if _, ok := env[name]; ok {
			t.Errorf("%s reached the step", name)
		}
	}
	home := filepath.Join(r.cfg.WorkDir, "home", "1", events.Token("proj"))
	for k, want := range map[string]string{"PASSED_VAR": "passed-on", "GOPASS_ONE": "prefix-passed", "FROM_PIPELINE": "yes",
		"DEPLOY_TOKEN": "***", "CI": "true", "JETCI_JOB_ID": j.JobID, "HOME": home, "TMPDIR": filepath.Join(r.cfg.WorkDir, "tmp", "1"), "PATH": os.Getenv("PATH"),
		"XDG_CACHE_HOME": filepath.Join(r.cfg.WorkDir, "cache-home", "1", events.Token("proj"), events.Token("main"))} {
		if env[k] != want {
			t.Errorf("%s=%q in the step, want %q", k, env[k], want)
		}
	}
	// Nothing but these names: the runner's environment did not leak.
	allowed := map[string]bool{"PASSED_VAR": true, "GOPASS_ONE": true, "FROM_PIPELINE": true, "DEPLOY_TOKEN": true, "CI": true,
		"HOME": true, "TMPDIR": true, "XDG_CACHE_HOME": true, "PATH": true, "PWD": true, "SHLVL": true, "_": true, "OLDPWD": true, "LANG": true, "TZ": true, "USER": true, "LOGNAME": true}
	for k := range env {
		if !allowed[k] && !strings.HasPrefix(k, "JETCI_") && !strings.HasPrefix(k, "LC_") {
			t.Errorf("unexpected variable %s in the step", k)
		}
	}
	for _, want := range []string{"\n***\n", "token: ***, again ***."} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// The live chunks were masked before they were sent.
	brokertest.CheckFor(t, 10e9, 10e6, func() error {
		all := strings.Join(live(), "")
		if !strings.Contains(all, "token: ***, again ***.") {
			return fmt.Errorf("live log so far:\n%s", all)
		}
		return nil
	})
	for _, ch := range live() {
		if strings.Contains(ch, secret) || strings.Contains(ch, "s3cr3t-") {
			t.Errorf("a live chunk shows (part of) the secret: %q", ch)
		}
	}
	if all := strings.Join(live(), ""); strings.Contains(all, secret) {
		t.Errorf("the live log shows the secret:\n%s", all)
	}
}

// TestMissingSecretIsAnError: a job asking for a secret the runner lacks does
// not run, and its result says which secret and how to give it.
func TestMissingSecretIsAnError(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	startRunner(t, s, nil)
	j := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Secrets = []string{"DEPLOY_TOKEN"} }, "touch ran")
	fin := res.wait(t, j.JobID)
	if fin.Status != events.StatusError || !strings.Contains(fin.Error, "secret DEPLOY_TOKEN is not configured") || !strings.Contains(fin.Error, "--secret") {
		t.Fatalf("result %+v", fin)
	}
	if strings.Contains(readLog(t, s, fin.Log), "$ touch ran") {
		t.Error("the step ran")
	}
}

// TestJobDirs: HOME and TMPDIR are emptied before each job (nothing one job
// leaves there reaches the next), and neither is in the workspace.
func TestJobDirs(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	startRunner(t, s, nil)
	j1 := enqueueMod(t, s, repo, c, nil, `touch "$HOME/kept" "$TMPDIR/gone"`, `case "$HOME$TMPDIR" in "$PWD"*) exit 1;; esac`)
	if fin := res.wait(t, j1.JobID); fin.Status != events.StatusPassed {
		t.Fatalf("job 1 %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	j2 := enqueueMod(t, s, repo, c, nil, `test ! -e "$HOME/kept"`, `test ! -e "$TMPDIR/gone"`, "test ! -e kept && test ! -e gone")
	if fin := res.wait(t, j2.JobID); fin.Status != events.StatusPassed {
		t.Fatalf("job 2 %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	// A job that opens its HOME to everyone and makes TMPDIR a symlink to a
	// folder of its own: the next job has both as jetci makes them, and the
	// folder the symlink named is not emptied.
	j3 := enqueueMod(t, s, repo, c, nil, `chmod 777 "$HOME"`, `mkdir -p "$HOME/../elsewhere" && touch "$HOME/../elsewhere/stays"`,
		`rm -rf "$TMPDIR" && ln -s "$HOME/../elsewhere" "$TMPDIR"`)
	if fin := res.wait(t, j3.JobID); fin.Status != events.StatusPassed {
		t.Fatalf("job 3 %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	j4 := enqueueMod(t, s, repo, c, nil, `test "$(stat -c %a "$HOME")" = 700`, `test -d "$TMPDIR" && test ! -L "$TMPDIR"`,
		`test "$(stat -c %a "$TMPDIR")" = 700`, `test -e "$HOME/../elsewhere/stays"`)
	if fin := res.wait(t, j4.JobID); fin.Status != events.StatusPassed {
		t.Fatalf("job 4 %+v\n%s", fin, readLog(t, s, fin.Log))
	}
}

// TestSecretOnlyForItsScope: a job of a branch a secret is not given to does
// not run, and its error says to whom the secret is given.
func TestSecretOnlyForItsScope(t *testing.T) {
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	startRunner(t, s, func(c *Config) {
		c.Secrets = []Secret{{Name: "DEPLOY_TOKEN", Value: "release-only-value", Repo: "proj", Branch: "release/*"}}
	})
	j := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Secrets = []string{"DEPLOY_TOKEN"} }, "echo $DEPLOY_TOKEN")
	fin := res.wait(t, j.JobID)
	if fin.Status != events.StatusError || !strings.Contains(fin.Error, "secret DEPLOY_TOKEN is not given to repo proj, branch main") ||
		!strings.Contains(fin.Error, "only to repo proj, branches release/*") {
		t.Fatalf("result %+v", fin)
	}
	if log := readLog(t, s, fin.Log); strings.Contains(log, "release-only-value") || strings.Contains(log, "$ echo") {
		t.Fatalf("the step ran:\n%s", log)
	}
}
