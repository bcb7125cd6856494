package events

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// Subject roots. Each is the first tokens of a family in the subject tree.
const (
	SubjectCommits = "jetci.commit"
	SubjectJobs    = "jetci.job"
	SubjectResults = "jetci.result"
	SubjectLogs    = "jetci.log"
	SubjectTrigger = "jetci.trigger"
	SubjectCancel  = "jetci.cancel"
	SubjectNotify  = "jetci.notify"
	SubjectBranch  = "jetci.branch"
	SubjectRecheck = "jetci.recheck"
	SubjectPoke    = "jetci.poke"
	SubjectBisect  = "jetci.bisect"
	// SubjectHealth is where every service writes a small probe every few
	// seconds (stream JETCI_HEALTH): a server that answers but takes no
	// write (a full disk under a standalone nats-server's store) shows.
	SubjectHealth = "jetci.health"
	// SubjectQueryResults is the reporter's results service (request and
	// reply, a NATS micro service): a page of job records from its read model.
	SubjectQueryResults = "jetci.query.results"
)

// Result kinds: the last token of a result subject.
const (
	KindQueued   = "queued"
	KindStarted  = "started"
	KindFinished = "finished"
)

// HealthSubject is the subject of a service's JetStream probe: service is
// its kind (reporter, runner…), id names the process.
func HealthSubject(service, id string) string {
	return SubjectHealth + "." + Token(service) + "." + Token(id)
}

// MaxTokenLen bounds a name token. Longer names are hashed (see Token).
const MaxTokenLen = 160

// Token turns any name (a branch or repo as git spells it) into one subject token
// that is also a valid KV key: base64url without padding. Names whose encoding is
// longer than MaxTokenLen become "=" and the first 40 hex digits of their SHA-256,
// which cannot collide with an encoded name because base64url never contains "=".
func Token(name string) string {
	t := base64.RawURLEncoding.EncodeToString([]byte(name))
	if len(t) <= MaxTokenLen {
		return t
	}
	sum := sha256.Sum256([]byte(name))
	return "=" + hex.EncodeToString(sum[:20])
}

// ParseToken reverses Token. Hashed tokens cannot be reversed and return an error;
// the readable name is in the message body.
func ParseToken(tok string) (string, error) {
	if strings.HasPrefix(tok, "=") {
		return "", fmt.Errorf("token %q is a hash of a long name", tok)
	}
	if tok == "" || len(tok) > MaxTokenLen {
		return "", fmt.Errorf("token %q: empty or longer than %d bytes", tok, MaxTokenLen)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("token %q: %w", tok, err)
	}
	// The decoder skips newlines, and a token with unused bits set decodes
	// to the name of another: only the token Token makes stands for a name.
	if Token(string(b)) != tok {
		return "", fmt.Errorf("token %q: not as Token writes it", tok)
	}
	return string(b), nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)

// ValidName checks a pool, arch or class name: lowercase letters, digits, '_' and
// '-', starting with a letter or digit, at most 40 characters. Such names are used
// as subject tokens and consumer names as they are.
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid %s %q: use lowercase letters, digits, '_' and '-' (at most 40)", kind, name)
	}
	return nil
}

// CommitSubject is where the observer publishes a CommitDetected.
func CommitSubject(repo, branch string) string {
	return SubjectCommits + "." + Token(repo) + "." + Token(branch)
}

// JobSubject is the work-queue partition of one job.
func JobSubject(pool, arch string, class Class, repo, branch string) string {
	return fmt.Sprintf("%s.%s.%s.%s.%s.%s", SubjectJobs, pool, arch, class, Token(repo), Token(branch))
}

// JobFilter is the filter of the consumer that serves one (pool, arch, class).
func JobFilter(pool, arch string, class Class) string {
	return fmt.Sprintf("%s.%s.%s.%s.>", SubjectJobs, pool, arch, class)
}

// ResultSubject is where a job's queued, started and finished events go.
func ResultSubject(repo, branch, kind string) string {
	return SubjectResults + "." + Token(repo) + "." + Token(branch) + "." + kind
}

// LogSubject carries the live log of one job.
func LogSubject(jobID string) string { return SubjectLogs + "." + jobID }

// BranchSubject carries a gated branch's state changes (BranchState).
func BranchSubject(repo, branch string) string {
	return SubjectBranch + "." + Token(repo) + "." + Token(branch)
}

// BranchKey is a branch's key in the jetci-branches and jetci-held buckets.
func BranchKey(repo, branch string) string { return Token(repo) + "." + Token(branch) }

