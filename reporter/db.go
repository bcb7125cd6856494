package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// DBFile is the name of the read model's SQLite file under a data directory.
const DBFile = "reporter.db"

func (r *Reporter) openDB(ctx context.Context) error {
	dsn := r.cfg.DB
	if dsn == "" {
		dir, err := os.MkdirTemp("", "jetci-reporter-*")
		if err != nil {
			return err
		}
		r.dbTemp, dsn = dir, filepath.Join(dir, DBFile)
	}
	db, err := readmodel.Open(ctx, dsn)
	if err != nil {
		if r.dbTemp != "" {
			os.RemoveAll(r.dbTemp)
		}
		return err
	}
	r.db = db
	return nil
}

func (r *Reporter) closeDB() {
	if r.db != nil {
		r.db.Close()
	}
	if r.dbTemp != "" {
		os.RemoveAll(r.dbTemp)
	}
}

// prune deletes finished records older than the retention from the read
// model, once the fold is ready and then every so often, in batches (readmodel.PruneBatch) with a pause
// after each as long as it took: the fold, which writes the same tables,
// waits for one batch at most and gets at least half the time.
func (r *Reporter) prune(ctx context.Context) {
	// First once the fold has caught up with the stream (a restart, a
	// rebuild): then what it folded old goes at once.
	select {
	case <-ctx.Done():
		return
	case <-r.view.Ready():
	}
	t := time.NewTicker(min(r.cfg.HistoryRetention/10+time.Second, time.Hour))
	defer t.Stop()
	for {
		began := time.Now()
		pause := func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(max(time.Since(began), 10*time.Millisecond)):
			}
			began = time.Now()
			return nil
		}
		n, err := r.db.Prune(ctx, time.Now().Add(-r.cfg.HistoryRetention), finalStatuses(), pause)
		if err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Msg("read model: history retention")
		} else if n > 0 {
			r.log.Info().Int64("records", n).Dur("retention", r.cfg.HistoryRetention).Msg("read model: deleted records past the history retention")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reindex empties the read model at dsn and folds the results stream into
// it again, until it holds every event the stream had when it began. Stop
// the reporters that use the database first.
func Reindex(ctx context.Context, js jetstream.JetStream, dsn string, log zerolog.Logger) (FoldStats, error) {
	db, err := readmodel.Open(ctx, dsn)
	if err != nil && !errors.Is(err, readmodel.ErrCorrupt) {
		return FoldStats{}, err
	}
	if err != nil {
		// An unusable SQLite file: start a new one.
		log.Warn().Err(err).Msg("reindex: replacing the database file")
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(dsn + suffix); err != nil && !os.IsNotExist(err) {
				return FoldStats{}, fmt.Errorf("reindex: %w", err)
			}
		}
		if db, err = readmodel.Open(ctx, dsn); err != nil {
			return FoldStats{}, err
		}
	}
	defer db.Close()
	if err := db.Reset(ctx); err != nil {
		return FoldStats{}, fmt.Errorf("reindex %s: %w", db.Where(), err)
	}
	runners, err := js.KeyValue(ctx, events.BucketRunners)
	if err != nil {
		return FoldStats{}, fmt.Errorf("open %s: %w", events.BucketRunners, err)
	}
	v := NewView(db, js, runners, log)
	// The same checks as the live fold: a rebuild applies no event the
	// reporter refused (those were recorded as forgeries when first folded).
	if v.guard, err = newGuard(ctx, js, runners); err != nil {
		return FoldStats{}, err
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); v.fold(fctx) }()
	select {
	case <-v.Ready():
	case <-ctx.Done():
	}
	stop()
	<-done
	if ctx.Err() != nil {
		return v.Stats(), ctx.Err()
	}
	return v.Stats(), nil
}

// ResultsQuery asks the reporter's results service for one page of records
// (`jetci results`): the fields of Filter, and a page.
type ResultsQuery struct {
	Repo   string          `json:"repo,omitempty"`
	Branch string          `json:"branch,omitempty"`
	Commit string          `json:"commit,omitempty"`
	Module string          `json:"module,omitempty"`
	Job    string          `json:"job,omitempty"`
	Arch   string          `json:"arch,omitempty"`
	Status []events.Status `json:"status,omitempty"`
	Author string          `json:"author,omitempty"`
	Text   string          `json:"q,omitempty"`
	Since  time.Time       `json:"since,omitzero"`
	Until  time.Time       `json:"until,omitzero"`
	All    bool            `json:"all,omitempty"`
	Limit  int             `json:"limit,omitempty"`
	After  string          `json:"after,omitempty"`
	Before string          `json:"before,omitempty"`
}

