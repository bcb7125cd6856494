package runner

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// output collects a job's combined stdout and stderr: the first limit bytes go to
// a log file, and everything is offered to a live sink in batches. Memory stays
// bounded however much a step prints.
type output struct {
	mu        sync.Mutex
	f         *os.File
	limit     int64
	written   int64
	dropped   int64
	live      func([]byte)
	pending   []byte
	lastFlush time.Time
}

const liveBatch = 16 << 10

func newOutput(path string, limit int64, live func([]byte)) (*output, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &output{f: f, limit: limit, live: live, lastFlush: time.Now()}, nil
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(p)
	if room := o.limit - o.written; room > 0 {
		keep := p
		if int64(len(keep)) > room {
			keep = keep[:room]
		}
		if _, err := o.f.Write(keep); err != nil {
			return 0, err
		}
		o.written += int64(len(keep))
		o.dropped += int64(n - len(keep))
		if o.live != nil {
			o.pending = append(o.pending, keep...)
			if len(o.pending) >= liveBatch || time.Since(o.lastFlush) > 100*time.Millisecond {
				o.flushLocked()
			}
		}
	} else {
		o.dropped += int64(n)
	}
	return n, nil
}

// Note writes a line of jetci's own (a step header, a timeout) into the log.
func (o *output) Note(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	line := fmt.Sprintf(format, args...) + "\n"
	o.f.WriteString(line)
	o.written += int64(len(line))
	if o.live != nil {
		o.pending = append(o.pending, line...)
	}
}

// Flush sends what is pending to the live sink.
func (o *output) Flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushLocked()
}

func (o *output) flushLocked() {
	if len(o.pending) > 0 && o.live != nil {
		o.live(o.pending)
		o.pending = nil
	}
	o.lastFlush = time.Now()
}

// Close ends the log, noting how much was cut, and returns its size and whether
// it was truncated.
func (o *output) Close() (int64, bool, error) {
	o.mu.Lock()
	dropped := o.dropped
	o.mu.Unlock()
	if dropped > 0 {
		o.Note("[jetci: output truncated after %d bytes; %d more bytes were dropped]", o.limit, dropped)
	}
	o.Flush()
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.written, dropped > 0, o.f.Close()
}
