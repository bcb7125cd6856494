package forge

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Pull-request actions, in jetci's words.
const (
	PullOpened  = "opened"  // opened or reopened: watch it, test its head now
	PullUpdated = "updated" // its head moved (GitHub synchronize, Gitea synchronized, GitLab update)
	PullClosed  = "closed"  // closed or merged: stop watching it
	PullEdited  = "edited"  // its title (or text) changed: the title is kept anew
	PullOther   = "other"   // labelled, reviewed…: nothing to do
)

// PullEvent is what jetci needs of a pull/merge-request webhook.
type PullEvent struct {
	Forge   string `json:"forge"`
	Action  string `json:"action"` // opened, updated, closed, edited, other
	Number  int    `json:"number"` // GitHub/Gitea number, GitLab iid
	Title   string `json:"title"`
	HeadSHA string `json:"head_sha"`
	URL     string `json:"url,omitempty"` // the PR's web page
	// Fork: the head is in another repository than the base.
	Fork bool `json:"fork"`
	// Repos are the names the payload gives the (base) repository, most
	// specific first, as push hooks are matched.
	Repos []string `json:"repos"`
}

// Branch is jetci's branch name for the request's head ref.
func (p *PullEvent) Branch() string {
	if p.Forge == GitLab {
		return fmt.Sprintf("merge-requests/%d", p.Number)
	}
	return fmt.Sprintf("pull/%d", p.Number)
}

// IsPullEvent reports whether a forge's event header names a pull/merge
// request event: GitHub and Gitea "pull_request", GitLab "Merge Request Hook".
func IsPullEvent(forge, event string) bool {
	switch forge {
	case GitLab:
		return strings.EqualFold(event, "Merge Request Hook")
	default:
		return event == "pull_request" || event == "pull_request_sync" // Gitea/Forgejo name a push to a PR so
	}
}

type ghRepo struct {
	Name     string `json:"name"`
	FullName string `json:"full_name"`
	ID       int64  `json:"id"`
}

type ghRef struct {
	Ref  string  `json:"ref"`
	SHA  string  `json:"sha"`
	Repo *ghRepo `json:"repo"`
}

// ParsePull reads a pull-request webhook body of forge (github, gitea or
// gitlab). A payload that is not valid JSON, names no number, or whose head
// is not a commit id is an error.
func ParsePull(forge string, body []byte) (*PullEvent, error) {
	p := &PullEvent{Forge: forge}
	var names []string
	switch forge {
	case GitHub, Gitea:
		var v struct {
			Action      string `json:"action"`
			Number      int    `json:"number"`
			PullRequest struct {
				Number  int    `json:"number"`
				Title   string `json:"title"`
				HTMLURL string `json:"html_url"`
				Head    ghRef  `json:"head"`
				Base    ghRef  `json:"base"`
			} `json:"pull_request"`
			Repository ghRepo `json:"repository"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, fmt.Errorf("bad JSON: %w", err)
		}
		pr := v.PullRequest
		p.Number, p.Title, p.HeadSHA, p.URL = pr.Number, pr.Title, pr.Head.SHA, pr.HTMLURL
		if p.Number == 0 {
			p.Number = v.Number
		}
		switch v.Action {
		case "opened", "reopened":
			p.Action = PullOpened
		case "synchronize", "synchronized":
			p.Action = PullUpdated
		case "closed":
			p.Action = PullClosed
		case "edited":
			p.Action = PullEdited
		default:
			p.Action = PullOther
		}
		base := pr.Base.Repo
		if base == nil {
			base = &v.Repository
		}
		p.Fork = pr.Head.Repo == nil || pr.Head.Repo.FullName != base.FullName || pr.Head.Repo.ID != base.ID
		names = []string{v.Repository.Name, path.Base(v.Repository.FullName)}
	case GitLab:
		var v struct {
			ObjectKind string `json:"object_kind"`
			Project    struct {
				ID                int64  `json:"id"`
				Name              string `json:"name"`
				PathWithNamespace string `json:"path_with_namespace"`
			} `json:"project"`
			Attrs struct {
				IID             int    `json:"iid"`
				Title           string `json:"title"`
				Action          string `json:"action"`
				URL             string `json:"url"`
				SourceProjectID int64  `json:"source_project_id"`
				TargetProjectID int64  `json:"target_project_id"`
				OldRev          string `json:"oldrev"`
				LastCommit      struct {
					ID string `json:"id"`
				} `json:"last_commit"`
			} `json:"object_attributes"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, fmt.Errorf("bad JSON: %w", err)
		}
		if v.ObjectKind != "merge_request" {
			return nil, fmt.Errorf("object_kind %q: not a merge request", v.ObjectKind)
		}
		a := v.Attrs
		p.Number, p.Title, p.HeadSHA, p.URL = a.IID, a.Title, a.LastCommit.ID, a.URL
		switch a.Action {
		case "open", "reopen":
			p.Action = PullOpened
		case "update":
			// An update is a push only when it carries oldrev; a title or
			// label change has none (it is kept as an edit: the title may
			// be new).
			p.Action = PullEdited
			if a.OldRev != "" {
				p.Action = PullUpdated
			}
		case "close", "merge":
			p.Action = PullClosed
		default:
			p.Action = PullOther
		}
		p.Fork = a.SourceProjectID != a.TargetProjectID
		names = []string{path.Base(v.Project.PathWithNamespace), v.Project.Name}
	default:
		return nil, fmt.Errorf("forge %q: want github, gitea or gitlab", forge)
	}
	if p.Number <= 0 || p.Number > 999_999_999 {
		return nil, fmt.Errorf("pull request number %d: want 1 or more", p.Number)
	}
	if p.HeadSHA != "" && !validSHA(p.HeadSHA) {
		return nil, fmt.Errorf("head %q: not a commit id", p.HeadSHA)
	}
	if (p.Action == PullOpened || p.Action == PullUpdated) && p.HeadSHA == "" {
		return nil, errors.New("the payload names no head commit")
	}
	p.Title = cleanTitle(p.Title)
	for _, n := range names {
		if repoName(n) && !contains(p.Repos, n) {
			p.Repos = append(p.Repos, n)
		}
	}
	if len(p.Repos) == 0 {
		return nil, errors.New("the payload names no repository")
	}
	return p, nil
}

// cleanTitle keeps a title printable, on one line, and at most 200 bytes.
func cleanTitle(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > 200 {
		cut := 200
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// repoName: a name a payload gives a repo can name a jetci repo (no path).
func repoName(n string) bool {
	return n != "" && n != "." && n != ".." && len(n) <= 255 && !strings.Contains(n, "/") && utf8.ValidString(n) &&
		!strings.ContainsFunc(n, unicode.IsControl)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
