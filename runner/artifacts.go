package runner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
)

// MaxArtifactFiles bounds the files one job may leave.
const MaxArtifactFiles = 1000

// checkPattern refuses artifact patterns that could name files outside the
// workspace.
func checkPattern(p string) error {
	switch {
	case p == "":
		return errors.New("empty pattern")
	case strings.HasPrefix(p, "/") || filepath.IsAbs(p):
		return fmt.Errorf("%q is absolute: artifact patterns are relative to the workspace", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return fmt.Errorf("%q leaves the workspace (..)", p)
		}
		if seg != "**" {
			if _, err := path.Match(seg, ""); err != nil {
				return fmt.Errorf("%q: %w", p, err)
			}
		}
	}
	return nil
}

// matchGlob matches a slash-separated path against a pattern whose segments
// follow path.Match, where a "**" segment matches any number of segments.
func matchGlob(pattern, name string) bool {
	return matchSegs(strings.Split(pattern, "/"), strings.Split(name, "/"))
}

func matchSegs(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchSegs(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

// matches reports whether a file matches a pattern, or lies under a folder
// that does (dist matches dist/app.bin).
func matches(pattern, rel string) bool {
	for p := rel; ; {
		if matchGlob(pattern, p) {
			return true
		}
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			return false
		}
		p = p[:i]
	}
}

// artifactFile is a file to upload: its path in the workspace and on disk.
type artifactFile struct {
	rel, abs string
	size     int64
}

// findArtifacts returns the regular files of ws the patterns match, by path.
// Symlinks are followed only to files inside the workspace; .git is skipped.
// Notes say what was refused or matched nothing.
func findArtifacts(ws string, patterns []string) ([]artifactFile, []string) {
	var notes, good []string
	for _, p := range patterns {
		p = strings.TrimPrefix(path.Clean(strings.ReplaceAll(p, "\\", "/")), "./")
		if err := checkPattern(p); err != nil {
			notes = append(notes, "refused pattern: "+err.Error())
			continue
		}
		good = append(good, p)
	}
	if len(good) == 0 {
		return nil, notes
	}
	root, err := filepath.EvalSymlinks(ws)
	if err != nil {
		return nil, append(notes, "workspace: "+err.Error())
	}
	used := make([]bool, len(good))
	var files []artifactFile
	_ = filepath.WalkDir(root, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, abs)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		hit := false
		for i, p := range good {
			if matches(p, rel) {
				used[i], hit = true, true
			}
		}
		if !hit {
			return nil
		}
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			notes = append(notes, fmt.Sprintf("skipped %s: %v", rel, err))
			return nil
		}
		if real != root && !strings.HasPrefix(real, root+string(filepath.Separator)) {
			notes = append(notes, fmt.Sprintf("skipped %s: it points outside the workspace", rel))
			return nil
		}
		fi, err := os.Stat(real)
		if err != nil || !fi.Mode().IsRegular() {
			notes = append(notes, fmt.Sprintf("skipped %s: not a regular file", rel))
			return nil
		}
		files = append(files, artifactFile{rel: rel, abs: real, size: fi.Size()})
		return nil
	})
	for i, p := range good {
		if !used[i] {
			notes = append(notes, fmt.Sprintf("pattern %q matched no file", p))
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].rel < files[j].rel })
	return files, notes
}

// uploadArtifacts stores the job's artifacts in the artifacts bucket, within
// the runner's limits, and notes in the log what it did.
func (r *Runner) uploadArtifacts(ctx context.Context, job *events.JobQueued, seq, attempt uint64, ws string, out *output) []events.Artifact {
	if len(job.Artifacts) == 0 {
		return nil
	}
	files, notes := findArtifacts(ws, job.Artifacts)
	for _, n := range notes {
		out.Note("[jetci] artifacts: %s", n)
	}
	if len(files) == 0 {
		return nil
	}
	var arts []events.Artifact
	var total int64
	for i, f := range files {
		if len(arts) == MaxArtifactFiles {
			out.Note("[jetci] artifacts: only %d files are kept; %d more left out", MaxArtifactFiles, len(files)-i)
			break
		}
		if total+f.size > r.cfg.ArtifactLimit {
			out.Note("[jetci] artifacts: %s (%d bytes) left out: over the limit of %d bytes per job", f.rel, f.size, r.cfg.ArtifactLimit)
			continue
		}
		name := events.ArtifactObject(job.JobID, seq, attempt, f.rel)
		size, digest, err := r.putArtifact(ctx, name, f.abs, r.cfg.ArtifactLimit-total)
		if err != nil {
			out.Note("[jetci] artifacts: %s not stored: %v", f.rel, err)
			continue
		}
		total += size
		arts = append(arts, events.Artifact{Path: f.rel, Object: name, Size: size, Digest: digest})
	}
	if len(arts) > 0 {
		out.Note("[jetci] artifacts: %d file(s), %d bytes stored", len(arts), total)
	}
	return arts
}

// putArtifact stores a file, reading at most limit bytes of it (a file that
// grew since it was measured is cut there). A try that fails (a leader change)
// is resumed, for up to two minutes. It returns the stored size and digest.
func (r *Runner) putArtifact(ctx context.Context, name, file string, limit int64) (int64, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	wait := 250 * time.Millisecond
	for {
		size, digest, err := putObject(ctx, r.js, events.BucketArtifacts, name, "job artifact", file, limit)
		if err == nil || ctx.Err() != nil {
			return size, digest, err
		}
		select {
		case <-ctx.Done():
			return 0, "", err
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}
