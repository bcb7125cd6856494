package events

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrBadMessage marks a message that can never be processed: malformed JSON, an
// unknown type, or missing fields. Consumers terminate such messages.
var ErrBadMessage = errors.New("bad message")

// Class is a job's priority class, highest first in Classes.
type Class string

// Priority classes.
const (
	ClassUser     Class = "user"     // triggered by a person (CLI, UI, API)
	ClassBisect   Class = "bisect"   // a run of the dispatcher's culprit search
	ClassFirst    Class = "first"    // first check of a new commit
	ClassSecond   Class = "second"   // second check of a broken branch
	ClassPeriodic Class = "periodic" // periodic full check
)

// Classes lists the priority classes, highest first. Runners pull in this order.
var Classes = []Class{ClassUser, ClassBisect, ClassFirst, ClassSecond, ClassPeriodic}

// Status of a job.
type Status string

// Job statuses. Passed, Failed, Error and Cancelled are final.
const (
	StatusQueued    Status = "queued"
	StatusHeld      Status = "paused" // held, not dispatched: its branch is broken (see BranchState)
	StatusRunning   Status = "running"
	StatusPassed    Status = "passed"
	StatusFailed    Status = "failed"
	StatusError     Status = "error"
	StatusCancelled Status = "cancelled"
	// StatusLost is an attempt whose runner stopped answering (killed, frozen,
	// cut off) while a later attempt or run of the job went on: it shows only
	// in a record's attempts, and a late result of its own still replaces it.
	StatusLost Status = "lost"
)

// Kind is what a run is for: its Origin class if aging raised it, else its
// Class.
func Kind(class, origin Class) Class {
	if origin != "" {
		return origin
	}
	return class
}

// Final reports whether s ends a job.
func (s Status) Final() bool {
	switch s {
	case StatusPassed, StatusFailed, StatusError, StatusCancelled:
		return true
	}
	return false
}

// Person is a commit author.
type Person struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

// Probe is what the observer saw of a commit's tree, enough for the dispatcher to
// detect a test command when the commit has no pipeline file.
type Probe struct {
	Root     []string `json:"root,omitempty"`     // entries at the root; folders end in "/"
	Tests    []string `json:"tests,omitempty"`    // entries of tests/, if it is a folder
	Makefile string   `json:"makefile,omitempty"` // the root Makefile, if any (capped)
}

// CommitDetected announces one new commit on one branch.
type CommitDetected struct {
	Type         string    `json:"type"`
	Repo         string    `json:"repo"`
	RepoURL      string    `json:"repo_url"`
	Branch       string    `json:"branch"`
	Commit       string    `json:"commit"`
	Parents      []string  `json:"parents"`
	Author       Person    `json:"author"`
	Subject      string    `json:"subject"`
	Time         time.Time `json:"time"`
	PipelinePath string    `json:"pipeline_path,omitempty"` // "" when the commit has none
	Pipeline     string    `json:"pipeline,omitempty"`
	PipelineErr  string    `json:"pipeline_error,omitempty"` // e.g. too large to carry
	Probe        Probe     `json:"probe"`
	Changed      []string  `json:"changed_paths"`
	ChangedCut   bool      `json:"changed_paths_truncated,omitempty"`
	Class        Class     `json:"class"`                // first for pushes, user for triggers
	TriggerID    string    `json:"trigger_id,omitempty"` // set for user triggers
	DetectedAt   time.Time `json:"detected_at"`
	// OnlyJob and OnlyArch narrow a trigger to one job (and arch) of the
	// commit: a re-check of a single job.
	OnlyJob  string `json:"only_job,omitempty"`
	OnlyArch string `json:"only_arch,omitempty"`

	// OnlyModule narrows a re-check to one module's job (with OnlyJob).
	OnlyModule string `json:"only_module,omitempty"`
	// NewBranch says Changed may be relative to a commit jetci never
	// checked on this branch (the first commit seen on a new branch, or the
	// first after a rewritten history): a pipeline with modules then checks
	// every module.
	NewBranch bool `json:"new_branch,omitempty"`
	// ModuleGlobs is the observer's check of the pipeline's module path globs
	// against the commit's tree; nil when not checked (no modules).
	ModuleGlobs *GlobCheck `json:"module_globs,omitempty"`
	// Truncated names the fields the observer cut so that the event fits the
	// server's max payload: "subject", "author", "changed_paths" (then
	// ChangedCut is set too, and a pipeline with modules checks every module),
	// "probe", "module_globs", "pipeline" (then PipelineErr says why) or
	// "parents" (the first parent is always kept). Empty when nothing was cut.
	Truncated []string `json:"truncated,omitempty"`
	// OlderSkipped is set on the oldest commit published by a poll that
	// found more new commits on the branch than the observer may publish at
	// once (jetci observer --max-new-commits, 1000 by default): the commits
	// before this one, back to the last published head, were not published
	// and are not tested.
	OlderSkipped bool `json:"older_commits_skipped,omitempty"`
}

