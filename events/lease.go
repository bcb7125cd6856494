package events

import (
	"fmt"
	"strings"
	"time"
)

// Lease is a runner's entry in the jetci-runners bucket, under LeaseKey(id). It
// says the runner is alive and which jobs it holds. The runner rewrites it every
// LeaseRenew; when it stops being rewritten (the runner died or lost the broker)
// the bucket's TTL expires it with a marker, and the dispatcher answers the
// marker by handing every job the lease names back to its queue (a NAK on the
// job's ack subject), instead of waiting for the ack timeout.
type Lease struct {
	ID          string      `json:"id"`
	Arch        string      `json:"arch"`
	Pool        string      `json:"pool"`
	Slots       int         `json:"slots"`
	Busy        int         `json:"busy"`
	Jobs        []LeasedJob `json:"jobs"`
	Host        string      `json:"host"`
	StartedAt   time.Time   `json:"started_at"`
	HeartbeatAt time.Time   `json:"heartbeat_at"`
	// Incarnation is random per runner process. A lease of the same runner
	// id with another incarnation is a restarted runner: the process that
	// wrote the old lease is dead, and its jobs are handed back as for any
	// dead runner (a new process cannot hold its deliveries).
	Incarnation string `json:"incarnation,omitempty"`
}

// LeasedJob is one job a runner holds.
type LeasedJob struct {
	JobID   string `json:"job_id"`
	Attempt uint64 `json:"attempt"`
	Reply   string `json:"reply"` // the job message's ack subject
}

// LeaseKey is the key of a runner's lease.
func LeaseKey(runnerID string) string { return "runner." + runnerID }

// ReapKey names one attempt of a job held under an expired lease, in the
// jetci-reaped bucket. Whoever creates it decides the job's fate: a dispatcher
// that creates it hands the job back (NAK); a runner that finds its lease lapsed
// and creates it first keeps the job and acks it as usual. A stale NAK would
// redeliver a job already running elsewhere, so exactly one side may act.
func ReapKey(runnerID, jobID string, attempt uint64) string {
	return fmt.Sprintf("%s.%s.%d", runnerID, jobID, attempt)
}

// RunnerIDFromKey returns the runner id of a lease key, or "" for other keys.
func RunnerIDFromKey(key string) string {
	id, ok := strings.CutPrefix(key, "runner.")
	if !ok {
		return ""
	}
	return id
}

// WakeSubject is a core-NATS subject (not stored) on which runners of a pool
// and arch are told that a job became available without a new publish, e.g. a
// job handed back from a dead runner.
func WakeSubject(pool, arch string) string { return SubjectWake + "." + pool + "." + arch }

// SubjectWake is the root of WakeSubject.
const SubjectWake = "jetci.wake"

// SubjectAlive is the root of the runners' alive subjects (core NATS, not
// stored). Each runner process answers requests on AliveSubject(id,
// incarnation) for as long as its connection is up.
const SubjectAlive = "jetci.alive"

// AliveSubject is the subject one runner process (one incarnation) answers
// on. A request to it that the server answers "no responders" means the
// process's connection is closed: the server drops a client's subscriptions
// the moment its connection ends (kill -9 closes the socket at once). The
// dispatcher probes the runners that hold jobs (ProbeEvery) and hands their
// jobs back when the subject has had no responders for ProbeConfirm, instead
// of waiting LeaseTTL for the lease to expire.
func AliveSubject(runnerID, incarnation string) string {
	return SubjectAlive + "." + incarnation + "." + runnerID
}

// The dispatcher's probe of busy runners. ProbeConfirm is the window a
// runner's alive subject must have had no responders (from the first to the
// last of at least two probes) before its jobs are handed back: a runner cut
// off briefly reconnects and resubscribes within it (nats.go retries at once,
// then every 250 ms; its subscriptions are sent again before anything else).
// A runner slower than that loses its jobs exactly as if its lease had
// expired (the lease is ended first, so the runner finds out at its next
// renewal and does not ack).
const (
	ProbeEvery   = 100 * time.Millisecond
	ProbeConfirm = 300 * time.Millisecond
)

// Who handed a job back, the value of its claim in jetci-reaped.
const (
	ReapedByLease      = `"dispatcher"`               // the lease expired
	ReapedByDisconnect = `"dispatcher: disconnected"` // the runner's connection closed
	ReapedByRunner     = `"runner"`                   // the runner kept it
)
