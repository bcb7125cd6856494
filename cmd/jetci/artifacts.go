package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
)

const artifactsUsage = `
Usage: jetci artifacts --nats URL --job ID [--attempt N] [--out DIR]

Downloads the files a job left (the artifacts its pipeline file names) into DIR,
keeping their paths, and prints each with its size. The job id is on the job's
page and in 'jetci results --json'. By default the newest attempt that left any
files; --attempt N picks another.
`

func (m *Main) artifacts(ctx context.Context, args []string) error {
	fs := m.flagSet("artifacts", artifactsUsage)
	nf := connFlags(fs, events.RoleAdmin)
	id := fs.String("job", "", "job id (20 hex digits)")
	attempt := fs.Uint64("attempt", 0, "attempt whose files to fetch (default: the newest that has any)")
	out := fs.String("out", ".", "directory to write the files into")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" {
		fs.Usage()
		return errors.New("--job is required")
	}
	nc, js, err := m.connect(ctx, nf, "jetci-artifacts", false, zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	rec, err := reporter.FindRecord(ctx, js, strings.ToLower(*id))
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
	fmt.Fprintf(m.Stderr, "%d file(s) of job %s attempt %d\n", len(arts), rec.JobID, n)
	return nil
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