// MaxDeadGlobs bounds GlobCheck.Dead, so that the event stays small.
const MaxDeadGlobs = 100

// GlobCheck is what the observer found of the module path globs of a
// commit's pipeline file in the commit's tree.
type GlobCheck struct {
	Checked int      `json:"checked"`            // distinct globs looked for
	Dead    []string `json:"dead,omitempty"`     // globs, as written, that match no file (at most MaxDeadGlobs)
	DeadAll int      `json:"dead_all,omitempty"` // how many match no file, when more than Dead lists
	Error   string   `json:"error,omitempty"`    // why the check could not be done
}

// JobRef names one job everywhere it appears.
type JobRef struct {
	JobID  string `json:"job_id"`
	Repo   string `json:"repo"`
	Branch string `json:"branch"`
	Commit string `json:"commit"`
	Job    string `json:"job"`
	Arch   string `json:"arch"`
	// Module is the pipeline module the job checks ("" for a job of the
	// whole repository). It is part of the job's identity (see JobID).
	Module string `json:"module,omitempty"`
}

// QualifiedJob is the job's name with its module, "core/test" (just the
// job's name without one). Module and job names cannot hold "/".
func (r JobRef) QualifiedJob() string { return QualifiedJob(r.Module, r.Job) }

// QualifiedJob joins a module and a job name as JobRef.QualifiedJob does.
func QualifiedJob(module, job string) string {
	if module == "" {
		return job
	}
	return module + "/" + job
}

// JobQueued is one job to run: the payload of the work queue, and the queued event
// on the results stream (with QueueSeq set to its work-queue sequence).
type JobQueued struct {
	Type string `json:"type"`
	JobRef
	RepoURL   string            `json:"repo_url"`
	Pool      string            `json:"pool"`
	Class     Class             `json:"class"`
	Steps     []string          `json:"steps"`
	Env       map[string]string `json:"env,omitempty"`
	TimeoutMs int64             `json:"timeout_ms"`
	Artifacts []string          `json:"artifacts,omitempty"`
	Author    Person            `json:"author"`
	Subject   string            `json:"subject"`
	TriggerID string            `json:"trigger_id,omitempty"`
	QueuedAt  time.Time         `json:"queued_at"`
	QueueSeq  uint64            `json:"queue_seq,omitempty"`
	// Held marks a queued event for a job that is not dispatched: its branch
	// is broken; the job is queued for real when the branch opens again.
	Held bool `json:"held,omitempty"`
	// CommitSeq is the commit event's sequence in JETCI_COMMITS, which orders
	// a branch's commits oldest first (0: unknown). Dispatchers may queue
	// commits out of order; this, not the queue order, says which is older.
	CommitSeq uint64 `json:"commit_seq,omitempty"`
	// Origin is the class the job was queued at when aging raised Class
	// (empty: never aged). Class says where it waits; Origin what it is: a
	// first check aged to user is still the commit's first check.
	Origin Class `json:"origin,omitempty"`
	// Reports are the globs of JUnit XML files the runner reads test results
	// from after the steps (the pipeline's reports:).
	Reports []string `json:"reports,omitempty"`
	// Retry is how many times a failed run of the steps is run again (the
	// pipeline's retry:; 0: never). A pass on a retry is recorded as passed
	// with Flaky set.
	Retry int `json:"retry,omitempty"`
	// Secrets names the runner-side secrets the job's steps get in their
	// environment; the values never travel on the bus.
	Secrets []string `json:"secrets,omitempty"`
	// Limits bounds the job's CPU time, memory and processes; nil: the
	// runner's own limits, if any.
	Limits *Limits `json:"limits,omitempty"`
	// Image is the container image the steps run in (the pipeline's
	// image:); "": the runner's backend decides.
	Image string `json:"image,omitempty"`
	// Network is "none" for a job without network (network: none).
	Network string `json:"network,omitempty"`
}

