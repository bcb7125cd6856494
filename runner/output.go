package runner

import (
	"fmt"
	"os"
	"sync"
	"time"
	"unicode/utf8"
)

// Live output is sent in batches: at most liveBatch bytes, at least every
// liveEvery while a job prints.
const (
	liveBatch = 16 << 10
	liveEvery = 100 * time.Millisecond
)

// output collects a job's combined stdout and stderr: the first limit bytes go to
// the log, and the same bytes are offered to a live sink in batches. Past the
// limit, output is drained and dropped, so memory and disk stay bounded however
// much a step prints. The log is kept in memory while it is at most memMax
// bytes (most logs: they are stored as one object chunk, straight from
// memory), and in a file at path from then on: a short job's log costs no
// file to create, read back and remove.
type output struct {
	mu      sync.Mutex
	path    string
	f       *os.File // nil while the log is in mem
	mem     []byte
	memMax  int
	limit   int64
	written int64 // bytes in the log file, notes included
	dropped int64 // bytes of step output dropped
	live    func([]byte)
	pending []byte
	closed  bool
	stop    chan struct{}
	ticker  sync.WaitGroup
	mask    *masker // nil: no secrets to mask
}

func newOutput(path string, limit int64, live func([]byte)) (*output, error) {
	o := &output{path: path, memMax: objChunkSize, limit: limit, live: live, stop: make(chan struct{})}
	if live != nil {
		o.ticker.Add(1)
		go o.flusher()
	}
	return o, nil
}

// flusher sends pending output every liveEvery, so a line printed before a long
// silence shows up at once.
func (o *output) flusher() {
	defer o.ticker.Done()
	t := time.NewTicker(liveEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			o.mu.Lock()
			o.flushLocked(false)
			o.mu.Unlock()
		case <-o.stop:
			return
		}
	}
}

// maskSecrets has every later write and note masked: each value becomes ***
// before it reaches the log file or the live sink.
func (o *output) maskSecrets(values []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.mask = newMasker(values)
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, os.ErrClosed
	}
	if err := o.writeLocked(o.mask.write(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeLocked keeps what fits under the limit of p, already masked.
func (o *output) writeLocked(p []byte) error {
	n := len(p)
	room := o.limit - o.written
	if room <= 0 {
		o.dropped += int64(n)
		return nil
	}
	keep := p
	if int64(len(keep)) > room {
		keep = keep[:room]
	}
	if err := o.logLocked(keep); err != nil {
		return err
	}
	o.written += int64(len(keep))
	o.dropped += int64(n - len(keep))
	o.queueLocked(keep)
	return nil
}

// flushMaskLocked passes on the output the masker held back.
func (o *output) flushMaskLocked() {
	if held := o.mask.flush(); len(held) > 0 {
		_ = o.writeLocked(held)
	}
}

// Note writes a line of jetci's own (a step header, a timeout) into the log, even
// past the limit (it counts towards it).
func (o *output) Note(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.flushMaskLocked()
	line := o.mask.String(fmt.Sprintf(format, args...)) + "\n"
	if err := o.logLocked([]byte(line)); err == nil {
		o.written += int64(len(line))
	}
	o.queueLocked([]byte(line))
}

func (o *output) queueLocked(b []byte) {
	if o.live == nil {
		return
	}
	o.pending = append(o.pending, b...)
	if len(o.pending) >= liveBatch {
		o.flushLocked(false)
	}
}

// flushLocked sends what is pending to the live sink. Unless final, an incomplete
// UTF-8 sequence at the end waits for the rest of its bytes, so chunks do not
// split characters.
func (o *output) flushLocked(final bool) {
	if len(o.pending) == 0 || o.live == nil {
		return
	}
	send := o.pending
	if !final {
		send = send[:completeUTF8(send)]
		if len(send) == 0 {
			return
		}
	}
	o.live(send)
	o.pending = append([]byte(nil), o.pending[len(send):]...)
}

// completeUTF8 returns the length of b without a trailing incomplete UTF-8
// sequence (invalid bytes count as complete).
func completeUTF8(b []byte) int {
	for i := 1; i <= utf8.UTFMax-1 && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < utf8.RuneSelf { // ASCII: everything before is complete
			return len(b)
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return len(b) - i
			}
			return len(b)
		}
	}
	return len(b)
}

// Close ends the log, noting how much was cut, flushes the live sink, and
// returns the log's size and whether output was dropped.
func (o *output) Close() (int64, bool, error) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return o.written, o.dropped > 0, nil
	}
	o.mu.Unlock()
	close(o.stop)
	o.ticker.Wait()

	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushMaskLocked()
	if o.dropped > 0 {
		line := fmt.Sprintf("\n[jetci: output truncated after %d bytes]\n[jetci] %d more bytes of output were dropped\n", o.limit, o.dropped)
		if err := o.logLocked([]byte(line)); err == nil {
			o.written += int64(len(line))
		}
		o.queueLocked([]byte(line))
	}
	o.flushLocked(true)
	o.closed = true
	if o.f == nil {
		return o.written, o.dropped > 0, nil
	}
	return o.written, o.dropped > 0, o.f.Close()
}

// logLocked appends b to the log: in memory while it stays within memMax,
// else to the file (made then, with what memory held).
func (o *output) logLocked(b []byte) error {
	if o.f == nil && len(o.mem)+len(b) <= o.memMax {
		o.mem = append(o.mem, b...)
		return nil
	}
	if o.f == nil {
		f, err := os.Create(o.path)
		if err != nil {
			return err
		}
		if _, err := f.Write(o.mem); err != nil {
			f.Close()
			_ = os.Remove(o.path)
			return err
		}
		o.f, o.mem = f, nil
	}
	_, err := o.f.Write(b)
	return err
}

// inMemory returns the closed log when it is held in memory (ok false: it
// is the file at path).
func (o *output) inMemory() (data []byte, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.mem, o.f == nil
}
