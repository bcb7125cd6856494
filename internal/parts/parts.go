// Package parts runs the goroutines a service owns. A service's Run starts
// each of its parts (consumers, timers, the reaper…) in a Group and waits for
// all of them: none outlives Run. A part started with Must ends the service
// when it fails; one started with Restart is started again after a growing
// pause (1 s to 30 s), and while it waits, the metrics show it down
// (jetci_service_part_up 0, jetci_service_part_restarts_total) and /healthz
// names it. A part that returns nil is done (a feature that is off returns
// at once) and is not started again.
package parts

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/jetci/jetci/metrics"
)

// Group is the parts of one service.
type Group struct {
	service string
	m       *metrics.Metrics
	log     zerolog.Logger
	g       *errgroup.Group
	ctx     context.Context
}

// Backoff bounds the pause before a failed part is started again.
var Backoff = struct{ Min, Max time.Duration }{time.Second, 30 * time.Second}

// New returns the group of service's parts and the context they run under: it
// ends when ctx does or when a Must part fails.
func New(ctx context.Context, service string, m *metrics.Metrics, log zerolog.Logger) (*Group, context.Context) {
	g, gctx := errgroup.WithContext(ctx)
	return &Group{service: service, m: m, log: log, g: g, ctx: gctx}, gctx
}

// Must runs part; its error ends the group (and Wait returns it).
func (g *Group) Must(name string, part func(context.Context) error) {
	g.g.Go(func() error {
		g.m.PartUp(g.service, name)
		err := part(g.ctx)
		if err != nil && g.ctx.Err() == nil {
			return fmt.Errorf("%s: %s: %w", g.service, name, err)
		}
		return nil
	})
}

// Restart runs part until the group ends, starting it again after a pause
// whenever it fails.
func (g *Group) Restart(name string, part func(context.Context) error) {
	g.g.Go(func() error {
		wait := Backoff.Min
		for {
			g.m.PartUp(g.service, name)
			started := time.Now()
			err := part(g.ctx)
			if g.ctx.Err() != nil || err == nil {
				return nil
			}
			if time.Since(started) > 2*Backoff.Max {
				wait = Backoff.Min // it ran well for a while: a new failure
			}
			g.m.PartFailed(g.service, name, err)
			g.log.Error().Err(err).Str("part", name).Dur("restart_in", wait).Msg("a part of the service failed; restarting it")
			select {
			case <-g.ctx.Done():
				return nil
			case <-time.After(wait):
			}
			wait = min(2*wait, Backoff.Max)
		}
	})
}

// Wait waits for every part and returns the first Must part's error.
func (g *Group) Wait() error { return g.g.Wait() }