// JobStarted says a runner began an attempt of a job.
type JobStarted struct {
	Type string `json:"type"`
	JobRef
	QueueSeq  uint64    `json:"queue_seq"`
	Attempt   uint64    `json:"attempt"`
	Runner    string    `json:"runner"`
	StartedAt time.Time `json:"started_at"`
	// Run names this run of the job by this runner (random, made when the
	// runner took the delivery) and Token the delivery as the server made
	// it (consumer sequence and the job message's time); see JobFinished.
	Run   string `json:"run,omitempty"`
	Token string `json:"delivery_token,omitempty"`
}

// JobFinished is the result of one attempt of a job.
type JobFinished struct {
	Type string `json:"type"`
	JobRef
	QueueSeq uint64 `json:"queue_seq"`
	Attempt  uint64 `json:"attempt"`
	Runner   string `json:"runner"`
	// Run names the run (random per delivery taken; two runs of one
	// delivery, e.g. after the server lost its consumer state, differ), and
	// Token the delivery as the server made it: a result is accepted from the
	// first run that claimed its delivery only (docs/security.md).
	Run          string    `json:"run,omitempty"`
	Token        string    `json:"delivery_token,omitempty"`
	Status       Status    `json:"status"`
	ExitCode     int       `json:"exit_code"`
	Error        string    `json:"error,omitempty"`
	DurationMs   int64     `json:"duration_ms"`
	StartedAt    time.Time `json:"started_at,omitzero"`
	FinishedAt   time.Time `json:"finished_at"`
	Log          string    `json:"log,omitempty"` // object name in the logs bucket
	LogBytes     int64     `json:"log_bytes,omitempty"`
	LogTruncated bool      `json:"log_truncated,omitempty"`
	// LogDigest is the stored log's digest as the object store made it
	// ("SHA-256=…"): a log replaced after the run no longer matches it.
	LogDigest string `json:"log_digest,omitempty"`
	// Artifacts are the files the job's artifacts globs matched, stored in the
	// artifacts bucket.
	Artifacts []Artifact `json:"artifacts,omitempty"`
	// Whose commit it is: set by runners, and by the dispatcher when it
	// reports an error before any job was queued.
	Author  Person `json:"author,omitzero"`
	Subject string `json:"subject,omitempty"`
	// The run's class and trigger, as queued, and its Origin (JobQueued).
	Class     Class  `json:"class,omitempty"`
	TriggerID string `json:"trigger_id,omitempty"`
	Origin    Class  `json:"origin,omitempty"`
	// Tests are the test results the runner found (go test -json and Python
	// unittest -v lines in the output, JUnit XML reports) in the last try of
	// the steps: at most MaxTests of them, failures first, then the slowest;
	// TestSummary counts them all and says whether Tests was cut.
	Tests       []TestResult `json:"tests,omitempty"`
	TestSummary *TestSummary `json:"test_summary,omitempty"`
	// Retries is how many times the steps ran again after failing (retry:).
	// Flaky says the job failed and then passed on a retry: Status is then
	// passed, and FailedTries says what failed before.
	Retries     int         `json:"retries,omitempty"`
	Flaky       bool        `json:"flaky,omitempty"`
	FailedTries []FailedTry `json:"failed_tries,omitempty"`
	// Exec is how the steps ran: host, sandbox or container. Emulation
	// says the runner ran a foreign architecture's binaries under an
	// emulator ("qemu-aarch64 user emulation (binfmt_misc) on amd64").
	Exec      string `json:"exec,omitempty"`
	Emulation string `json:"emulation,omitempty"`
}

