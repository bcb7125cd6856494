package dispatcher

import (
	"testing"

	"github.com/rs/zerolog"
)

// TestPullRequestRunsGetNoSecrets: a job asking for secrets gets them on a
// branch, never on a pull request's run (pull/N, merge-requests/N), whose
// code may come from a fork.
func TestPullRequestRunsGetNoSecrets(t *testing.T) {
	d, err := New(DefaultConfig(), nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for branch, want := range map[string]int{"main": 1, "pull/12": 0, "merge-requests/3": 0, "pull/x": 1} {
		ev := commit("jobs:\n  build:\n    steps: [make]\n    secrets: [TOKEN]\n")
		ev.Branch = branch
		jobs, fail := d.Expand(ev)
		if fail != nil || len(jobs) != 1 {
			t.Fatalf("%s: %v %+v", branch, jobs, fail)
		}
		if len(jobs[0].Secrets) != want {
			t.Errorf("%s: secrets %v", branch, jobs[0].Secrets)
		}
	}
}
