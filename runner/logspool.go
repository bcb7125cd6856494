package runner

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
)

// The log spool: a job's log that could not be stored when the job ended (the
// broker away, a cluster electing a new leader) waits in WORK/spool and is
// uploaded as soon as the store answers, by this runner or, after a restart,
// by the next runner on the same work directory. The result names the log
// either way, so the job's slot does not wait for the store.
//
// An entry is one file, NAME.log, NAME being the object name in hex: moved in
// with one rename, so an uploader never sees half an entry.

// logFirstTry bounds the upload of a log while its job's slot waits; after
// that the log is spooled and the slot takes the next job.
var logFirstTry = 5 * time.Second

func (r *Runner) spoolDir() string { return filepath.Join(r.cfg.WorkDir, "spool") }

// spoolLog moves the log at path into the spool, to be stored as name.
func (r *Runner) spoolLog(name, path string) error {
	if err := os.Rename(path, filepath.Join(r.spoolDir(), hex.EncodeToString([]byte(name))+".log")); err != nil {
		return err
	}
	select {
	case r.spoolKick <- struct{}{}:
	default:
	}
	return nil
}

// uploadSpool stores spooled logs until ctx ends: at once when one is
// spooled, and again with a growing pause while the store does not answer.
func (r *Runner) uploadSpool(ctx context.Context) {
	wait := time.Second
	for {
		left := r.flushSpool(ctx)
		var retry <-chan time.Time
		if left > 0 {
			retry = time.After(wait)
			wait = min(2*wait, 30*time.Second)
		} else {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-r.spoolKick:
		case <-retry:
		}
	}
}

// flushSpool uploads what the spool holds and returns how many logs are left.
func (r *Runner) flushSpool(ctx context.Context) int {
	entries, err := os.ReadDir(r.spoolDir())
	if err != nil {
		return 0
	}
	left := 0
	for _, e := range entries {
		base, ok := strings.CutSuffix(e.Name(), ".log")
		b, err := hex.DecodeString(base)
		if !ok || err != nil || len(b) == 0 {
			continue
		}
		name, path := string(b), filepath.Join(r.spoolDir(), e.Name())
		if left > 0 || ctx.Err() != nil { // the store did not answer: try again later
			left++
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, _, err = putObject(pctx, r.js, events.BucketLogs, name, "job log", path, -1)
		cancel()
		if err != nil {
			r.log.Debug().Err(err).Str("log", name).Msg("spooled log not stored yet")
			left++
			continue
		}
		_ = os.Remove(path)
		r.log.Info().Str("log", name).Msg("spooled log stored")
	}
	r.cfg.Metrics.SetSpooledLogs(left)
	return left
}
