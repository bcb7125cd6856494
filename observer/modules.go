package observer

import (
	"fmt"
	"sort"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"go.yaml.in/yaml/v3"

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
// Each glob is looked for only in the folders that can hold a match (see
// pathglob.Glob.Exists), and the folders read are shared between the globs,
// so the cost follows the modules, not the tree: 500 "<module>/**" globs
// read only the folders above the modules.
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
	var globs []*pathglob.Glob
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
			globs = append(globs, g)
		}
	}
	c := &events.GlobCheck{Checked: len(globs)}
	if len(globs) > maxGlobs {
		c.Error = fmt.Sprintf("%d module path globs; at most %d are checked", len(globs), maxGlobs)
		return c
	}
	f := &folders{root: tree, trees: map[string]*object.Tree{}, lists: map[string]listing{}}
	for _, g := range globs {
		ok, err := g.Exists(f.list)
		if err != nil {
			c.Error = fmt.Sprintf("look for files matching %q: %v", g, err)
			return c
		}
		if !ok {
			c.Dead = append(c.Dead, g.String())
		}
	}
	sort.Strings(c.Dead)
	if len(c.Dead) > events.MaxDeadGlobs {
		c.DeadAll, c.Dead = len(c.Dead), c.Dead[:events.MaxDeadGlobs]
	}
	return c
}

// folders lists the folders of a tree for pathglob, remembering the ones it
// read: the module globs of one commit share most of their folders.
type folders struct {
	root  *object.Tree
	trees map[string]*object.Tree // nil: no folder there
	lists map[string]listing
}

type listing struct {
	names  []string
	folder []bool
}

func (f *folders) at(dir string) (*object.Tree, error) {
	if dir == "" {
		return f.root, nil
	}
	if t, ok := f.trees[dir]; ok {
		return t, nil
	}
	parent, name := f.root, dir
	if i := strings.LastIndexByte(dir, '/'); i >= 0 {
		var err error
		if parent, err = f.at(dir[:i]); err != nil || parent == nil {
			return nil, err
		}
		name = dir[i+1:]
	}
	var sub *object.Tree
	for i := range parent.Entries {
		if e := &parent.Entries[i]; e.Name == name && e.Mode == filemode.Dir {
			var err error
			if sub, err = parent.Tree(name); err != nil {
				return nil, err
			}
			break
		}
	}
	f.trees[dir] = sub
	return sub, nil
}

func (f *folders) list(dir string) ([]string, []bool, error) {
	if l, ok := f.lists[dir]; ok {
		return l.names, l.folder, nil
	}
	t, err := f.at(dir)
	if err != nil || t == nil {
		return nil, nil, err
	}
	l := listing{names: make([]string, len(t.Entries)), folder: make([]bool, len(t.Entries))}
	for i, e := range t.Entries {
		l.names[i], l.folder[i] = e.Name, e.Mode == filemode.Dir
	}
	f.lists[dir] = l
	return l.names, l.folder, nil
}
