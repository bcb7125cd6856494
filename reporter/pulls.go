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
	st := "open"
	if p.Action == forge.PullClosed {
		st = "closed"
	}
	pl := Pull{Repo: repo, Branch: p.Branch(), Number: p.Number, Title: p.Title, State: st, Head: p.HeadSHA, URL: p.URL,
		Fork: p.Fork, Forge: p.Forge, UpdatedAt: time.Now().UTC()}
	data, _ := json.Marshal(pl)
	if _, err := kv.Put(ctx, pullKey(repo, p.Number), data); err != nil {
		return fmt.Errorf("remember pull request %d: %w", p.Number, err)
	}
	return nil
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
		if json.Unmarshal(e.Value(), &p) == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UpdatedAt.After(out[j].UpdatedAt) })
	return out, nil
}

// pullOf returns the pull request a branch is the head of, if jetci heard of it.
func (r *Reporter) pullOf(ctx context.Context, repo, branch string) *Pull {
	n, ok := events.PullNumber(branch)
	if !ok {
		return nil
	}
	kv, err := r.js.KeyValue(ctx, events.BucketNotify)
	if err != nil {
		return nil
	}
	e, err := kv.Get(ctx, pullKey(repo, n))
	if err != nil {
		return nil
	}
	var p Pull
	if json.Unmarshal(e.Value(), &p) != nil || p.Branch != branch {
		return nil
	}
	return &p
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

// commitPageData is the commit page's data: the commit, and where it is on
// its forge (when the repo's forge and web URL are configured) and which
// pull request it heads.
type commitPageData struct {
	commitPage         // its fields are the page's (.Commit, .Jobs, .Failing …)
	ForgeCommit string // the commit on the forge
	Pull        *Pull  // the pull request of a pull/N branch, if known
	PullURL     string
}

func (r *Reporter) commitPage(ctx context.Context, c Commit) commitPageData {
	d := commitPageData{commitPage: newCommitPage(c)}
	var f *forge.Repo
	for i := range r.cfg.Notify.Forges {
		if r.cfg.Notify.Forges[i].Repo == c.Repo {
			f = &r.cfg.Notify.Forges[i]
		}
	}
	if f != nil {
		d.ForgeCommit = f.CommitURL(c.Commit)
	}
	if n, ok := events.PullNumber(c.Branch); ok {
		d.Pull = r.pullOf(ctx, c.Repo, c.Branch)
		if d.Pull != nil && d.Pull.URL != "" {
			d.PullURL = d.Pull.URL
		} else if f != nil {
			d.PullURL = f.PullURL(n)
		}
	}
	return d
}

// commitWithPull is a commit in the API, with its pull request ("pull") when
// its branch is one's.
type commitWithPull struct {
	pageCommit
	Pull *Pull `json:"pull,omitempty"`
}

func (r *Reporter) withPull(ctx context.Context, c Commit) any {
	p := r.pullOf(ctx, c.Repo, c.Branch)
	if p == nil {
		return c
	}
	return commitWithPull{pageCommit: c, Pull: p}
}
