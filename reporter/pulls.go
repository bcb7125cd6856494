package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
	"github.com/jetci/jetci/reporter/readmodel"
)

// Pull is what jetci knows of a pull/merge request, from its forge's hooks;
// kept in the jetci-notify bucket under pull.<repo token>.<number>.
type Pull struct {
	Repo      string    `json:"repo"`
	Branch    string    `json:"branch"` // pull/N or merge-requests/N, as its runs are named
	Number    int       `json:"number"`
	Title     string    `json:"title"`
	State     string    `json:"state"` // open or closed
	Head      string    `json:"head,omitempty"`
	URL       string    `json:"url,omitempty"`
	Fork      bool      `json:"fork"`
	Forge     string    `json:"forge"`
	UpdatedAt time.Time `json:"updated_at"`
	// Label is how the pages name its runs: "PR #12: Make it faster"
	// ("MR !12: …" on GitLab), "PR #12" while no hook has told its title.
	// Set when read, not kept.
	Label string `json:"label,omitempty"`
}

// pullLabel names a pull/merge request's runs: "PR #12: title", "MR !3:
// title" for GitLab's merge-requests/3, without the colon when the title is
// not known.
func pullLabel(branch string, n int, title string) string {
	l := "PR #" + strconv.Itoa(n)
	if strings.HasPrefix(branch, "merge-requests/") {
		l = "MR !" + strconv.Itoa(n)
	}
	if title != "" {
		l += ": " + title
	}
	return l
}

// Kind is "pull request", or "merge request" for GitLab's.
func (p *Pull) Kind() string {
	if strings.HasPrefix(p.Branch, "merge-requests/") {
		return "merge request"
	}
	return "pull request"
}

func pullIndex(repo, branch string) string { return repo + "\x00" + branch }

// applyPull keeps the view's picture of the pull requests current from the
// jetci-notify bucket's pull.* keys.
func (v *View) applyPull(e jetstream.KeyValueEntry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		if i, ok := v.pullKeys[e.Key()]; ok {
			delete(v.pulls, i)
			delete(v.pullKeys, e.Key())
			v.notify(Change{Kind: "branch"})
		}
		return
	}
	var p Pull
	if json.Unmarshal(e.Value(), &p) != nil {
		return
	}
	// Only what savePull writes (a repo named "pull" has notification
	// states under pull.* too).
	if n, ok := events.PullNumber(p.Branch); !ok || n != p.Number || pullKey(p.Repo, p.Number) != e.Key() {
		return
	}
	v.setPullLocked(e.Key(), p)
}

func (v *View) setPullLocked(key string, p Pull) {
	p.Label = ""
	i := pullIndex(p.Repo, p.Branch)
	if old, ok := v.pulls[i]; ok && old.UpdatedAt.After(p.UpdatedAt) {
		return // the hook's own write came first; the watch brings it again
	}
	v.pulls[i], v.pullKeys[key] = p, i
	v.notify(Change{Kind: "branch"})
}

// PullOf returns the pull/merge request a branch is the head of: what jetci
// heard of it, or only its number when no hook told more; nil for a branch
// that is none.
func (v *View) PullOf(repo, branch string) *Pull {
	n, ok := events.PullNumber(branch)
	if !ok {
		return nil
	}
	v.mu.RLock()
	p, known := v.pulls[pullIndex(repo, branch)]
	v.mu.RUnlock()
	if !known {
		p = Pull{Repo: repo, Branch: branch, Number: n}
	}
	p.Label = pullLabel(branch, n, p.Title)
	return &p
}

func pullKey(repo string, n int) string {
	return "pull." + events.Token(repo) + "." + strconv.Itoa(n)
}

