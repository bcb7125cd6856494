package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

func (d *Dispatcher) coalesced(repo, branch string) bool {
	for _, r := range d.cfg.Coalesce {
		if r.Repo != "*" && r.Repo != repo {
			continue
		}
		if ok, _ := path.Match(r.Branch, branch); r.Branch == "" || ok {
			return true
		}
	}
	return false
}

// coalescedRunning: a new commit of the branch also cancels the running
// first checks of older commits.
func (d *Dispatcher) coalescedRunning(repo, branch string) bool {
	return matchRule(d.cfg.CoalesceRunning, repo, branch)
}

// supersede cancels the first checks of older commits of a coalesced branch
// that no runner has taken yet: they are removed from the queue and recorded
// as cancelled, "superseded by <sha>". Jobs already running are left alone,
// and so are jobs the new commit does not run again (a module it does not
// check, a job its pipeline dropped): nothing else would check them.
//
// Older means older in the branch (the commit event's sequence), not queued
// earlier: dispatchers take commits in parallel, so an older commit may be
// queued after a newer one, and must not cancel the newer one's jobs.
func (d *Dispatcher) supersede(ctx context.Context, ev *events.CommitDetected, commitSeq, firstNew uint64, jobs []*events.JobQueued) error {
	stream, err := d.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return err
	}
	suffix := "." + events.Token(ev.Repo) + "." + events.Token(ev.Branch)
	covered := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		covered[j.QualifiedJob()+"\x00"+j.Arch] = true
	}
	n := 0
	parts := d.partitions(ctx, stream)
	for _, j := range jobs { // the new commit's partitions, even if the listing came back short
		if p := j.Pool + "/" + j.Arch; !slices.Contains(parts, p) {
			parts = append(parts, p)
		}
	}
	for _, p := range parts {
		pool, arch, _ := strings.Cut(p, "/")
		info, err := d.jobConsumerInfo(ctx, pool, arch, events.ClassFirst)
		if err != nil {
			return err
		}
		if info == nil {
			continue
		}
		if info.NumPending == 0 {
			continue
		}
		subject := events.JobSubject(pool, arch, events.ClassFirst, ev.Repo, ev.Branch)
		for seq := info.Delivered.Stream + 1; seq < firstNew; {
			raw, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return err
			}
			seq = raw.Sequence + 1
			if raw.Sequence >= firstNew || !strings.HasSuffix(raw.Subject, suffix) {
				break
			}
			job, err := events.DecodeAs[events.JobQueued](raw.Data)
			if err != nil || job.Commit == ev.Commit || !covered[job.QualifiedJob()+"\x00"+job.Arch] ||
				(commitSeq > 0 && job.CommitSeq >= commitSeq) || events.Kind(job.Class, job.Origin) != events.ClassFirst {
				continue
			}
			cancelled, err := d.cancelSuperseded(ctx, stream, job, raw.Sequence, ev.Commit)
			if err != nil {
				return err
			}
			if cancelled {
				n++
			}
		}
	}
	if n > 0 {
		d.log.Info().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("by", events.Short(ev.Commit)).Int("jobs", n).Msg("queued jobs of older commits superseded")
	}
	if d.coalescedRunning(ev.Repo, ev.Branch) {
		return d.supersedeRunning(ctx, stream, ev, commitSeq, covered, parts)
	}
	return nil
}

// supersedeRunning asks the runners of older commits' first checks that are
// running (taken from the work queue, not acked yet) to kill them: their
// results say "superseded by <sha>". As with waiting jobs, only jobs the new
// commit runs again. A job handed back meanwhile meets the request when a
// runner takes it (it is kept in jetci-cancel); one that finishes first keeps
// its result.
func (d *Dispatcher) supersedeRunning(ctx context.Context, stream jetstream.Stream, ev *events.CommitDetected, commitSeq uint64,
	covered map[string]bool, parts []string) error {
	if commitSeq == 0 {
		return nil // the branch's order is not known: nothing is surely older
	}
	suffix := "." + events.Token(ev.Repo) + "." + events.Token(ev.Branch)
	var cancels jetstream.KeyValue
	n := 0
	for _, p := range parts {
		pool, arch, _ := strings.Cut(p, "/")
		for _, class := range []events.Class{events.ClassFirst, events.ClassUser} { // a first check may have aged to user
			info, err := d.jobConsumerInfo(ctx, pool, arch, class)
			if err != nil {
				return err
			}
			if info == nil {
				continue
			}
			// Delivered and not acked: between the ack floor and the last
			// delivery, still in the work queue.
			subject := events.JobSubject(pool, arch, class, ev.Repo, ev.Branch)
			for seq := info.AckFloor.Stream + 1; seq <= info.Delivered.Stream; {
				raw, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					break
				}
				if err != nil {
					return err
				}
				seq = raw.Sequence + 1
				if raw.Sequence > info.Delivered.Stream {
					break
				}
				job, err := events.DecodeAs[events.JobQueued](raw.Data)
				if err != nil || !strings.HasSuffix(raw.Subject, suffix) || job.Commit == ev.Commit || job.CommitSeq == 0 || job.CommitSeq >= commitSeq ||
					!covered[job.QualifiedJob()+"\x00"+job.Arch] || events.Kind(job.Class, job.Origin) != events.ClassFirst {
					continue
				}
				if cancels == nil {
					if cancels, err = d.js.KeyValue(ctx, events.BucketCancel); err != nil {
						return err
					}
				}
				req := &events.CancelRequest{JobID: job.JobID, QueueSeq: raw.Sequence, By: "the dispatcher", At: d.now().UTC(),
					Reason: "superseded by " + events.Short(ev.Commit)}
				data, err := events.Encode(req)
				if err != nil {
					return err
				}
				if _, err := cancels.Put(ctx, job.JobID, data); err != nil {
					return fmt.Errorf("cancel a superseded running job: %w", err)
				}
				if err := d.js.Conn().Publish(events.CancelSubject(job.JobID), data); err != nil {
					return fmt.Errorf("cancel a superseded running job: %w", err)
				}
				n++
			}
		}
	}
	if n > 0 {
		d.log.Info().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("by", events.Short(ev.Commit)).Int("jobs", n).Msg("running jobs of older commits cancelled: superseded")
	}
	return nil
}