// RecheckSubject is where `jetci recheck` asks the dispatchers (queue group
// "dispatchers") to re-check a branch.
func RecheckSubject(repo string) string { return SubjectRecheck + "." + Token(repo) }

// PokeSubject is where observers of repo (queue group "observers") are told
// to look at it now: a push hook, or `jetci notify` from a git post-receive
// hook. The observer answers at once and polls right after.
func PokeSubject(repo string) string { return SubjectPoke + "." + Token(repo) }

// CancelSubject is where a running job's runner hears that it is cancelled.
func CancelSubject(jobID string) string { return SubjectCancel + "." + jobID }

// LogObject names the full log of one attempt (delivery) of one run (queue
// sequence) of a job in the logs bucket. A re-run is a new queue sequence, so
// it never overwrites an earlier run's log.
func LogObject(jobID string, queueSeq, attempt uint64) string {
	return fmt.Sprintf("%s/%d-%d.log", jobID, queueSeq, attempt)
}

// RunLogObject names the log of one run of a delivery: LogObject with the
// run id, so a second run of the same delivery does not overwrite the first's.
func RunLogObject(jobID string, queueSeq, attempt uint64, run string) string {
	if run == "" {
		return LogObject(jobID, queueSeq, attempt)
	}
	return fmt.Sprintf("%s/%d-%d-%s.log", jobID, queueSeq, attempt, run)
}

// ArtifactObject names one artifact file of one attempt in the artifacts bucket;
// path is relative to the workspace with "/" separators.
func ArtifactObject(jobID string, queueSeq, attempt uint64, path string) string {
	return fmt.Sprintf("%s/%d-%d/%s", jobID, queueSeq, attempt, path)
}

// TriggerSubject is where `jetci trigger` asks the observers of repo to run a commit.
func TriggerSubject(repo string) string { return SubjectTrigger + "." + Token(repo) }

// ValidJobID reports whether s looks like a JobID: 20 lowercase hex digits.
func ValidJobID(s string) bool {
	if len(s) != 20 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// JobID names one job: a repo, branch, commit, job name and arch. It is stable, so a
// re-run of the same job updates the same record. A module's job is named by
// its QualifiedJob ("core/test"), which no plain job name can equal.
func JobID(repo, branch, commit, job, arch string) string {
	h := sha256.New()
	for _, s := range []string{repo, branch, commit, job, arch} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:10])
}

// RecordKey is the key of a job's record in the results bucket.
func RecordKey(repo, branch, jobID string) string {
	return Token(repo) + "." + Token(branch) + "." + jobID
}

// TestsKey is the key of one job's per-test history on a branch and arch in
// the tests bucket: <repo>.<branch>.<arch>.<job>, each a token.
func TestsKey(repo, branch, arch, job string) string {
	return Token(repo) + "." + Token(branch) + "." + Token(arch) + "." + Token(job)
}

// HeadKey is the key of a branch's last published head in the heads bucket.
func HeadKey(repo, branch string) string { return Token(repo) + "." + Token(branch) }

// CommitMsgID deduplicates CommitDetected: one per repo, branch, commit and trigger.
func CommitMsgID(repo, branch, commit, triggerID string) string {
	id := "c:" + Token(repo) + ":" + Token(branch) + ":" + commit
	if triggerID != "" {
		id += ":" + triggerID
	}
	return id
}

// JobMsgID deduplicates JobQueued: one per repo, commit, branch, job, arch and trigger.
func JobMsgID(jobID, triggerID string) string {
	if triggerID != "" {
		return "j:" + jobID + ":" + triggerID
	}
	return "j:" + jobID
}

// ResultMsgID deduplicates a result event of one attempt of one queued job.
func ResultMsgID(jobID string, queueSeq, attempt uint64, kind string) string {
	return fmt.Sprintf("r:%s:%d:%d:%s", jobID, queueSeq, attempt, kind)
}

// RunMsgID deduplicates a runner's started or finished event of one run:
// a second run of the same delivery (the server lost its consumer state and
// delivered the job again as the same delivery) is a new run with a new id,
// so its result is not dropped as a duplicate.
func RunMsgID(jobID, run, kind string) string { return "r:" + jobID + ":" + run + ":" + kind }

// Short is the first 10 hex digits of a commit sha, for logs and tables.
func Short(sha string) string {
	if len(sha) > 10 {
		return sha[:10]
	}
	return sha
}
