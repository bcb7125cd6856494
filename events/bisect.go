package events

import "time"

// Culprit finding: when a branch × job × arch fails and the commits since its
// last pass were not each tested (superseded, held, skipped), the dispatcher
// bisects that range and names the first failing commit. A bisection's state
// is kept in the jetci-bisect bucket (key BisectKey) and every change is
// published on BisectSubject (stream JETCI_BISECT).

// Bisection states.
const (
	BisectRunning    = "running"    // testing commits of the range, one at a time
	BisectVerifying  = "verifying"  // re-running the culprit and its parent once, to rule out a flaky failure
	BisectFound      = "found"      // the culprit is named: it failed twice, its parent passed twice
	BisectFlaky      = "flaky"      // a re-run disagreed with the first run: the failure is flaky, nobody is blamed
	BisectUnresolved = "unresolved" // no single culprit (a run was cancelled, or commits could not run the job)
)

// Kinds of bisection steps.
const (
	StepBisect        = "bisect"         // a commit in the middle of what is left of the range
	StepVerifyCulprit = "verify-culprit" // the culprit again
	StepVerifyParent  = "verify-parent"  // the culprit's parent again
)

// Bisection is the culprit search of one repo × branch × job × arch, started
// by the failure of Bad.
type Bisection struct {
	Type   string `json:"type"`
	ID     string `json:"id"` // the job id of the failure that started it
	Repo   string `json:"repo"`
	Branch string `json:"branch"`
	Job    string `json:"job"`
	// Module is the job's module, for a module's job (see JobRef.Module).
	Module string `json:"module,omitempty"`
	Arch   string `json:"arch"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Good is the last commit known to pass before the range; Bad the failing
	// commit that started the search.
	Good string `json:"good"`
	Bad  string `json:"bad"`
	// Commits is the range from Good to Bad, both included, oldest first
	// (Bad's first-parent chain), with what is known of each.
	Commits []BisectCommit `json:"commits"`
	Steps   []BisectStep   `json:"steps"`
	// Runs counts the bisection runs (steps of kind bisect), not the two
	// verification re-runs.
	Runs int `json:"runs"`
	// Culprit and LastGood are the first failing commit and its parent, once
	// the search ends on them (also while they are verified).
	Culprit   *BisectCommit `json:"culprit,omitempty"`
	LastGood  *BisectCommit `json:"last_good,omitempty"`
	StartedAt time.Time     `json:"started_at"`
	UpdatedAt time.Time     `json:"updated_at"`
	EndedAt   time.Time     `json:"ended_at,omitzero"`
}

// Done reports whether the bisection has ended.
func (b *Bisection) Done() bool {
	return b.State == BisectFound || b.State == BisectFlaky || b.State == BisectUnresolved
}

// BisectCommit is one commit of a bisection's range.
type BisectCommit struct {
	Commit  string `json:"commit"`
	Author  Person `json:"author"`
	Subject string `json:"subject,omitempty"`
	// Status is what the job did at this commit: passed, failed or error
	// (known), "skipped" (the commit cannot run the job), or "" (untested).
	Status Status `json:"status,omitempty"`
}

// StatusSkipped marks a commit of a bisection that cannot run the job (its
// pipeline does not parse, or has no such job): neither good nor bad.
const StatusSkipped Status = "skipped"

// BisectStep is one run the bisection asked for.
type BisectStep struct {
	Kind      string    `json:"kind"`
	Commit    string    `json:"commit"`
	TriggerID string    `json:"trigger_id"`
	JobID     string    `json:"job_id"`
	QueueSeq  uint64    `json:"queue_seq,omitempty"`
	Status    Status    `json:"status,omitempty"` // "" until asked for, then queued, then the run's final status
	Error     string    `json:"error,omitempty"`
	Log       string    `json:"log,omitempty"` // the run's log object in the logs bucket
	AskedAt   time.Time `json:"asked_at,omitzero"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
}

// BisectSubject carries a branch's bisection state changes.
func BisectSubject(repo, branch string) string {
	return SubjectBisect + "." + Token(repo) + "." + Token(branch)
}

// BisectKey is a bisection's key in the jetci-bisect bucket.
func BisectKey(repo, branch, id string) string {
	return "b." + Token(repo) + "." + Token(branch) + "." + id
}

// BisectTriggerPrefix starts the trigger id of every bisection run:
// "bisect-<bisection id>-<n>", so a result names its bisection.
const BisectTriggerPrefix = "bisect-"

func (m *Bisection) check() error {
	return required("id", m.ID, "repo", m.Repo, "branch", m.Branch, "job", m.Job, "arch", m.Arch, "state", m.State)
}

// Name is the bisected job as people read it: "core/test" for a module's job.
func (b *Bisection) Name() string { return QualifiedJob(b.Module, b.Job) }
