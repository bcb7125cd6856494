package reporter

import (
	"bytes"
	"context"
	"runtime"
	"testing"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestViewRunLeavesNoGoroutine: once View.Run returns, none of the
// goroutines it started (the runners' and branches' watches, the results
// check) is left.
func TestViewRunLeavesNoGoroutine(t *testing.T) {
	s := brokertest.Run(t)
	dsn := t.TempDir() + "/" + DBFile
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		r, err := New(ctx, Config{DB: dsn}, s.JS, brokertest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		v := r.View()
		if v.branches == nil || v.results == nil || v.OnBad == nil {
			t.Fatal("the view has no branches bucket, results bucket or OnBad: the test would not start every goroutine")
		}
		done := make(chan struct{})
		go func() { defer close(done); v.Run(ctx) }()
		<-v.Ready()
		// A lease and a branch state on the watches, so that both delivered.
		if _, err := v.runners.Put(ctx, events.LeaseKey("r1"), []byte(`{"id":"r1","arch":"amd64","slots":1}`)); err != nil {
			t.Fatal(err)
		}
		brokertest.CheckFor(t, 10e9, 5e6, func() error {
			if len(v.Runners()) != 1 {
				return errNotReady
			}
			return nil
		})
		cancel()
		<-done
		if st := viewGoroutines(); st != "" {
			t.Fatalf("goroutines of the view left after Run returned:\n%s", st)
		}
		r.closeDB()
	}
}

// viewGoroutines returns the stacks of goroutines running a View method
// (other than this test's).
func viewGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []byte
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("reporter.(*View).")) && !bytes.Contains(g, []byte("TestViewRunLeavesNoGoroutine")) {
			out = append(append(out, g...), "\n\n"...)
		}
	}
	return string(out)
}
