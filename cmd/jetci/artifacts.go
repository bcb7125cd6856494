package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

const artifactsUsage = `
Usage: jetci artifacts --nats URL --job ID [--attempt N] [--out DIR]
       jetci artifacts --nats URL --latest --repo R --branch B [--module M] --job NAME --arch A [--out DIR]

Downloads the files a job left (the artifacts its pipeline file names) into DIR,
keeping their paths, and prints each with its size. The job id is on the job's
page and in 'jetci results --json'. By default the newest attempt that left any
files; --attempt N picks another.

With --latest, --job is a job's name (a module's job: --module M --job test, or
--job M/test) and the files are those of the newest passing run of it on that
repo, branch and arch that left any: the latest good build. The reporter serves
the same files at a stable URL, /artifacts/latest/REPO/BRANCH/JOB/ARCH/PATH.
`

func (m *Main) artifacts(ctx context.Context, args []string) error {
	fs := m.flagSet("artifacts", artifactsUsage)
	nf := connFlags(fs, events.RoleAdmin)
	id := fs.String("job", "", "job id (20 hex digits)")
	attempt := fs.Uint64("attempt", 0, "attempt whose files to fetch (default: the newest that has any)")
	out := fs.String("out", ".", "directory to write the files into")
	latest := fs.Bool("latest", false, "the newest passing run of --repo, --branch, --job (a name) and --arch that left files")
	repo := fs.String("repo", "", "with --latest: the repository")
	branch := fs.String("branch", "", "with --latest: the branch")
	module := fs.String("module", "", "with --latest: the pipeline module of the job")
	arch := fs.String("arch", "", "with --latest: the architecture")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" {
		fs.Usage()
		return errors.New("--job is required")
	}
	if *latest {
		if *repo == "" || *branch == "" || *arch == "" {
			fs.Usage()
			return errors.New("--latest needs --repo, --branch, --job and --arch")
		}
		if *attempt != 0 {
			return errors.New("--latest picks the attempt itself: leave out --attempt")
		}
		if *module == "" {
			if i := strings.LastIndexByte(*id, '/'); i >= 0 {
				*module, *id = (*id)[:i], (*id)[i+1:]
			}
		}
	} else if *repo != "" || *branch != "" || *arch != "" || *module != "" {
		return errors.New("--repo, --branch, --module and --arch go with --latest; without it --job is a job id")
	}
	nc, js, err := m.connect(ctx, nf, "jetci-artifacts", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var rec *reporter.Record
	if *latest {
		rec, *attempt, err = latestPassing(ctx, m, nc.Conn, reporter.ResultsQuery{Repo: *repo, Branch: *branch, Module: *module, Job: *id, Arch: *arch,
			Status: []events.Status{events.StatusPassed}})
	} else {
		rec, err = reporter.FindRecord(ctx, js, strings.ToLower(*id))
	}
	if err != nil {
		return err
	}
	var arts []events.Artifact
	var n uint64
	for i := len(rec.Attempts) - 1; i >= 0; i-- {
		a := rec.Attempts[i]
		if *attempt == 0 && len(a.Artifacts) > 0 || *attempt != 0 && a.N == *attempt {
			arts, n = a.Artifacts, a.N
			break
		}
	}
	switch {
	case *attempt != 0 && n == 0:
		return fmt.Errorf("job %s has no attempt %d (it has %d)", rec.JobID, *attempt, len(rec.Attempts))
	case len(arts) == 0 && *attempt != 0:
		return fmt.Errorf("attempt %d of job %s left no artifacts", *attempt, rec.JobID)
	case len(arts) == 0:
		return fmt.Errorf("job %s (%s %s %s on %s) left no artifacts", rec.JobID, rec.Repo, events.Short(rec.Commit), rec.Job, rec.Arch)
	}
	store, err := js.ObjectStore(ctx, events.BucketArtifacts)
	if err != nil {
		return fmt.Errorf("open %s: %w", events.BucketArtifacts, err)
	}
	for _, a := range arts {
		dst, err := safeJoin(*out, a.Path)
		if err != nil {
			return err
		}
		size, err := download(ctx, store, a.Object, dst)
		if err != nil {
			return fmt.Errorf("%s: %w", a.Path, err)
		}
		fmt.Fprintf(m.Stdout, "%s\t%d\n", dst, size)
	}
	fmt.Fprintf(m.Stderr, "%d file(s) of job %s attempt %d (%s %s %s %s on %s)\n", len(arts), rec.JobID, n,
		rec.Repo, rec.Branch, events.Short(rec.Commit), rec.Name(), rec.Arch)
	return nil
}

// latestPassing finds the newest record q selects whose current attempt
// passed and left artifacts, asking the reporter page by page from the
// newest (or reading the jetci-results bucket when no reporter answers).
func latestPassing(ctx context.Context, m *Main, nc *nats.Conn, q reporter.ResultsQuery) (*reporter.Record, uint64, error) {
	pick := func(recs []reporter.Record) (*reporter.Record, uint64) {
		for i := len(recs) - 1; i >= 0; i-- {
			r := &recs[i]
			if a := r.Find(r.Attempt); a != nil && a.Status == events.StatusPassed && len(a.Artifacts) > 0 {
				return r, a.N
			}
		}
		return nil, 0
	}
	name := q.Job
	if q.Module != "" {
		name = q.Module + "/" + q.Job
	}
	seen := 0
	q.Before, q.Limit = "end", 20
	for seen < 1000 {
		page, err := askResults(ctx, nc, q)
		if errors.Is(err, errNoReporter) {
			fmt.Fprintln(m.Stderr, "jetci artifacts: no reporter answers; reading the jetci-results bucket instead")
			recs, err := resultsFromBucket(ctx, nc, q, 0)
			if err != nil {
				return nil, 0, err
			}
			slices.SortStableFunc(recs, func(a, b reporter.Record) int { return a.FirstQueuedAt.Compare(b.FirstQueuedAt) })
			if r, n := pick(recs); r != nil {
				return r, n, nil
			}
			break
		}
		if err != nil {
			return nil, 0, err
		}
		if r, n := pick(page.Results); r != nil {
			return r, n, nil
		}
		seen += len(page.Results)
		if page.Prev == "" || len(page.Results) == 0 {
			break
		}
		q.Before = page.Prev
	}
	return nil, 0, fmt.Errorf("no passing run of %s on %s of %s %s left artifacts", name, q.Arch, q.Repo, q.Branch)
}

// safeJoin places a slash-separated artifact path under dir, refusing any path
// that would leave it.
func safeJoin(dir, p string) (string, error) {
	clean := path.Clean("/" + p)[1:]
	if p == "" || path.IsAbs(p) || clean != p || strings.HasPrefix(clean, "../") || clean == ".." {
		return "", fmt.Errorf("refusing artifact path %q: it would leave %s", p, dir)
	}
	return filepath.Join(dir, filepath.FromSlash(clean)), nil
}

func download(ctx context.Context, store jetstream.ObjectStore, name, dst string) (int64, error) {
	obj, err := store.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, errors.New("it is gone (expired by the artifact retention)")
	}
	if err != nil {
		return 0, err
	}
	defer obj.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	tmp := dst + ".part"
	f, err := os.Create(tmp)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, obj)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return n, os.Rename(tmp, dst)
}