// supersededAlready cancels a commit's own jobs, just queued, that a newer
// commit of the branch queued before them already covers. Dispatchers take
// commits in parallel: when the newer commit is queued and supersedes first,
// its scan (queue sequences below its own first job) cannot see this older
// commit's jobs, queued after it, which would then wait beside the newer
// commit's. Only jobs of the newer commit still in the queue are seen: one
// already taken by a runner leaves the older job to run.
func (d *Dispatcher) supersededAlready(ctx context.Context, ev *events.CommitDetected, commitSeq uint64, jobs []*events.JobQueued) error {
	if commitSeq == 0 || len(jobs) == 0 {
		return nil
	}
	stream, err := d.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return err
	}
	suffix := "." + events.Token(ev.Repo) + "." + events.Token(ev.Branch)
	newer := map[string]*events.JobQueued{} // job × arch → the newest commit's job queued before ours
	parts := map[string]uint64{}            // pool/arch → our first queue sequence there
	for _, j := range jobs {
		p := j.Pool + "/" + j.Arch
		if first, ok := parts[p]; !ok || j.QueueSeq < first {
			parts[p] = j.QueueSeq
		}
	}
	for p, ours := range parts {
		pool, arch, _ := strings.Cut(p, "/")
		info, err := d.jobConsumerInfo(ctx, pool, arch, events.ClassFirst)
		if err != nil {
			return err
		}
		if info == nil {
			continue
		}
		subject := events.JobSubject(pool, arch, events.ClassFirst, ev.Repo, ev.Branch)
		for seq := info.Delivered.Stream + 1; seq < ours; {
			raw, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return err
			}
			seq = raw.Sequence + 1
			if raw.Sequence >= ours || !strings.HasSuffix(raw.Subject, suffix) {
				break
			}
			job, err := events.DecodeAs[events.JobQueued](raw.Data)
			if err != nil || job.CommitSeq <= commitSeq || events.Kind(job.Class, job.Origin) != events.ClassFirst {
				continue
			}
			k := job.QualifiedJob() + "\x00" + job.Arch
			if o := newer[k]; o == nil || job.CommitSeq > o.CommitSeq {
				newer[k] = job
			}
		}
	}
	n := 0
	for _, j := range jobs {
		by := newer[j.QualifiedJob()+"\x00"+j.Arch]
		if by == nil || events.Kind(j.Class, j.Origin) != events.ClassFirst {
			continue
		}
		cancelled, err := d.cancelSuperseded(ctx, stream, j, j.QueueSeq, by.Commit)
		if err != nil {
			return err
		}
		if cancelled {
			n++
		}
	}
	if n > 0 {
		d.log.Info().Str("repo", ev.Repo).Str("branch", ev.Branch).Str("commit", events.Short(ev.Commit)).Int("jobs", n).
			Msg("jobs of this commit superseded by a newer commit queued before them")
	}
	return nil
}

// cancelSuperseded takes job, at seq in the work queue, out of the queue and
// records it cancelled, "superseded by <commit>"; false when a runner took
// it meanwhile (it runs). Both ways of superseding record the same message
// id, so a job cancelled by both is recorded once.
func (d *Dispatcher) cancelSuperseded(ctx context.Context, stream jetstream.Stream, job *events.JobQueued, seq uint64, by string) (bool, error) {
	if err := stream.DeleteMsg(ctx, seq); err != nil {
		if events.MsgGone(err) {
			return false, nil
		}
		return false, err
	}
	fin := &events.JobFinished{JobRef: job.JobRef, QueueSeq: seq, Status: events.StatusCancelled, ExitCode: -1,
		Error: "superseded by " + events.Short(by), FinishedAt: d.now().UTC(), Author: job.Author, Subject: job.Subject,
		Class: job.Class, TriggerID: job.TriggerID, Origin: job.Origin}
	if err := publish(ctx, d.js, events.ResultSubject(job.Repo, job.Branch, events.KindFinished), fin,
		events.ResultMsgID(job.JobID, seq, 0, "superseded")); err != nil {
		return false, fmt.Errorf("record a superseded job: %w", err)
	}
	return true, nil
}

// jobConsumerInfo is the state of the runners' consumer of one partition and
// class, or nil when no runner has made it yet.
func (d *Dispatcher) jobConsumerInfo(ctx context.Context, pool, arch string, class events.Class) (*jetstream.ConsumerInfo, error) {
	cons, err := d.js.Consumer(ctx, events.StreamJobs, events.JobConsumerName(pool, arch, class))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return cons.Info(ctx)
}