// Test statuses, as TestResult.Status.
const (
	TestPassed  = "passed"
	TestFailed  = "failed"
	TestError   = "error" // the test could not run to its end (unittest ERROR, JUnit <error>)
	TestSkipped = "skipped"
)

// MaxTests bounds the tests a JobFinished carries (the message stays far below
// the 1 MiB a NATS message may have); MaxTestName bounds a test's name, in bytes.
const (
	MaxTests    = 500
	MaxTestName = 256
)

// TestResult is one test of a job.
type TestResult struct {
	Name       string `json:"name"`   // e.g. example.com/m/pkg.TestX/sub, tests.test_mod.TestC.test_x
	Status     string `json:"status"` // passed, failed, error or skipped
	DurationMs int64  `json:"duration_ms"`
	// Flaky: the test failed in an earlier try of this job and passed in this one.
	Flaky bool `json:"flaky,omitempty"`
	// Message is a failing test's message, as its report gives it (a JUnit
	// <failure message>, or the start of its text), at most MaxTestMessage
	// bytes.
	Message string `json:"message,omitempty"`
}

// MaxTestMessage bounds TestResult.Message.
const MaxTestMessage = 300

// Failing reports whether a test status is a failure (failed or error).
func Failing(status string) bool { return status == TestFailed || status == TestError }

// TestSummary counts every test found, whether or not Tests carries it.
type TestSummary struct {
	Total      int   `json:"total"`
	Passed     int   `json:"passed"`
	Failed     int   `json:"failed"` // failed and error
	Skipped    int   `json:"skipped"`
	Flaky      int   `json:"flaky,omitempty"`
	DurationMs int64 `json:"duration_ms"` // the sum of the tests' durations
	// Truncated: there were more than MaxTests tests; Tests holds every
	// failure (up to MaxTests) and then the slowest of the others.
	Truncated bool `json:"truncated,omitempty"`
	// Sources say where the results came from: go-test-json, unittest, junit.
	Sources []string `json:"sources,omitempty"`
}

// MaxFailedTryTests bounds the failed test names a FailedTry carries.
const MaxFailedTryTests = 100

// FailedTry is an earlier try of the steps of a job that failed before a retry.
type FailedTry struct {
	ExitCode    int      `json:"exit_code"`
	DurationMs  int64    `json:"duration_ms"`
	FailedTests []string `json:"failed_tests,omitempty"` // at most MaxFailedTryTests
}

// Artifact is one file a job left for download.
type Artifact struct {
	Path   string `json:"path"`   // relative to the workspace, with "/" separators
	Object string `json:"object"` // object name in the artifacts bucket
	Size   int64  `json:"size"`
	Digest string `json:"digest,omitempty"` // as the object store made it, see JobFinished.LogDigest
}

// LogChunk is a piece of a running job's output, published live. QueueSeq and
// Attempt name the run and delivery it belongs to, as in JobStarted.
type LogChunk struct {
	Type     string `json:"type"`
	JobID    string `json:"job_id"`
	QueueSeq uint64 `json:"queue_seq,omitempty"`
	Attempt  uint64 `json:"attempt"`
	Seq      uint64 `json:"seq"`
	Data     string `json:"data"`
}

