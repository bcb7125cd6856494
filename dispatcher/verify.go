package dispatcher

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// resultKeys verifies the signatures of result events for the consumers of
// the results stream (the broken-build flow, culprit finding): an event the
// runner user could have made up without a runner identity is dropped, as
// the reporter drops it. (Which run owns a delivery is the reporter's to
// judge: see docs/security.md, "Who may report a result".)
type resultKeys struct {
	once sync.Once
	keys *events.Keys
	err  error
}

var keysOf sync.Map // *Dispatcher → *resultKeys

// signed reports whether m carries a valid signature for ev; it logs what it
// drops.
func (d *Dispatcher) signed(ctx context.Context, m jetstream.Msg, ev any) bool {
	v, _ := keysOf.LoadOrStore(d, &resultKeys{})
	rk := v.(*resultKeys)
	rk.once.Do(func() { rk.keys, rk.err = events.OpenKeys(context.WithoutCancel(ctx), d.js) })
	if rk.err != nil {
		d.log.Warn().Err(rk.err).Msg("cannot check result signatures; taking results unchecked")
		return true
	}
	runner := ""
	switch e := ev.(type) {
	case *events.JobFinished:
		runner = e.Runner
	case *events.JobStarted:
		runner = e.Runner
	}
	h := ""
	if hs := m.Headers(); hs != nil {
		h = hs.Get(events.SigHeader)
	}
	who, err := rk.keys.Verify(m.Data(), h, runner)
	if err == nil {
		if _, queued := ev.(*events.JobQueued); queued && who != "service" {
			err = events.ErrForged
		}
	}
	if err != nil {
		d.log.Warn().Err(err).Str("subject", m.Subject()).Msg("dropping a result event that is not signed as it must be")
		return false
	}
	return true
}