// ResultsPage is the answer to a ResultsQuery.
type ResultsPage struct {
	Results []Record `json:"results"`
	Next    string   `json:"next,omitempty"`
	Prev    string   `json:"prev,omitempty"`
}

// Filter is the query's filter.
func (q ResultsQuery) Filter() Filter {
	return Filter{Repo: q.Repo, Branch: q.Branch, Commit: q.Commit, Module: q.Module, All: q.All, Job: q.Job, Arch: q.Arch,
		Status: q.Status, Author: q.Author, Since: q.Since, Until: q.Until, Text: q.Text}
}

// Page is the query's page.
func (q ResultsQuery) Page() (readmodel.Page, error) {
	p := readmodel.Page{Limit: q.Limit}
	if p.Limit <= 0 {
		p.Limit = DefaultPage
	}
	var err error
	if p.After, err = readmodel.ParseCursor(q.After); err != nil {
		return p, err
	}
	if p.Before, err = readmodel.ParseCursor(q.Before); err != nil {
		return p, err
	}
	if q.After != "" && q.Before != "" {
		return p, errors.New("give after or before, not both")
	}
	return p, nil
}

// queryService answers ResultsQuery requests on events.SubjectQueryResults
// (a NATS micro service, so that `nats micro ls` shows it), from the read
// model: `jetci results` reads an indexed page, not the whole history.
func (r *Reporter) queryService(ctx context.Context) error {
	nc := r.js.Conn()
	if nc == nil {
		return nil
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "jetci-reporter",
		Version:     "1.0.0",
		Description: "the reporter's read model: pages of job records",
	})
	if err != nil {
		return fmt.Errorf("reporter: results service: %w", err)
	}
	err = svc.AddEndpoint("results", micro.HandlerFunc(func(req micro.Request) {
		select {
		case <-r.view.Ready():
		default:
			_ = req.Error("503", errNotReady.Error(), nil)
			return
		}
		var q ResultsQuery
		if err := json.Unmarshal(req.Data(), &q); err != nil {
			_ = req.Error("400", "bad query: "+err.Error(), nil)
			return
		}
		if err := q.validate(); err != nil {
			_ = req.Error("400", err.Error(), nil)
			return
		}
		p, err := q.Page()
		if err != nil {
			_ = req.Error("400", err.Error(), nil)
			return
		}
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// Half the payload a NATS message may have, whatever the records.
		budget := min(MaxPageBytes, int(nc.MaxPayload()/2))
		recs, pg, err := r.view.Results(qctx, q.Filter(), p, budget)
		if err != nil {
			r.log.Warn().Err(err).Msg("results service")
			_ = req.Error("503", err.Error(), nil)
			return
		}
		_ = req.RespondJSON(ResultsPage{Results: nonNil(recs), Next: pg.Next.String(), Prev: pg.Prev.String()})
	}), micro.WithEndpointSubject(events.SubjectQueryResults))
	if err != nil {
		svc.Stop()
		return fmt.Errorf("reporter: results service: %w", err)
	}
	<-ctx.Done()
	return svc.Stop()
}

func (q ResultsQuery) validate() error {
	if q.Commit != "" && strings.Trim(strings.ToLower(q.Commit), "0123456789abcdef") != "" {
		return fmt.Errorf("commit %q is not a sha or a prefix of one", q.Commit)
	}
	if len(q.Text) > 200 || len(q.Author) > 200 {
		return errors.New("search text and author are at most 200 bytes")
	}
	return nil
}

// newGuard is the fold's guard without a reporter (Reindex, benchmarks):
// signatures checked against the keys bucket, claims against the live leases,
// refusals recorded in the read model only.
func newGuard(ctx context.Context, js jetstream.JetStream, runners jetstream.KeyValue) (*guard, error) {
	keys, err := events.OpenKeys(ctx, js)
	if err != nil {
		return nil, err
	}
	return &guard{
		verify: func(m jetstream.Msg, ev any) (string, error) { return verifyResult(keys, m, ev) },
		holds:  leaseHolds(runners),
	}, nil
}
