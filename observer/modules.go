package observer

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"gopkg.in/yaml.v3"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/pathglob"
)

// maxGlobs bounds the module path globs checked per commit.
const maxGlobs = 20000

// moduleGlobs finds the module path globs of a pipeline file that match no
// file of the commit's tree, for the dispatcher to report (it has the
// pipeline, not the tree). It returns nil when the file has no modules or
// does not parse (the dispatcher reports that).
//
// Each glob is looked for only under its leading literal folders ("core" for
// "core/**"), and the walk of a folder stops when every glob under it has
// matched a file, so the cost follows the modules, not the tree: a glob that
// names an existing folder costs one tree lookup.
func moduleGlobs(text string, tree *object.Tree) *events.GlobCheck {
	var doc struct {
		Modules map[string]struct {
			Paths yaml.Node `yaml:"paths"`
		} `yaml:"modules"`
	}
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil || len(doc.Modules) == 0 {
		return nil
	}
	seen := map[string]bool{}
	byPrefix := map[string][]*pathglob.Glob{}
	for _, m := range doc.Modules {
		nodes := []*yaml.Node{&m.Paths}
		if m.Paths.Kind == yaml.SequenceNode {
			nodes = m.Paths.Content
		}
		for _, n := range nodes {
			if n.Kind != yaml.ScalarNode || seen[n.Value] {
				continue
			}
			g, err := pathglob.Compile(n.Value)
			if err != nil {
				continue // the dispatcher quotes it
			}
			seen[n.Value] = true
			byPrefix[g.Prefix()] = append(byPrefix[g.Prefix()], g)
		}
	}
	c := &events.GlobCheck{Checked: len(seen)}
	if len(seen) > maxGlobs {
		c.Error = fmt.Sprintf("%d module path globs; at most %d are checked", len(seen), maxGlobs)
		return c
	}
	for prefix, globs := range byPrefix {
		left, err := unmatched(tree, prefix, globs)
		if err != nil {
			c.Error = fmt.Sprintf("look for files under %q: %v", prefix, err)
			return c
		}
		for _, g := range left {
			c.Dead = append(c.Dead, g.String())
		}
	}
	sort.Strings(c.Dead)
	return c
}

// unmatched returns the globs (all with leading folders prefix) that match no
// file of tree.
func unmatched(tree *object.Tree, prefix string, globs []*pathglob.Glob) ([]*pathglob.Glob, error) {
	sub := tree
	if prefix != "" {
		e, err := tree.FindEntry(prefix)
		if errors.Is(err, object.ErrEntryNotFound) || errors.Is(err, object.ErrDirectoryNotFound) {
			return globs, nil
		}
		if err != nil {
			return nil, err
		}
		if e.Mode != filemode.Dir {
			// A file (or a submodule): the globs that name it match.
			return keep(globs, func(g *pathglob.Glob) bool { return !g.Match(prefix) }), nil
		}
		if sub, err = tree.Tree(prefix); err != nil {
			return nil, err
		}
		// The common case: "core/**" or "core" matches any file under core,
		// and a folder in git holds a file.
		globs = keep(globs, func(g *pathglob.Glob) bool { return !g.Folder() })
		if len(globs) == 0 {
			return nil, nil
		}
	}
	w := object.NewTreeWalker(sub, true, nil)
	defer w.Close()
	for len(globs) > 0 {
		name, e, err := w.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if e.Mode == filemode.Dir {
			continue
		}
		if prefix != "" {
			name = prefix + "/" + name
		}
		globs = keep(globs, func(g *pathglob.Glob) bool { return !g.Match(name) })
	}
	return globs, nil
}

func keep(globs []*pathglob.Glob, f func(*pathglob.Glob) bool) []*pathglob.Glob {
	out := globs[:0]
	for _, g := range globs {
		if f(g) {
			out = append(out, g)
		}
	}
	return out
}
