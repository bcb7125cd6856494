package reporter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter/readmodel"
)

// This file is the seed's file server: the artifacts of the latest passing
// job of a repo, branch, job (a module's as module/job) and arch, at a URL
// that stays the same from commit to commit:
//
//	GET /artifacts/latest/REPO/BRANCH/JOB/ARCH/          the files (JSON), and which job left them
//	GET /artifacts/latest/REPO/BRANCH/JOB/ARCH/PATH      one file
//
// A slash inside BRANCH or JOB is written %2F (feature%2Fx, m1%2Ftest).

// latestScan bounds the passing records looked at, newest first, for one
// that left artifacts.
const latestScan = 200

// LatestPassing returns the newest passed record of repo, branch, job (its
// qualified name: module/job for a module's) and arch whose attempt left
// artifacts, with that attempt.
func (v *View) LatestPassing(ctx context.Context, repo, branch, job, arch string) (Record, *Attempt, error) {
	module, name := "", job
	if i := strings.LastIndexByte(job, '/'); i >= 0 {
		module, name = job[:i], job[i+1:]
	}
	f := Filter{Repo: repo, Branch: branch, Module: module, Job: name, Arch: arch, Status: []events.Status{events.StatusPassed}}
	p := readmodel.Page{Limit: 20, Before: readmodel.End}
	seen := 0
	for seen < latestScan {
		recs, pg, err := v.Results(ctx, f, p, 0)
		if err != nil {
			return Record{}, nil, err
		}
		for i := len(recs) - 1; i >= 0; i-- {
			rec := recs[i]
			if a := rec.Find(rec.Attempt); a != nil && a.Status == events.StatusPassed && len(a.Artifacts) > 0 {
				return rec, a, nil
			}
		}
		seen += len(recs)
		if pg.Prev == (readmodel.Cursor{}) || len(recs) == 0 {
			break
		}
		p.Before = pg.Prev
	}
	if seen == 0 {
		return Record{}, nil, fmt.Errorf("%w: no passing %s on %s of %s %s", ErrNoJob, job, arch, repo, branch)
	}
	return Record{}, nil, fmt.Errorf("%w: none of the latest %d passing %s on %s of %s %s left artifacts", ErrNoJob, seen, job, arch, repo, branch)
}

func (r *Reporter) latestArtifact(w http.ResponseWriter, req *http.Request) {
	repo, branch, job, arch, file := req.PathValue("repo"), req.PathValue("branch"), req.PathValue("job"), req.PathValue("arch"), req.PathValue("file")
	rec, a, err := r.view.LatestPassing(req.Context(), repo, branch, job, arch)
	if errors.Is(err, ErrNoJob) {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	if err != nil {
		r.dbError(w, err)
		return
	}
	w.Header().Set("X-Jetci-Job", rec.JobID)
	w.Header().Set("X-Jetci-Commit", rec.Commit)
	w.Header().Set("X-Jetci-Attempt", fmt.Sprint(a.N))
	if file == "" {
		writeJSON(w, http.StatusOK, map[string]any{"repo": rec.Repo, "branch": rec.Branch, "job": rec.Name(), "arch": rec.Arch,
			"commit": rec.Commit, "job_id": rec.JobID, "attempt": a.N, "finished_at": a.FinishedAt, "artifacts": a.Artifacts})
		return
	}
	r.serveArtifact(w, req, rec, a, file)
}
