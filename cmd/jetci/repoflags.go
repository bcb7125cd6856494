package main

import (
	"flag"

	"github.com/jetci/jetci/observer"
)

// maxNewCommitsFlag registers --max-new-commits: how many new commits of one
// branch an observer publishes from one poll.
func maxNewCommitsFlag(fs *flag.FlagSet) *int {
	return fs.Int("max-new-commits", observer.DefaultConfig().MaxNewCommits,
		"most new commits of one branch published from one poll (a push of more publishes the newest only; the older ones are skipped, not tested, "+
			"and that is logged, counted in jetci_observer_commit_limit_hits_total and marked older_commits_skipped on the oldest published commit's event)")
}
