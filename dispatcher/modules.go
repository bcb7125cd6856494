package dispatcher

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/internal/pathglob"
)

// This file is the pipeline's module graph: the modules: and module_jobs:
// sections, and which modules a commit must check.

// Module is one module of a pipeline: the paths it owns, the modules it
// depends on, and its jobs (its own, or the module_jobs template's).
type Module struct {
	Name    string
	Paths   []string
	Depends []string
	Dir     string // ${module_dir}: dir:, or the leading folders of the first glob
	Jobs    []Job

	line      int        // of its name
	dependsAt []int      // the line of each of Depends
	globs     []globLine // Paths, compiled
}

type globLine struct {
	glob *pathglob.Glob
	line int
}

// ModuleGraph is a pipeline's modules, compiled to answer which modules a set
// of changed paths affects.
type ModuleGraph struct {
	modules []Module
	index   map[string]int
	rdeps   [][]int // module -> the modules that depend on it directly
	globs   pathglob.Set
}

// maxModules bounds the modules of one pipeline file.
const maxModules = 5000

// moduleVars are the names a module job's steps, env values and artifacts
// may use.
const (
	varModule    = "${module}"
	varModuleDir = "${module_dir}"
)

// parseModules reads the modules: mapping; template is module_jobs (nil: none).
func (p *parser) parseModules(n *yaml.Node, template []Job, defArch []string, defPool string, defRetry int) ([]Module, error) {
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		return nil, p.errNode(n, "modules: must map module names to modules, and name at least one")
	}
	if len(n.Content)/2 > maxModules {
		return nil, p.errNode(n, "modules: %d modules; the limit is %d", len(n.Content)/2, maxModules)
	}
	var mods []Module
	err := p.fields(n, "modules", func(name string, k, v *yaml.Node) error {
		m, err := p.module(k, v, template)
		if err != nil {
			return err
		}
		for i := range m.Jobs {
			if m.Jobs[i].Arch == nil {
				m.Jobs[i].Arch = defArch
			}
			if m.Jobs[i].Pool == "" {
				m.Jobs[i].Pool = defPool
			}
			if m.Jobs[i].Retry < 0 {
				m.Jobs[i].Retry = max(defRetry, 0)
			}
		}
		mods = append(mods, m)
		return nil
	})
	return mods, err
}

func (p *parser) module(k, v *yaml.Node, template []Job) (Module, error) {
	name := k.Value
	if !jobNameRE.MatchString(name) {
		return Module{}, p.errNode(k, "invalid module name %q: use letters, digits, '.', '_' and '-' (at most 64)", name)
	}
	if v.Kind != yaml.MappingNode {
		return Module{}, p.errNode(v, "module %q must be a mapping with paths:", name)
	}
	m := Module{Name: name, line: k.Line}
	where := fmt.Sprintf("module %q", name)
	var jobsNode, dirNode *yaml.Node
	err := p.fields(v, where, func(key string, kn, vn *yaml.Node) error {
		var err error
		switch key {
		case "paths":
			m.Paths, err = p.strings(vn, "paths of "+where)
			for i := 0; err == nil && i < len(m.Paths); i++ {
				at := vn
				if vn.Kind == yaml.SequenceNode {
					at = vn.Content[i]
				}
				g, gerr := pathglob.Compile(m.Paths[i])
				if gerr != nil {
					return p.errNode(at, "%s: %v", where, gerr)
				}
				m.globs = append(m.globs, globLine{g, at.Line})
			}
		case "depends":
			m.Depends, m.dependsAt, err = p.dependsOn(vn, where)
		case "dir":
			dirNode = vn
			if vn.Kind != yaml.ScalarNode || vn.Tag == "!!null" || strings.TrimSpace(vn.Value) == "" {
				return p.errNode(vn, "dir of %s: want a folder", where)
			}
			m.Dir = vn.Value
		case "jobs":
			jobsNode = vn
		default:
			err = p.errNode(kn, "unknown field %q in module %q (want paths, depends, jobs, dir)", key, name)
		}
		return err
	})
	if err != nil {
		return Module{}, err
	}
	if len(m.Paths) == 0 {
		return Module{}, p.errNode(k, "module %q has no paths: give it the globs of the files it owns", name)
	}
	if dirNode != nil {
		if _, err := pathglob.Compile(m.Dir); err != nil || strings.ContainsAny(m.Dir, "*?[") {
			return Module{}, p.errNode(dirNode, "dir of %s: %q is not a folder of the repository", where, m.Dir)
		}
	} else if m.Dir = m.globs[0].glob.Prefix(); m.Dir == "" {
		m.Dir = "."
	}
	jobs := template
	if jobsNode != nil {
		if jobsNode.Kind != yaml.MappingNode || len(jobsNode.Content) == 0 {
			return Module{}, p.errNode(jobsNode, "jobs of %s: must map job names to jobs, and name at least one", where)
		}
		jobs = nil
		err := p.fields(jobsNode, "jobs of "+where, func(_ string, jk, jv *yaml.Node) error {
			job, err := p.job(jk, jv)
			jobs = append(jobs, job)
			return err
		})
		if err != nil {
			return Module{}, err
		}
	}
	if len(jobs) == 0 {
		return Module{}, p.errNode(k, "module %q has no jobs: give it jobs: or write a module_jobs: template", name)
	}
	r := strings.NewReplacer(varModule, m.Name, varModuleDir, m.Dir)
	for _, j := range jobs {
		j.Steps = replaceAll(r, j.Steps)
		j.Artifacts = replaceAll(r, j.Artifacts)
		j.Reports = replaceAll(r, j.Reports)
		if j.Env != nil {
			env := make(map[string]string, len(j.Env))
			for k, v := range j.Env {
				env[k] = r.Replace(v)
			}
			j.Env = env
		}
		m.Jobs = append(m.Jobs, j)
	}
	return m, nil
}

