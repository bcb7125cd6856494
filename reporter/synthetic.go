package reporter

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jetci/jetci/events"
)

// SyntheticRunner is the runner of every synthetic job.
const SyntheticRunner = "r1"

// SyntheticPublishers returns the JetStream contexts that sign synthetic
// events as their producers would (the reporter refuses unsigned ones): svc
// with the service key (queued events), runner with SyntheticRunner's identity,
// registered in the keys bucket (started and finished events). Publish each
// event with SyntheticEvent.With. The identity's seed is fixed, so a history
// published in parts (several calls) verifies as one: for tests and
// benchmarks only, never on a server whose results matter.
func SyntheticPublishers(ctx context.Context, js jetstream.JetStream) (svc, runner jetstream.JetStream, err error) {
	raw := sha256.Sum256([]byte("jetci synthetic runner"))
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteUser, raw[:])
	if err != nil {
		return nil, nil, err
	}
	name := events.IdentityName(SyntheticRunner)
	if err := events.RegisterRunner(ctx, js, name, kp); err != nil {
		return nil, nil, fmt.Errorf("register the synthetic runner: %w", err)
	}
	return events.SigningJetStream(js, events.LazyServiceSigner(js)), events.SigningJetStream(js, events.RunnerSigner(kp, name)), nil
}

// With picks the context of SyntheticPublishers that signs this event.
func (e SyntheticEvent) With(svc, runner jetstream.JetStream) jetstream.JetStream {
	if _, queued := e.Event.(*events.JobQueued); queued {
		return svc
	}
	return runner
}

// SyntheticEvent is one event of a synthetic job and its subject.
type SyntheticEvent struct {
	Subject string
	Event   any
}

// syntheticEpoch is when synthetic history starts.
var syntheticEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// SyntheticJob returns the queued, started and finished events of job i of a
// synthetic history in the seed's shape: every commit of every branch checks
// modules × archs jobs ("m<k>/test"), branch after branch, commit after
// commit. One job in seven fails. Benchmarks and tests publish these as a
// real dispatcher and runner would.
func SyntheticJob(i, modules, branches, archs int) []SyntheticEvent {
	module := fmt.Sprintf("m%03d", i%modules)
	arch := []string{"amd64", "arm64", "riscv64", "s390x"}[(i/modules)%archs]
	branch := fmt.Sprintf("b%d", (i/(modules*archs))%branches)
	n := i / (modules * archs * branches) // the commit's number on its branch
	sum := sha1.Sum([]byte(branch + "/" + fmt.Sprint(n)))
	commit := hex.EncodeToString(sum[:])
	ref := events.JobRef{JobID: events.JobID("proj", branch, commit, events.QualifiedJob(module, "test"), arch),
		Repo: "proj", Branch: branch, Commit: commit, Job: "test", Module: module, Arch: arch}
	at := syntheticEpoch.Add(time.Duration(n) * time.Minute)
	author := events.Person{Name: fmt.Sprintf("Dev %d", n%5), Email: fmt.Sprintf("dev%d@example.com", n%5)}
	st, code := events.StatusPassed, 0
	if i%7 == 0 {
		st, code = events.StatusFailed, 1
	}
	seq := uint64(i + 1)
	run, token := fmt.Sprintf("s%d", i), fmt.Sprintf("%d.1", seq)
	return []SyntheticEvent{
		{events.ResultSubject(ref.Repo, ref.Branch, events.KindQueued), &events.JobQueued{JobRef: ref, Pool: "default",
			Class: events.ClassFirst, QueueSeq: seq, QueuedAt: at, Author: author, Subject: fmt.Sprintf("change %d of %s", n, branch)}},
		{events.ResultSubject(ref.Repo, ref.Branch, events.KindStarted), &events.JobStarted{JobRef: ref, QueueSeq: seq, Attempt: 1,
			Runner: SyntheticRunner, StartedAt: at.Add(time.Second), Run: run, Token: token}},
		{events.ResultSubject(ref.Repo, ref.Branch, events.KindFinished), &events.JobFinished{JobRef: ref, QueueSeq: seq, Attempt: 1,
			Runner: SyntheticRunner, Run: run, Token: token, Status: st, ExitCode: code, DurationMs: 1000, StartedAt: at.Add(time.Second), FinishedAt: at.Add(2 * time.Second),
			TestSummary: &events.TestSummary{Total: 10, Passed: 10 - code, Failed: code}}},
	}
}
