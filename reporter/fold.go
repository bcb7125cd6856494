package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// The fold reads JETCI_RESULTS in order, from just after the sequence the
// read model has applied, and applies the events in batches: each batch is
// one transaction that also moves the applied sequence, so after a crash the
// fold resumes where the last committed batch ended, with no event applied
// twice and none skipped. Events at or below the applied sequence (another
// reporter on the same database got there first) are skipped.

// MaxFoldBatch bounds the events applied in one transaction.
const MaxFoldBatch = 4096

// foldBatchWait is how long a batch waits for more events once it has one.
const foldBatchWait = 5 * time.Millisecond

// FoldStats counts what a fold did, for benchmarks and logs.
type FoldStats struct {
	Applied, Bad, Batches int
	// From and To are the positions before and after (ApplyBatch).
	From, To uint64 `json:"-"`
}

// fold keeps the read model current until ctx ends, starting again from the
// applied position whenever the stream or the database fails.
func (v *View) fold(ctx context.Context) {
	for ctx.Err() == nil {
		err := v.foldOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		v.setHealth(err)
		v.log.Warn().Err(err).Str("db", v.db.Where()).Msg("read model: folding results; starting again from the last applied event")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// foldOnce folds from the applied position until ctx ends or something fails.
func (v *View) foldOnce(ctx context.Context) error {
	applied, err := v.db.Position(ctx, events.StreamResults)
	if err != nil {
		return fmt.Errorf("read the applied position: %w", err)
	}
	stream, err := v.js.Stream(ctx, events.StreamResults)
	if err != nil {
		return err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	target := info.State.LastSeq
	if first := info.State.FirstSeq; info.State.Msgs > 0 && applied+1 < first {
		v.log.Warn().Uint64("applied", applied).Uint64("first", first).
			Msg("read model: events after the applied position are gone from the stream (its retention); folding what is left")
	}
	v.setHealth(nil)
	if applied >= target {
		v.caughtUp()
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if applied > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, applied+1
	}
	cons, err := v.js.OrderedConsumer(ctx, events.StreamResults, cfg)
	if err != nil {
		return err
	}
	ch := make(chan jetstream.Msg, 2*MaxFoldBatch)
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case ch <- m:
		case <-cctx.Done():
		}
	}, jetstream.PullMaxMessages(MaxFoldBatch))
	if err != nil {
		return err
	}
	defer cc.Stop()
	batch := make([]jetstream.Msg, 0, MaxFoldBatch)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			// Caught up while nothing new came (or the stream was empty).
			if !v.isReady() {
				if pos, err := v.db.Position(ctx, events.StreamResults); err == nil && pos >= target {
					v.caughtUp()
				}
			}
			continue
		case m := <-ch:
			batch = append(batch, m)
		}
		wait := time.NewTimer(foldBatchWait)
	fill:
		for len(batch) < MaxFoldBatch {
			select {
			case m := <-ch:
				batch = append(batch, m)
			case <-wait.C:
				break fill
			}
		}
		wait.Stop()
		changed, st, err := v.ApplyBatch(ctx, batch)
		if err != nil {
			return err
		}
		if st.To > st.From {
			v.cells.update(st.From, st.To, changed)
		}
		v.setHealth(nil)
		v.statsMu.Lock()
		v.stats.Applied += st.Applied
		v.stats.Bad += st.Bad
		v.stats.Batches++
		v.statsMu.Unlock()
		v.mu.Lock()
		for _, r := range changed {
			v.notify(Change{Kind: "record", Record: r})
		}
		v.mu.Unlock()
		if last, _ := seqOf(batch[len(batch)-1]); last >= target {
			v.caughtUp()
		}
	}
}

func seqOf(m jetstream.Msg) (uint64, error) {
	md, err := m.Metadata()
	if err != nil {
		return 0, err
	}
	return md.Sequence.Stream, nil
}

