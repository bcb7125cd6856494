package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// pending is a finished job whose result is not yet stored by JetStream. It is
// kept on disk so that neither a broker outage nor a runner restart loses it.
type pending struct {
	Result *events.JobFinished `json:"result"`
	Reply  string              `json:"reply"` // the job message's ack subject
}

func (r *Runner) outboxPath(res *events.JobFinished) string {
	return filepath.Join(r.cfg.WorkDir, "outbox", fmt.Sprintf("%s-%d-%d.json", res.JobID, res.QueueSeq, res.Attempt))
}

// deliver publishes the result. If the first try fails (the broker is away or
// slow) the result goes to the outbox on disk, fsynced, before the retries, so
// that a runner restarted meanwhile still reports it; it is removed once
// stored. A result published at the first try needs no outbox: if the runner
// dies before the publish, the job is not acked and runs again, so nothing is
// lost, and the common path costs no fsync per job.
func (r *Runner) deliver(ctx context.Context, res *events.JobFinished, reply string) error {
	fctx, cancel := context.WithTimeout(ctx, firstTry)
	err := r.publishResultOnce(fctx, res)
	cancel()
	if err == nil {
		return nil
	}
	r.log.Warn().Err(err).Str("job_id", res.JobID).Msg("publishing the result failed; keeping it in the outbox")
	path := r.outboxPath(res)
	data, err := json.Marshal(pending{Result: res, Reply: reply})
	if err != nil {
		return err
	}
	if err := writeFileSync(path, data); err != nil {
		r.log.Warn().Err(err).Msg("cannot write the outbox")
	}
	if err := r.publishResult(ctx, res); err != nil {
		return err
	}
	_ = os.Remove(path)
	return nil
}

// resultMsgID is the Msg-Id of a result: its run's (one kept from an older
// runner without run ids: its attempt's).
func resultMsgID(res *events.JobFinished) string {
	if res.Run == "" {
		return events.ResultMsgID(res.JobID, res.QueueSeq, res.Attempt, events.KindFinished)
	}
	return events.RunMsgID(res.JobID, res.Run, events.KindFinished)
}

// firstTry bounds the first publish of a result before it goes to the outbox.
const firstTry = time.Second

// publishResultOnce publishes a JobFinished once.
func (r *Runner) publishResultOnce(ctx context.Context, res *events.JobFinished) error {
	data, err := events.Encode(res)
	if err != nil {
		return err
	}
	_, err = r.js.Publish(ctx, events.ResultSubject(res.Repo, res.Branch, events.KindFinished), data,
		jetstream.WithMsgID(resultMsgID(res)))
	return err
}

// publishResult publishes a JobFinished until JetStream stores it or ctx ends.
// The Msg-Id makes a repeated publish harmless.
func (r *Runner) publishResult(ctx context.Context, res *events.JobFinished) error {
	data, err := events.Encode(res)
	if err != nil {
		return err
	}
	subject := events.ResultSubject(res.Repo, res.Branch, events.KindFinished)
	id := resultMsgID(res)
	wait := 250 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := r.js.Publish(pctx, subject, data, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return nil
		}
		r.log.Warn().Err(err).Str("job_id", res.JobID).Dur("retry_in", wait).Msg("publishing the result failed")
		select {
		case <-ctx.Done():
			return fmt.Errorf("publish result: %w", err)
		case <-time.After(wait):
		}
		if wait *= 2; wait > 5*time.Second {
			wait = 5 * time.Second
		}
	}
}

// flushOutbox publishes results left by an earlier run of this runner (its work
// directory), then acks their jobs so they are not run again.
func (r *Runner) flushOutbox(ctx context.Context) {
	dir := filepath.Join(r.cfg.WorkDir, "outbox")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		var p pending
		if err == nil {
			err = json.Unmarshal(data, &p)
		}
		if err != nil || p.Result == nil {
			r.log.Error().Err(err).Str("file", path).Msg("unreadable outbox entry; moving it aside")
			_ = os.Rename(path, path+".bad")
			continue
		}
		if err := r.publishResult(ctx, p.Result); err != nil {
			return
		}
		if p.Reply != "" {
			_ = r.nc.Publish(p.Reply, []byte("+ACK"))
		}
		_ = os.Remove(path)
		r.log.Info().Str("job_id", p.Result.JobID).Uint64("attempt", p.Result.Attempt).Msg("published a result kept from before")
	}
}

func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
