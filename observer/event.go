package observer

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/jetci/jetci/events"
)

// Pipeline file names, in the order they are looked for.
var pipelineFiles = []string{".jetci.yml", ".jetci.yaml"}

const (
	makefileMax = 64 << 10
	probeMax    = 500 // entries listed per folder
)

// event describes one commit with everything the dispatcher needs without a clone.
func (o *Observer) event(w *watched, branch string, h plumbing.Hash) (*events.CommitDetected, error) {
	c, err := w.cache.CommitObject(h)
	if err != nil {
		return nil, err
	}
	tree, err := c.Tree()
	if err != nil {
		return nil, err
	}
	ev := &events.CommitDetected{
		Repo: w.Name, RepoURL: w.URL, Branch: branch, Commit: h.String(),
		Author:     events.Person{Name: c.Author.Name, Email: c.Author.Email},
		Subject:    firstLine(c.Message),
		Time:       c.Author.When.UTC(),
		DetectedAt: time.Now().UTC(),
		Parents:    []string{},
	}
	for _, p := range c.ParentHashes {
		ev.Parents = append(ev.Parents, p.String())
	}
	ev.PipelinePath, ev.Pipeline, ev.PipelineErr = o.pipeline(tree)
	if ev.PipelineErr == "" && ev.Pipeline != "" {
		ev.ModuleGlobs = moduleGlobs(ev.Pipeline, tree)
	}
	ev.Probe = probe(tree)
	ev.Changed, ev.ChangedCut, err = changedPaths(c, tree, o.cfg.ChangedMax)
	if err != nil {
		return nil, fmt.Errorf("changed paths: %w", err)
	}
	return ev, nil
}

// pipeline reads the commit's pipeline file. A file that cannot be carried (too
// large, a symlink, unreadable) is reported in errText for the dispatcher to show,
// never as an error that would hold the branch back.
func (o *Observer) pipeline(tree *object.Tree) (path, content, errText string) {
	for _, name := range pipelineFiles {
		e, err := tree.FindEntry(name)
		if err != nil || e.Mode == filemode.Dir || e.Mode == filemode.Submodule {
			continue
		}
		if e.Mode == filemode.Symlink {
			return name, "", fmt.Sprintf("%s is a symbolic link; jetci reads a regular file only", name)
		}
		f, err := tree.TreeEntryFile(e)
		if err != nil {
			return name, "", fmt.Sprintf("read %s: %v", name, err)
		}
		if f.Size > int64(o.cfg.PipelineMax) {
			return name, "", fmt.Sprintf("%s is %d bytes; the limit is %d", name, f.Size, o.cfg.PipelineMax)
		}
		text, err := f.Contents()
		if err != nil {
			return name, "", fmt.Sprintf("read %s: %v", name, err)
		}
		return name, text, ""
	}
	return "", "", ""
}

// probe lists the root, the tests/ folder and the Makefile, for test detection.
func probe(tree *object.Tree) events.Probe {
	var p events.Probe
	for i, e := range tree.Entries {
		if i == probeMax {
			break
		}
		name := e.Name
		if e.Mode == filemode.Dir {
			name += "/"
		}
		p.Root = append(p.Root, name)
	}
	if sub, err := tree.Tree("tests"); err == nil {
		for i, e := range sub.Entries {
			if i == probeMax {
				break
			}
			name := e.Name
			if e.Mode == filemode.Dir {
				name += "/"
			}
			p.Tests = append(p.Tests, name)
		}
	}
	if f, err := tree.File("Makefile"); err == nil {
		if r, err := f.Reader(); err == nil {
			b, _ := io.ReadAll(io.LimitReader(r, makefileMax))
			r.Close()
			p.Makefile = string(b)
		}
	}
	return p
}

// changedPaths lists the paths changed against the first parent (every file for
// a root commit), at most max.
func changedPaths(c *object.Commit, tree *object.Tree, max int) ([]string, bool, error) {
	out := []string{}
	if c.NumParents() == 0 {
		err := tree.Files().ForEach(func(f *object.File) error {
			if len(out) == max {
				return errCut
			}
			out = append(out, f.Name)
			return nil
		})
		if errors.Is(err, errCut) {
			return out, true, nil
		}
		return out, false, err
	}
	parent, err := c.Parent(0)
	if err != nil {
		return nil, false, err
	}
	ptree, err := parent.Tree()
	if err != nil {
		return nil, false, err
	}
	changes, err := object.DiffTree(ptree, tree)
	if err != nil {
		return nil, false, err
	}
	for _, ch := range changes {
		for _, name := range []string{ch.From.Name, ch.To.Name} {
			if name == "" || (len(out) > 0 && out[len(out)-1] == name) {
				continue
			}
			if len(out) == max {
				return out, true, nil
			}
			out = append(out, name)
		}
	}
	return out, false, nil
}

var errCut = errors.New("cut")