// CancelRequest asks that a job stop: a queued job is taken out of the queue, a
// running one is killed, and either ends as cancelled. It is kept in the
// jetci-cancel bucket under the job id (so a runner that takes the job later
// still sees it) and announced on CancelSubject for the runner running it.
type CancelRequest struct {
	Type     string    `json:"type"`
	JobID    string    `json:"job_id"`
	QueueSeq uint64    `json:"queue_seq"` // the run to cancel; a later re-run is not affected
	By       string    `json:"by,omitempty"`
	At       time.Time `json:"at"`
	// Reason, when set, is the error the cancelled run records instead of
	// "cancelled by <By>": "superseded by 1a2b3c4d5e" for a running job of
	// an older commit a newer one replaces.
	Reason string `json:"reason,omitempty"`
}

// TriggerRequest asks an observer to run a branch head, or one commit on it, now.
type TriggerRequest struct {
	Type   string `json:"type"`
	Repo   string `json:"repo"`
	Branch string `json:"branch"`
	Commit string `json:"commit,omitempty"`
	// Job and Arch, when set, run only that job (and arch) of the commit.
	Job  string `json:"job,omitempty"`
	Arch string `json:"arch,omitempty"`
	// Module, with Job, runs only that module's job.
	Module string `json:"module,omitempty"`
	// Class is the priority of the run: user (the default), second (the
	// dispatcher's second check of a broken branch), periodic (its full
	// check) or bisect (a run of its culprit search).
	Class Class `json:"class,omitempty"`
	// TriggerID, when set, names the run (else the observer makes one up).
	TriggerID string `json:"trigger_id,omitempty"`
}

// Branch states of the broken-build flow.
const (
	BranchOpen   = "open"   // commits are checked as they come
	BranchBroken = "broken" // a first check failed: later commits are held until the second check
	BranchFailed = "failed" // the second check failed: held until someone re-checks
)

// BranchState is a gated branch's state in the broken-build flow: kept in the
// jetci-branches bucket and published on BranchSubject at every transition.
type BranchState struct {
	Type       string       `json:"type"`
	Repo       string       `json:"repo"`
	Branch     string       `json:"branch"`
	State      string       `json:"state"`
	Since      time.Time    `json:"since"`
	Reason     string       `json:"reason,omitempty"`
	BrokenBy   *JobRef      `json:"broken_by,omitempty"`
	Author     Person       `json:"author,omitzero"` // of the commit that broke it
	WindowEnds time.Time    `json:"window_ends,omitzero"`
	Check      *BranchCheck `json:"check,omitempty"` // the second check or re-check under way
	Held       int          `json:"held"`            // commits waiting for the branch to open
	// Head is the newest commit seen on the branch since it broke (held, or
	// the one a check ran), and HeadSeq its sequence in JETCI_COMMITS: a
	// full passing run of Head (a second check, a re-check or `jetci
	// trigger` of the head) opens a broken or failed branch.
	Head    string `json:"head,omitempty"`
	HeadSeq uint64 `json:"head_seq,omitempty"`
	// FailedCheck is the commit whose second check (or re-check) failed
	// while the branch is failed.
	FailedCheck string `json:"failed_check,omitempty"`
	// Fixes are the branch's last openings (at most MaxBranchFixes), oldest
	// first: what broke it, which commit's check opened it, and the released
	// commits that run the break as well.
	Fixes []BranchFix `json:"fixes,omitempty"`
}

// MaxBranchFixes bounds BranchState.Fixes, and MaxCoveredCommits each
// fix's Covered list, so that a branch's state (published at every change)
// stays under 50 KB: a failure of a commit released beyond them is counted
// as its own.
const (
	MaxBranchFixes    = 5
	MaxCoveredCommits = 200
)