func replaceAll(r *strings.Replacer, in []string) []string {
	if in == nil {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = r.Replace(s)
	}
	return out
}

// dependsOn reads a module's depends: a name or a list of names.
func (p *parser) dependsOn(n *yaml.Node, where string) ([]string, []int, error) {
	if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		return nil, nil, nil // depends: [] is no dependency
	}
	names, err := p.strings(n, "depends of "+where)
	if err != nil {
		return nil, nil, err
	}
	lines := make([]int, len(names))
	for i, d := range names {
		at := n
		if n.Kind == yaml.SequenceNode {
			at = n.Content[i]
		}
		lines[i] = at.Line
		if slices.Contains(names[:i], d) {
			return nil, nil, p.errNode(at, "depends of %s: %q is listed twice", where, d)
		}
	}
	return names, lines, nil
}

// graph checks the dependencies of mods (every one known, no cycle) and
// compiles them.
func (p *parser) graph(mods []Module) (*ModuleGraph, error) {
	g := &ModuleGraph{modules: mods, index: make(map[string]int, len(mods)), rdeps: make([][]int, len(mods))}
	for i := range mods {
		g.index[mods[i].Name] = i
	}
	deps := make([][]int, len(mods))
	for i := range mods {
		m := &mods[i]
		for k, d := range m.Depends {
			j, ok := g.index[d]
			if !ok {
				return nil, p.errAt(m.dependsAt[k], "module %q depends on %q, which is not a module of this file%s", m.Name, d, suggest(d, g.index))
			}
			deps[i] = append(deps[i], j)
			g.rdeps[j] = append(g.rdeps[j], i)
		}
		for _, gl := range m.globs {
			g.globs.Add(gl.glob, i)
		}
	}
	// A depth-first walk in file order finds the first cycle a reader would.
	const (
		unseen = iota
		open
		done
	)
	state := make([]int, len(mods))
	var stack []int
	var cycle []int
	var visit func(i int) bool
	visit = func(i int) bool {
		state[i] = open
		stack = append(stack, i)
		for _, j := range deps[i] {
			switch state[j] {
			case open:
				k := slices.Index(stack, j)
				cycle = append(slices.Clone(stack[k:]), j)
				return false
			case unseen:
				if !visit(j) {
					return false
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
		return true
	}
	for i := range mods {
		if state[i] == unseen && !visit(i) {
			names := make([]string, len(cycle))
			for k, c := range cycle {
				names[k] = mods[c].Name
			}
			from := &mods[cycle[len(cycle)-2]]
			to := mods[cycle[len(cycle)-1]].Name
			return nil, p.errAt(from.dependsAt[slices.Index(from.Depends, to)],
				"modules depend on each other in a cycle: %s", strings.Join(names, " → "))
		}
	}
	return g, nil
}

// suggest names a module spelled like name, if any.
func suggest(name string, index map[string]int) string {
	for _, k := range slices.Sorted(maps.Keys(index)) {
		if strings.EqualFold(k, name) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return ""
}

// Modules returns the graph's modules in file order.
func (g *ModuleGraph) Modules() []Module { return g.modules }

// Affected returns the modules the changed paths touch and every module that
// depends on them, transitively, in file order. If a path belongs to no
// module, it returns that path as shared (the whole graph must be checked)
// and no modules.
func (g *ModuleGraph) Affected(changed []string) (mods []int, shared string) {
	hit := make([]bool, len(g.modules))
	queue := make([]int, 0, 16)
	skip := func(o int) bool { return hit[o] }
	mark := func(o int) {
		hit[o] = true
		queue = append(queue, o)
	}
	for _, p := range changed {
		if !g.globs.Owners(p, skip, mark) {
			return nil, p
		}
	}
	for i := 0; i < len(queue); i++ {
		for _, d := range g.rdeps[queue[i]] {
			if !hit[d] {
				mark(d)
			}
		}
	}
	mods = make([]int, 0, len(queue))
	for i, h := range hit {
		if h {
			mods = append(mods, i)
		}
	}
	return mods, ""
}

// All returns every module, in file order.
func (g *ModuleGraph) All() []int {
	all := make([]int, len(g.modules))
	for i := range all {
		all[i] = i
	}
	return all
}

// checkGlobs turns the observer's report of globs that match no file into
// the error on the first such glob's line.
func (pl *Pipeline) checkGlobs(c *events.GlobCheck) error {
	if pl.Graph == nil || c == nil || len(c.Dead) == 0 {
		return nil
	}
	dead := make(map[string]bool, len(c.Dead))
	for _, d := range c.Dead {
		dead[d] = true
	}
	for _, m := range pl.Graph.modules {
		for _, gl := range m.globs {
			if dead[gl.glob.String()] {
				more := ""
				if n := max(len(c.Dead), c.DeadAll) - 1; n > 0 {
					more = fmt.Sprintf(" (and %d more: %s)", n, strings.Join(firstN(without(c.Dead, gl.glob.String()), 5), ", "))
				}
				return pl.src.errAt(gl.line, "path glob %q of module %q matches no file at this commit%s", gl.glob, m.Name, more)
			}
		}
	}
	return nil
}

func without(list []string, s string) []string {
	out := make([]string, 0, len(list))
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func firstN(list []string, n int) []string {
	if len(list) > n {
		return append(list[:n:n], "…")
	}
	return list
}

// Selection is the modules a commit checks, and why.
type Selection struct {
	Modules []int  // indices into the graph, in file order
	All     bool   // every module
	Why     string // for the log: why every module, or what changed
}

// selectModules decides which modules a commit checks: for a new commit, the
// ones its changed paths touch and their dependents; every module when the
// changed paths cannot be trusted to say (cut, a first commit, a new branch),
// when a path outside every module changed, and for triggered, second and
// periodic checks.
func (pl *Pipeline) selectModules(ev *events.CommitDetected) Selection {
	g := pl.Graph
	all := func(why string) Selection { return Selection{Modules: g.All(), All: true, Why: why} }
	switch {
	case ev.Class != events.ClassFirst:
		return all(fmt.Sprintf("a %s check runs every module", ev.Class))
	case ev.ChangedCut:
		return all("the list of changed paths was cut")
	case len(ev.Parents) == 0:
		return all("the commit has no parent")
	case ev.NewBranch:
		return all("the first commit seen on this branch")
	case len(ev.Changed) == 0:
		return all("no changed paths")
	}
	mods, shared := g.Affected(ev.Changed)
	if shared != "" {
		return all(fmt.Sprintf("%s is outside every module", shared))
	}
	return Selection{Modules: mods, Why: fmt.Sprintf("%d changed paths", len(ev.Changed))}
}
