package main

import (
	"github.com/jetci/jetci/dispatcher"
	"github.com/jetci/jetci/observer"
)

const pullRequestsHelp = "also test a repo's pull/merge requests: REPO (refs/pull/N/head, GitHub and Gitea) or REPO=gitlab (refs/merge-requests/N/head); they run as branch pull/N or merge-requests/N, without secrets (repeat)"

// pullCoalesce makes a pull request's new head supersede the waiting runs of
// its older heads (dispatcher --coalesce REPO:pull/*).
func pullCoalesce(c observer.Config) []dispatcher.GateRule {
	var out []dispatcher.GateRule
	for _, r := range c.Repos {
		switch r.Pulls {
		case observer.PullsGitHub:
			out = append(out, dispatcher.GateRule{Repo: r.Name, Branch: "pull/*"})
		case observer.PullsGitLab:
			out = append(out, dispatcher.GateRule{Repo: r.Name, Branch: "merge-requests/*"})
		}
	}
	return out
}
