//go:build !linux

package runner

import (
	"time"

	"github.com/jetci/jetci/events"
)

const limitsEnforced = false

type groupUsage struct {
	cpu   time.Duration
	rss   int64
	procs int
}

func usageOf(int) groupUsage { return groupUsage{} }

func capForks(int, events.Limits) {}
