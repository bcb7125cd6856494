package runner

import (
	"context"
	"crypto/sha256"
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
// An entry is two files: KEY.name (the object name, written first, fsynced)
// and KEY.log (the log, moved in after it).

// logFirstTry bounds the upload of a log while its job's slot waits; after
// that the log is spooled and the slot takes the next job.
var logFirstTry = 5 * time.Second

func (r *Runner) spoolDir() string { return filepath.Join(r.cfg.WorkDir, "spool") }

// spoolLog moves the log at path into the spool, to be stored as name.
func (r *Runner) spoolLog(name, path string) error {
	sum := sha256.Sum256([]byte(name))
	base := filepath.Join(r.spoolDir(), hex.EncodeToString(sum[:12]))
	if err := writeFileSync(base+".name", []byte(name)); err != nil {
		return err
	}
	if err := os.Rename(path, base+".log"); err != nil {
		_ = os.Remove(base + ".name")
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
		base, ok := strings.CutSuffix(e.Name(), ".name")
		if !ok {
			continue
		}
		base = filepath.Join(r.spoolDir(), base)
		b, err := os.ReadFile(base + ".name")
		if _, serr := os.Stat(base + ".log"); err != nil || serr != nil {
			// Cut short between its two files: nothing to upload.
			_ = os.Remove(base + ".name")
			continue
		}
		name := string(b)
		if left > 0 || ctx.Err() != nil { // the store did not answer: try again later
			left++
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = putObject(pctx, r.js, events.BucketLogs, name, "job log", base+".log", -1)
		cancel()
		if err != nil {
			r.log.Debug().Err(err).Str("log", name).Msg("spooled log not stored yet")
			left++
			continue
		}
		_ = os.Remove(base + ".log")
		_ = os.Remove(base + ".name")
		r.log.Info().Str("log", name).Msg("spooled log stored")
	}
	r.cfg.Metrics.SetSpooledLogs(left)
	return left
}