// pullHook takes a pull/merge-request hook whose signature was checked: an
// opened or updated request has its repo's observers poll at once (they
// watch its head ref); a closed one has its waiting and running jobs
// cancelled. Its number and title are kept for the pages and the API.
func (r *Reporter) pullHook(w http.ResponseWriter, req *http.Request, sender hookSender, body []byte) {
	p, err := forge.ParsePull(sender.name, body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	for _, name := range p.Repos {
		err := events.Poke(req.Context(), r.js.Conn(), name)
		ok := !errors.Is(err, events.ErrNoObserver)
		if err != nil && ok {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		if !ok {
			continue
		}
		out := map[string]any{"repo": name, "from": sender.name, "branch": p.Branch(), "action": p.Action}
		if p.Action != forge.PullOther {
			if err := r.savePull(req.Context(), name, p); err != nil {
				writeError(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		if p.Action == forge.PullClosed {
			n, err := r.cancelBranch(req.Context(), name, p.Branch(), fmt.Sprintf("%s #%d closed", sender.name, p.Number))
			if err != nil {
				writeError(w, http.StatusServiceUnavailable, err.Error())
				return
			}
			out["cancelled"] = n
		}
		r.log.Info().Str("repo", name).Str("from", sender.name).Int("number", p.Number).Str("action", p.Action).
			Bool("fork", p.Fork).Msg("pull request hook")
		writeJSON(w, http.StatusAccepted, out)
		return
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no observer watches a repo named %s", strings.Join(p.Repos, " or ")))
}

func (r *Reporter) savePull(ctx context.Context, repo string, p *forge.PullEvent) error {
	kv, err := r.js.KeyValue(ctx, events.BucketNotify)
	if err != nil {
		return fmt.Errorf("open %s: %w", events.BucketNotify, err)
	}
	key := pullKey(repo, p.Number)
	for range 5 {
		st, head, rev := "open", p.HeadSHA, uint64(0)
		e, err := kv.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			var old Pull
			if p.Action == forge.PullEdited && json.Unmarshal(e.Value(), &old) == nil && old.Branch == p.Branch() {
				// An edit tells the title; its state and head stay.
				st = old.State
				if head == "" {
					head = old.Head
				}
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return fmt.Errorf("remember pull request %d: %w", p.Number, err)
		}
		if p.Action == forge.PullClosed {
			st = "closed"
		}
		pl := Pull{Repo: repo, Branch: p.Branch(), Number: p.Number, Title: p.Title, State: st, Head: head, URL: p.URL,
			Fork: p.Fork, Forge: p.Forge, UpdatedAt: time.Now().UTC()}
		data, _ := json.Marshal(pl)
		if rev == 0 {
			_, err = kv.Create(ctx, key, data)
		} else {
			_, err = kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			// The pages show it at once (the bucket's watch brings it to
			// every other reporter).
			r.view.mu.Lock()
			r.view.setPullLocked(key, pl)
			r.view.mu.Unlock()
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("remember pull request %d: %w", p.Number, err)
		}
	}
	return fmt.Errorf("remember pull request %d: too many concurrent writes", p.Number)
}

// Pulls lists the pull requests jetci heard of for a repo ("" for all), newest
// first.
func (r *Reporter) Pulls(ctx context.Context, repo string) ([]Pull, error) {
	kv, err := r.js.KeyValue(ctx, events.BucketNotify)
	if err != nil {
		return nil, err
	}
	filter := "pull.>"
	if repo != "" {
		filter = "pull." + events.Token(repo) + ".*"
	}
	lister, err := kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, err
	}
	var out []Pull
	for k := range lister.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		var p Pull
		if json.Unmarshal(e.Value(), &p) == nil && p.Number > 0 && pullKey(p.Repo, p.Number) == k {
			p.Label = pullLabel(p.Branch, p.Number, p.Title)
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UpdatedAt.After(out[j].UpdatedAt) })
	return out, nil
}

// PreviousCommit returns the commit before sha in a branch's history as
// jetci has it (the newest one first seen before it), "" for its first.
func (v *View) PreviousCommit(ctx context.Context, repo, branch, sha string) (string, error) {
	rows, _, err := v.db.Commits(ctx, repo, branch, sha, readmodel.Page{Limit: 1})
	if err != nil || len(rows) == 0 || rows[0].Commit != sha {
		return "", err
	}
	prev, _, err := v.db.Commits(ctx, repo, branch, "", readmodel.Page{Limit: 1, After: readmodel.Cursor{Time: rows[0].FirstSeen, ID: sha}})
	if err != nil || len(prev) == 0 {
		return "", err
	}
	return prev[0].Commit, nil
}

// cancelBranch cancels every waiting or running job of a branch.
func (r *Reporter) cancelBranch(ctx context.Context, repo, branch, by string) (int, error) {
	recs, _, err := r.view.Results(ctx, Filter{Repo: repo, Branch: branch, Status: []events.Status{events.StatusQueued, events.StatusRunning}, All: true},
		readmodel.Page{Limit: MaxPage}, 0)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, rec := range recs {
		if rec.Branch != branch || rec.Status.Final() {
			continue
		}
		if _, err := r.cancel(ctx, rec.JobID, by); err != nil {
			var ae *actionError
			if errors.As(err, &ae) {
				continue // ended meanwhile, or paused
			}
			return n, err
		}
		n++
	}
	return n, nil
}

// apiPulls lists pull requests: GET /api/v1/pulls[?repo=R].
func (r *Reporter) apiPulls(w http.ResponseWriter, req *http.Request) {
	out, err := r.Pulls(req.Context(), req.URL.Query().Get("repo"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if out == nil {
		out = []Pull{}
	}
	writeJSON(w, http.StatusOK, out)
}

// ForgeLinks are a commit's pages on its forge, when the repo's forge entry
// gives the forge's web URL.
type ForgeLinks struct {
	Commit string `json:"commit,omitempty"`
	// Compare is the forge's comparison of the branch's previous commit
	// jetci has (Previous) with this one: what this push brought.
	Compare string `json:"compare,omitempty"`
	Pull    string `json:"pull,omitempty"` // the pull/merge request's page
}

// commitPageData is the commit page's data: the commit, and where it is on
// its forge (when the repo's forge and web URL are configured) and which
// pull request it heads.
type commitPageData struct {
	commitPage // its fields are the page's (.Commit, .Jobs, .Failing …)
	// Previous is the branch's commit before this one in jetci's history.
	Previous string
	Forge    ForgeLinks
	Pull     *Pull // the pull request of a pull/N branch (its number only when no hook told more)
}

func (r *Reporter) forgeOf(repo string) *forge.Repo {
	for i := range r.cfg.Notify.Forges {
		if r.cfg.Notify.Forges[i].Repo == repo {
			return &r.cfg.Notify.Forges[i]
		}
	}
	return nil
}

// links finds a commit's previous commit on its branch, its pull request,
// and their pages on the forge.
func (r *Reporter) links(ctx context.Context, c Commit) (prev string, l ForgeLinks, p *Pull) {
	prev, err := r.view.PreviousCommit(ctx, c.Repo, c.Branch, c.Commit)
	if err != nil {
		r.log.Warn().Err(err).Msg("read model: previous commit")
	}
	p = r.view.PullOf(c.Repo, c.Branch)
	f := r.forgeOf(c.Repo)
	if f != nil {
		l.Commit = f.CommitURL(c.Commit)
		if prev != "" {
			l.Compare = f.CompareURL(prev, c.Commit)
		}
	}
	if p != nil {
		if strings.HasPrefix(p.URL, "https://") || strings.HasPrefix(p.URL, "http://") {
			l.Pull = p.URL
		} else if f != nil {
			l.Pull = f.PullURL(p.Number)
		}
	}
	return prev, l, p
}

func (r *Reporter) commitPage(ctx context.Context, c Commit) commitPageData {
	d := commitPageData{commitPage: newCommitPage(c)}
	d.Previous, d.Forge, d.Pull = r.links(ctx, c)
	return d
}

// commitWithPull is a commit in the API, with its pull request ("pull") when
// its branch is one's, the branch's previous commit and the forge's pages.
type commitWithPull struct {
	pageCommit
	Pull     *Pull       `json:"pull,omitempty"`
	Previous string      `json:"previous,omitempty"`
	Forge    *ForgeLinks `json:"forge_links,omitempty"`
}

func (r *Reporter) withPull(ctx context.Context, c Commit) any {
	out := commitWithPull{pageCommit: c}
	var l ForgeLinks
	out.Previous, l, out.Pull = r.links(ctx, c)
	if l != (ForgeLinks{}) {
		out.Forge = &l
	}
	return out
}
