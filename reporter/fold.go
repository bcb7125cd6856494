package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
			if v.mayWait.Load() {
				if err := v.rejudge(ctx); err != nil {
					return err
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
	var st FoldStats
	if len(batch) == 0 {
		return nil, st, nil
	}
	last, err := seqOf(batch[len(batch)-1])
	if err != nil {
		return nil, st, err
	}
	checked, err := v.check(batch)
	if err != nil {
		return nil, st, err
	}
	var changed, finals []*Record
	var refused []refusal
	err = v.db.Apply(ctx, events.StreamResults, last, func(tx *readmodel.Tx, applied uint64) error {
		st, changed, refused = FoldStats{From: applied, To: last}, nil, nil
		var holds func(runner, jobID string) bool
		if v.guard != nil && v.guard.holds != nil {
			holds = v.guard.holds(ctx)
		}
		refuse := func(it foldItem, who string, why error) error {
			refused = append(refused, refusal{it, who, why})
			if !errors.Is(why, events.ErrForged) {
				return nil // disputed: folded into the history, marked
			}
			st.Bad++
			return tx.Bad(ctx, readmodel.BadEvent{Seq: it.seq, Subject: it.subject, Error: "refused: " + why.Error(), Data: it.data})
		}
		items := make([]foldItem, 0, len(batch))
		var ids []string
		seen := map[string]bool{}
		for _, c := range checked {
			it := c.foldItem
			if it.seq <= applied {
				continue
			}
			if c.bad != nil {
				v.log.Error().Err(c.bad).Uint64("seq", it.seq).Str("subject", it.subject).Msg("read model: a malformed result event; recorded, not applied")
				st.Bad++
				if err := tx.Bad(ctx, readmodel.BadEvent{Seq: it.seq, Subject: it.subject, Error: c.bad.Error(), Data: it.data}); err != nil {
					return err
				}
				continue
			}
			if c.forged != nil {
				// The signature first: a forged event is recorded, not applied.
				if err := refuse(it, it.who, c.forged); err != nil {
					return err
				}
				continue
			}
			ref, _ := refOf(it.ev)
			if !seen[ref.JobID] {
				seen[ref.JobID] = true
				ids = append(ids, ref.JobID)
			}
			items = append(items, it)
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
		hadWait := map[string]bool{}
		for id, r := range recs {
			wasFinal[id] = r.Status.Final()
			hadWait[id] = len(r.Pending) > 0
		}
		var order []string
		for _, it := range items {
			ref, _ := refOf(it.ev)
			r := recs[ref.JobID]
			if r == nil {
				r = &Record{}
				recs[ref.JobID] = r
			}
			ch, err := v.admitInto(r, it, holds, refuse)
			if err != nil {
				return err
			}
			if ch {
				// Events waiting on a run of this job may be judged now.
				if _, err := v.retryPending(r, holds, refuse); err != nil {
					return err
				}
			}
			if ch && !dirty[ref.JobID] {
				dirty[ref.JobID] = true
				order = append(order, ref.JobID)
			}
			st.Applied++
		}
		changed, finals, err = v.store(ctx, tx, recs, order, wasFinal, hadWait)
		return err
	})
	if err == nil {
		v.folded(ctx, finals, refused)
	}
	return changed, st, err
}

// checkedItem is a message of a batch decoded and its signature checked,
// before the batch's transaction: bad is why it is no job event, forged why
// the guard refused it (it.who then names who signed it, if anyone).
type checkedItem struct {
	foldItem
	bad, forged error
}

// checkParallelMin is the smallest batch whose messages are checked by more
// than one goroutine.
const checkParallelMin = 64

// check decodes every message of a batch and verifies its signature, in
// order of the batch. Both are the fold's largest CPU cost per event (two
// ed25519 verifications a job) and need nothing of the read model, so a big
// batch is checked on every CPU, outside the transaction.
func (v *View) check(batch []jetstream.Msg) ([]checkedItem, error) {
	out := make([]checkedItem, len(batch))
	one := func(i int) error {
		m := batch[i]
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		c := &out[i]
		c.foldItem = foldItem{seq: md.Sequence.Stream, at: md.Timestamp, subject: m.Subject(), data: m.Data(), who: "service"}
		if c.ev, c.bad = decodeResult(m.Data()); c.bad != nil {
			return nil
		}
		if v.guard != nil {
			who, err := v.guard.verify(m, c.ev)
			c.who, c.forged = who, err
		}
		return nil
	}
	workers := runtime.GOMAXPROCS(0)
	if len(batch) < checkParallelMin || workers < 2 {
		for i := range batch {
			if err := one(i); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	var next atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(batch); i = int(next.Add(1) - 1) {
				if err := one(i); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// store writes the records of a batch that changed (order) to the read
// model and the results bucket, and notes which records hold events waiting
// to be judged; it returns copies of the changed records and of those that
// became final.
func (v *View) store(ctx context.Context, tx *readmodel.Tx, recs map[string]*Record, order []string, wasFinal, hadWait map[string]bool) (changed, finals []*Record, err error) {
	rows := make([]readmodel.Row, 0, len(order))
	for _, id := range order {
		r := recs[id]
		row, err := rowOf(r)
		if err != nil {
			return nil, nil, err
		}
		rows = append(rows, row)
		c := *r
		c.Pending = nil
		changed = append(changed, &c)
		if r.Status.Final() && !wasFinal[id] {
			finals = append(finals, &c)
		}
	}
	var wait, done []string
	for id, r := range recs {
		switch {
		case len(r.Pending) > 0:
			wait = append(wait, id)
		case hadWait[id]:
			done = append(done, id)
		}
	}
	if err := v.mirror(ctx, changed); err != nil {
		return nil, nil, err
	}
	if err := tx.Put(ctx, rows); err != nil {
		return nil, nil, err
	}
	if len(wait) > 0 || len(done) > 0 {
		if err := tx.SetWaiting(ctx, wait, done); err != nil {
			return nil, nil, err
		}
	}
	if len(wait) > 0 {
		v.mayWait.Store(true)
	}
	return changed, finals, nil
}

// folded logs the results a committed transaction made final and tells the
// guard of the events it refused.
func (v *View) folded(ctx context.Context, finals []*Record, refused []refusal) {
	for _, rec := range finals {
		v.log.Info().Str("repo", rec.Repo).Str("branch", rec.Branch).Str("commit", events.Short(rec.Commit)).
			Str("job", rec.Job).Str("arch", rec.Arch).Str("status", string(rec.Status)).
			Uint64("attempt", rec.Attempt).Int64("duration_ms", rec.DurationMs).Msg("result")
	}
	if v.guard != nil && v.guard.refused != nil {
		for _, f := range refused {
			v.guard.refused(ctx, f.it, f.who, f.why)
		}
	}
}

// MaxWaitingJudged bounds the records Rejudge looks at in one transaction.
const MaxWaitingJudged = 1000

// Rejudge judges again the runner events that records hold waiting (a claim
// on a delivery that a live run held: Record.Pending). Those are judged
// again when their record changes, but the run that held the delivery may
// never report again: its runner lost power, and only its lease going away
// says so. The fold calls Rejudge on its tick while any record waits. It
// returns the records it changed.
func (v *View) Rejudge(ctx context.Context) ([]*Record, error) {
	changed, _, err := v.rejudgeAt(ctx)
	return changed, err
}

// rejudge is Rejudge inside the fold: the records it changed reach the
// cells and the subscribers.
func (v *View) rejudge(ctx context.Context) error {
	changed, pos, err := v.rejudgeAt(ctx)
	if err != nil || len(changed) == 0 {
		return err
	}
	v.cells.update(pos, pos, changed)
	v.mu.Lock()
	for _, r := range changed {
		v.notify(Change{Kind: "record", Record: r})
	}
	v.mu.Unlock()
	return nil
}

// rejudgeAt is Rejudge, also returning the applied position it ran at.
func (v *View) rejudgeAt(ctx context.Context) ([]*Record, uint64, error) {
	ids, err := v.db.Waiting(ctx, MaxWaitingJudged)
	if err != nil {
		return nil, 0, err
	}
	if len(ids) == 0 {
		v.mayWait.Store(false)
		return nil, 0, nil
	}
	var changed, finals []*Record
	var refused []refusal
	var pos uint64
	err = v.db.Revise(ctx, events.StreamResults, func(tx *readmodel.Tx, applied uint64) error {
		changed, finals, refused, pos = nil, nil, nil, applied
		var holds func(runner, jobID string) bool
		if v.guard != nil && v.guard.holds != nil {
			holds = v.guard.holds(ctx)
		}
		refuse := func(it foldItem, who string, why error) error {
			refused = append(refused, refusal{it, who, why})
			if !errors.Is(why, events.ErrForged) {
				return nil
			}
			return tx.Bad(ctx, readmodel.BadEvent{Seq: it.seq, Subject: it.subject, Error: "refused: " + why.Error(), Data: it.data})
		}
		stored, err := tx.Load(ctx, ids)
		if err != nil {
			return err
		}
		recs := make(map[string]*Record, len(ids))
		wasFinal, hadWait := map[string]bool{}, map[string]bool{}
		var order []string
		var gone []string
		for _, id := range ids {
			data, ok := stored[id]
			if !ok {
				gone = append(gone, id)
				continue
			}
			r := &Record{}
			if err := json.Unmarshal(data, r); err != nil {
				return fmt.Errorf("stored record %s: %w", id, err)
			}
			recs[id], wasFinal[id], hadWait[id] = r, r.Status.Final(), true
			ch, err := v.retryPending(r, holds, refuse)
			if err != nil {
				return err
			}
			if ch {
				order = append(order, id)
			}
		}
		if len(gone) > 0 {
			if err := tx.SetWaiting(ctx, nil, gone); err != nil {
				return err
			}
		}
		changed, finals, err = v.store(ctx, tx, recs, order, wasFinal, hadWait)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	v.folded(ctx, finals, refused)
	return changed, pos, nil
}

// foldItem is one result event of a batch, decoded.
type foldItem struct {
	seq     uint64
	at      time.Time // when the server stored it
	subject string
	data    []byte
	ev      any
	who     string // who signed it: a runner identity, or "service"
}

// refusal is an event the fold refused (forged: not applied) or folded in as
// disputed (Record.Dispute), told to the guard once the batch is committed.
type refusal struct {
	it  foldItem
	who string
	why error
}

// guard checks result events for the fold (Reporter.admitter): verify their
// signature; holds says whether a runner's live lease names a job; refused
// hears of every refusal after its batch is committed.
type guard struct {
	verify  func(m jetstream.Msg, ev any) (string, error)
	holds   func(ctx context.Context) func(runner, jobID string) bool
	refused func(ctx context.Context, it foldItem, who string, why error)
}

// admitInto folds one event into its record, a runner's event only once its
// claims are checked against the record (Record.Admit, the same rules as the
// results bucket's Store.apply): a refused one goes to refuse and changes
// nothing, a disputed one goes into the history only, and one that must wait
// for another run of its delivery is kept in the record's Pending, to be
// judged again when the record changes. It returns whether the record
// changed.
func (v *View) admitInto(r *Record, it foldItem, holds func(runner, jobID string) bool, refuse func(foldItem, string, error) error) (bool, error) {
	if v.guard == nil || it.who == "service" {
		return r.Apply(it.ev), nil
	}
	disputed, err := r.Admit(it.ev, it.seq, it.at, holds)
	switch {
	case errors.Is(err, ErrWait):
		if len(r.Pending) >= MaxPending {
			return false, refuse(it, it.who, fmt.Errorf("%w: more than %d claims wait on a delivery a live run holds", events.ErrForged, MaxPending))
		}
		r.Pending = append(r.Pending, PendingEvent{Seq: it.seq, At: it.at, Subject: it.subject, Signer: it.who, Data: it.data})
		return true, nil
	case err != nil:
		return false, refuse(it, it.who, err)
	case disputed != "":
		ch := r.Dispute(it.ev, disputed)
		return ch, refuse(it, it.who, &DisputedError{Why: disputed})
	}
	ch := r.Apply(it.ev)
	if fin, ok := it.ev.(*events.JobFinished); ok {
		r.markResult(fin.Run, it.seq)
		ch = true
	}
	return ch, nil
}

// retryPending judges again the events a record holds waiting, until none of
// them moves; it returns whether any did.
func (v *View) retryPending(r *Record, holds func(runner, jobID string) bool, refuse func(foldItem, string, error) error) (bool, error) {
	did := false
	for moved := true; moved && len(r.Pending) > 0; {
		moved = false
		for i, p := range r.Pending {
			ev, err := decodeResult(p.Data)
			if err != nil {
				return did, fmt.Errorf("a pending event of job %s: %w", r.JobID, err)
			}
			it := foldItem{seq: p.Seq, at: p.At, subject: p.Subject, data: p.Data, ev: ev, who: p.Signer}
			if _, err := r.Admit(ev, p.Seq, p.At, holds); errors.Is(err, ErrWait) {
				continue
			}
			r.Pending = slices.Delete(slices.Clone(r.Pending), i, i+1)
			if _, err := v.admitInto(r, it, holds, refuse); err != nil {
				return did, err
			}
			moved, did = true, true
			break
		}
	}
	if len(r.Pending) == 0 {
		r.Pending = nil
	}
	return did, nil
}

// taken reports whether the fold took a runner's finished event, stored at
// seq in the results stream, as its run's result (neither refused nor
// disputed); an error while the fold has not judged it yet.
func (v *View) taken(ctx context.Context, fin *events.JobFinished, seq uint64) (bool, error) {
	took, _, err := v.judged(ctx, fin, seq)
	return took, err
}

// judged is taken, also reporting whether the fold marked the event as its
// run's result (Attempt.ResultSeq is seq): it does so only for a runner's
// event whose signature and claims it checked, so whoever reads the event
// again need not check its signature again.
func (v *View) judged(ctx context.Context, fin *events.JobFinished, seq uint64) (took, marked bool, err error) {
	pos, err := v.db.Position(ctx, events.StreamResults)
	if err != nil {
		return false, false, err
	}
	if pos < seq {
		return false, false, errNotReady
	}
	row, err := v.db.Job(ctx, fin.JobID)
	if errors.Is(err, readmodel.ErrNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	var r Record
	if err := json.Unmarshal(row.Data, &r); err != nil {
		return false, false, err
	}
	for _, p := range r.Pending {
		if p.Seq == seq {
			return false, false, errNotReady
		}
	}
	for _, a := range r.Attempts {
		if a.QueueSeq == fin.QueueSeq && a.Delivery == fin.Attempt && a.Run == fin.Run {
			took = a.Disputed == "" && (a.ResultSeq == 0 || a.ResultSeq == seq)
			return took, took && a.ResultSeq == seq, nil
		}
	}
	return false, false, nil
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
		c.Reason, c.Pending = "", nil
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
	s.Reason, s.Label, s.FailingSince, s.NoRunner = "", "", nil, ""
	data, err := json.Marshal(&s)
	if err != nil {
		return readmodel.Row{}, err
	}
	return readmodel.Row{JobID: r.JobID, Repo: r.Repo, Branch: r.Branch, Commit: r.Commit, Module: r.Module, Job: r.Job,
		Arch: r.Arch, Status: string(r.Status), Author: r.Author.Name, AuthorEmail: r.Author.Email, Subject: r.Subject,
		FirstSeen: nanos(firstSeen(r)), FinishedAt: nanos(r.FinishedAt), SortKey: sortKey(r), Data: data, Tests: testNames(r)}, nil
}

// testNames names the tests a finished record reports, for the search.
func testNames(r *Record) []string {
	if len(r.Tests) == 0 || !r.Status.Final() {
		return nil
	}
	names := make([]string, 0, len(r.Tests))
	for _, t := range r.Tests {
		names = append(names, t.Name)
	}
	return names
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
	r.Pending = nil
	return r, nil
}

// recordOf decodes a stored record and checks it (Record.Validate, and that
// it is the record of its row): one that is not valid is reported (OnBad) and
// shown as damaged, in its row's identity, rather than as it was stored.
func (v *View) recordOf(row readmodel.Row) (Record, error) {
	r, err := recordOf(row)
	if err != nil {
		return r, err
	}
	key := events.RecordKey(row.Repo, row.Branch, row.JobID)
	verr := r.Validate(key)
	if verr == nil && (r.JobID != row.JobID || r.Repo != row.Repo || r.Branch != row.Branch) {
		verr = fmt.Errorf("job %s is stored in the row of job %s", r.JobID, row.JobID)
	}
	if verr == nil {
		return r, nil
	}
	v.badRecord(key, verr)
	d := Record{JobID: row.JobID, Repo: row.Repo, Branch: row.Branch, Commit: row.Commit, Module: row.Module,
		Job: row.Job, Arch: row.Arch, Subject: row.Subject}
	d.Status, d.Error = events.StatusError, "the record of this job in the read model is damaged ("+verr.Error()+
		"); the next event of the job rewrites it, or re-check it"
	return d, nil
}