// BranchFix is one opening of a broken or failed branch.
type BranchFix struct {
	BrokenBy string    `json:"broken_by"`
	Author   Person    `json:"author,omitzero"`   // of BrokenBy         // the commit whose first check failed
	FixedBy  string    `json:"fixed_by"`          // the commit whose passing check opened the branch
	Kind     string    `json:"kind"`              // second, recheck or trigger
	Before   uint64    `json:"before"`            // FixedBy's commit sequence: held commits below it are older, and reached by it
	Released int       `json:"released"`          // held commits released when it opened
	Covered  []string  `json:"covered,omitempty"` // released commits older than FixedBy: a failure of theirs is BrokenBy's, not theirs
	At       time.Time `json:"at"`
}

// Covers reports whether a failure of commit is this fix's break, not the
// commit's own (a released commit older than FixedBy).
func (f BranchFix) Covers(commit string) bool {
	return commit != f.FixedBy && slices.Contains(f.Covered, commit)
}

// CoveredBy returns the fix whose break a failure of commit is, or nil.
func (s *BranchState) CoveredBy(commit string) *BranchFix {
	for i := len(s.Fixes) - 1; i >= 0; i-- {
		if s.Fixes[i].Covers(commit) {
			return &s.Fixes[i]
		}
	}
	return nil
}

// BranchCheck is a run that decides whether a broken branch opens again.
type BranchCheck struct {
	Kind      string    `json:"kind"` // second, recheck, or trigger (a user's full run of the head)
	Commit    string    `json:"commit,omitempty"`
	CommitSeq uint64    `json:"commit_seq,omitempty"` // the check's commit event in JETCI_COMMITS
	TriggerID string    `json:"trigger_id,omitempty"`
	Jobs      int       `json:"jobs,omitempty"` // 0 until the dispatcher queued them
	Passed    []string  `json:"passed,omitempty"`
	Failed    []string  `json:"failed,omitempty"`
	StartedAt time.Time `json:"started_at"`
}

// RecheckRequest asks the dispatchers to re-check a branch: run its head as
// user-triggered and, if it passes, open it and release its held commits.
type RecheckRequest struct {
	Type   string `json:"type"`
	Repo   string `json:"repo"`
	Branch string `json:"branch"`
	By     string `json:"by,omitempty"`
}

// TriggerReply answers a TriggerRequest.
type TriggerReply struct {
	Type      string `json:"type"`
	Commit    string `json:"commit,omitempty"`
	TriggerID string `json:"trigger_id,omitempty"`
	Error     string `json:"error,omitempty"`
}

func required(fields ...string) error {
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i+1] == "" {
			return fmt.Errorf("missing %s", fields[i])
		}
	}
	return nil
}

func (m *CommitDetected) check() error {
	return required("repo", m.Repo, "branch", m.Branch, "commit", m.Commit, "class", string(m.Class))
}

func (r *JobRef) check() error {
	return required("job_id", r.JobID, "repo", r.Repo, "branch", r.Branch, "commit", r.Commit, "job", r.Job, "arch", r.Arch)
}

func (m *JobQueued) check() error {
	if err := m.JobRef.check(); err != nil {
		return err
	}
	return required("pool", m.Pool, "class", string(m.Class))
}

func (m *JobStarted) check() error { return m.JobRef.check() }

func (m *JobFinished) check() error {
	if err := m.JobRef.check(); err != nil {
		return err
	}
	if !m.Status.Final() {
		return fmt.Errorf("status %q is not final", m.Status)
	}
	return nil
}

func (m *LogChunk) check() error { return required("job_id", m.JobID) }

func (m *TriggerRequest) check() error {
	return required("repo", m.Repo, "branch", m.Branch)
}

func (m *TriggerReply) check() error { return nil }

func (m *CancelRequest) check() error { return required("job_id", m.JobID) }

func (m *BranchState) check() error {
	return required("repo", m.Repo, "branch", m.Branch, "state", m.State)
}

func (m *RecheckRequest) check() error { return required("repo", m.Repo, "branch", m.Branch) }
