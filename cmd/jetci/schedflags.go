package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/jetci/jetci/dispatcher"
)

// gateFlags registers the broken-build flow's flags.
func gateFlags(fs *flag.FlagSet) func(*dispatcher.Config) error {
	var rules listFlag
	fs.Var(&rules, "gate", "put branches under the broken-build flow: REPO[:BRANCH_PATTERN] (repeat; REPO * for all). A failed first check holds later commits until a second check of the head passes")
	window := fs.Duration("fix-window", 30*time.Minute, "broken-build flow: how long the author has to fix a broken branch before its second check")
	age := fs.Duration("age-after", time.Hour, "a job waiting this long in its priority class, untaken, moves up one class (0: never)")
	periodic := fs.String("periodic", "", `schedule of the periodic full check in cron syntax, e.g. "0 2 * * *", @nightly or "@every 6h" (default: none)`)
	skip := fs.Bool("periodic-skip-passed", false, "periodic full check: skip branches whose head passed since the last one")
	var coalesce listFlag
	fs.Var(&coalesce, "coalesce", "REPO[:BRANCH_PATTERN] where a new commit cancels the waiting jobs of older ones, 'superseded' (repeat; default: every commit is tested)")
	var coalesceRunning listFlag
	fs.Var(&coalesceRunning, "coalesce-running", "REPO[:BRANCH_PATTERN] where a new commit also kills the running jobs of older ones, 'superseded' (implies --coalesce there; e.g. proj:pull/* for pull requests; repeat)")
	var bisect listFlag
	fs.Var(&bisect, "bisect", "REPO[:BRANCH_PATTERN] where a failure after untested commits (superseded, held) is bisected to the commit that caused it, whose author is mailed (repeat; REPO * for all)")
	return func(c *dispatcher.Config) error {
		c.Periodic, c.PeriodicSkipPassed = *periodic, *skip
		for _, s := range bisect {
			r, err := dispatcher.ParseGateRule(s)
			if err != nil {
				return fmt.Errorf("--bisect %w", err)
			}
			c.Bisect = append(c.Bisect, r)
		}
		for _, s := range coalesce {
			r, err := dispatcher.ParseGateRule(s)
			if err != nil {
				return fmt.Errorf("--coalesce %w", err)
			}
			c.Coalesce = append(c.Coalesce, r)
		}
		for _, s := range coalesceRunning {
			r, err := dispatcher.ParseGateRule(s)
			if err != nil {
				return fmt.Errorf("--coalesce-running %w", err)
			}
			c.CoalesceRunning = append(c.CoalesceRunning, r)
		}
		if *age < 0 {
			return fmt.Errorf("--age-after %s: want 0 or more", *age)
		}
		c.AgeAfter = *age
		for _, s := range rules {
			r, err := dispatcher.ParseGateRule(s)
			if err != nil {
				return fmt.Errorf("--gate %w", err)
			}
			c.Gate = append(c.Gate, r)
		}
		c.FixWindow = *window
		return nil
	}
}