// ApplyBatch applies a batch of JETCI_RESULTS messages, in stream order, to
// the read model in one transaction, and returns the records it changed. A
// message that is not a job event is recorded as a bad event and skipped.
func (v *View) ApplyBatch(ctx context.Context, batch []jetstream.Msg) ([]*Record, FoldStats, error) {
	type item struct {
		seq uint64
		ev  any
	}
	var st FoldStats
	if len(batch) == 0 {
		return nil, st, nil
	}
	last, err := seqOf(batch[len(batch)-1])
	if err != nil {
		return nil, st, err
	}
	var changed, finals []*Record
	err = v.db.Apply(ctx, events.StreamResults, last, func(tx *readmodel.Tx, applied uint64) error {
		st, changed = FoldStats{From: applied, To: last}, nil
		items := make([]item, 0, len(batch))
		var ids []string
		seen := map[string]bool{}
		for _, m := range batch {
			seq, err := seqOf(m)
			if err != nil {
				return err
			}
			if seq <= applied {
				continue
			}
			ev, err := decodeResult(m.Data())
			if err != nil {
				v.log.Error().Err(err).Uint64("seq", seq).Str("subject", m.Subject()).Msg("read model: a malformed result event; recorded, not applied")
				st.Bad++
				if err := tx.Bad(ctx, readmodel.BadEvent{Seq: seq, Subject: m.Subject(), Error: err.Error(), Data: m.Data()}); err != nil {
					return err
				}
				continue
			}
			ref, _ := refOf(ev)
			if !seen[ref.JobID] {
				seen[ref.JobID] = true
				ids = append(ids, ref.JobID)
			}
			items = append(items, item{seq, ev})
		}
		stored, err := tx.Load(ctx, ids)
		if err != nil {
			return err
		}
		recs := make(map[string]*Record, len(ids))
		for id, data := range stored {
			r := &Record{}
			if err := json.Unmarshal(data, r); err != nil {
				return fmt.Errorf("stored record %s: %w", id, err)
			}
			recs[id] = r
		}
		dirty := map[string]bool{}
		wasFinal := map[string]bool{}
		for id, r := range recs {
			wasFinal[id] = r.Status.Final()
		}
		finals = finals[:0]
		var order []string
		for _, it := range items {
			ref, _ := refOf(it.ev)
			r := recs[ref.JobID]
			if r == nil {
				r = &Record{}
				recs[ref.JobID] = r
			}
			if r.Apply(it.ev) && !dirty[ref.JobID] {
				dirty[ref.JobID] = true
				order = append(order, ref.JobID)
			}
			st.Applied++
		}
		rows := make([]readmodel.Row, 0, len(order))
		for _, id := range order {
			r := recs[id]
			row, err := rowOf(r)
			if err != nil {
				return err
			}
			rows = append(rows, row)
			changed = append(changed, r)
			if r.Status.Final() && !wasFinal[id] {
				finals = append(finals, r)
			}
		}
		if err := v.mirror(ctx, changed); err != nil {
			return err
		}
		return tx.Put(ctx, rows)
	})
	if err == nil {
		for _, rec := range finals {
			v.log.Info().Str("repo", rec.Repo).Str("branch", rec.Branch).Str("commit", events.Short(rec.Commit)).
				Str("job", rec.Job).Str("arch", rec.Arch).Str("status", string(rec.Status)).
				Uint64("attempt", rec.Attempt).Int64("duration_ms", rec.DurationMs).Msg("result")
		}
	}
	return changed, st, err
}

// mirror writes changed records to the jetci-results bucket, where the
// dispatcher and `jetci artifacts` read them, before the batch commits: a
// crash in between folds the batch again and writes the same records again.
// The writes are pipelined (one round trip for the batch, not one per
// record).
func (v *View) mirror(ctx context.Context, recs []*Record) error {
	if v.results == nil || len(recs) == 0 {
		return nil
	}
	futures := make([]jetstream.PubAckFuture, 0, len(recs))
	for _, r := range recs {
		c := *r
		c.Reason = ""
		data, err := json.Marshal(&c)
		if err != nil {
			return err
		}
		f, err := v.js.PublishAsync("$KV."+v.results.Bucket()+"."+events.RecordKey(r.Repo, r.Branch, r.JobID), data)
		if err != nil {
			return fmt.Errorf("write record %s: %w", r.JobID, err)
		}
		futures = append(futures, f)
	}
	timeout := time.After(30 * time.Second)
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("write record: %w", err)
		case <-timeout:
			return errors.New("write records: no acknowledgement in 30s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// decodeResult decodes a result event; anything else is an error.
func decodeResult(data []byte) (any, error) {
	ev, err := events.Decode(data)
	if err != nil {
		return nil, err
	}
	ref, ok := refOf(ev)
	if !ok {
		return nil, fmt.Errorf("%w: %T on a result subject", events.ErrBadMessage, ev)
	}
	if !events.ValidJobID(ref.JobID) || ref.Repo == "" || ref.Branch == "" {
		return nil, fmt.Errorf("%w: a result without a job id, repo or branch", events.ErrBadMessage)
	}
	return ev, nil
}

// rowOf is a record as the read model stores it (every test it carried;
// lists show the failing and flaky ones, Record.Listed).
func rowOf(r *Record) (readmodel.Row, error) {
	s := *r
	s.Reason = ""
	data, err := json.Marshal(&s)
	if err != nil {
		return readmodel.Row{}, err
	}
	return readmodel.Row{JobID: r.JobID, Repo: r.Repo, Branch: r.Branch, Commit: r.Commit, Module: r.Module, Job: r.Job,
		Arch: r.Arch, Status: string(r.Status), Author: r.Author.Name, AuthorEmail: r.Author.Email, Subject: r.Subject,
		FirstSeen: nanos(firstSeen(r)), FinishedAt: nanos(r.FinishedAt), SortKey: sortKey(r), Data: data}, nil
}

// sortKey orders records first queued at the same time: by repo, branch,
// module, job and arch (then job id, so that it is unique).
func sortKey(r *Record) string {
	return strings.Join([]string{r.Repo, r.Branch, r.Module, r.Job, r.Arch, r.JobID}, "\x01") // Postgres text holds no NUL
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// recordOf decodes a stored record.
func recordOf(row readmodel.Row) (Record, error) {
	var r Record
	if err := json.Unmarshal(row.Data, &r); err != nil {
		return r, fmt.Errorf("stored record %s: %w", row.JobID, err)
	}
	return r, nil
}
