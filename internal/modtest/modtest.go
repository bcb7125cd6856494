// Package modtest generates layered module graphs for tests and benchmarks
// of the pipeline file's modules: section.
package modtest

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
)

// Graph is a generated module graph: module i owns the folder Dir(i) and
// depends only on modules of lower layers.
type Graph struct {
	Names  []string
	Layer  []int
	Deps   [][]int // module -> the modules it depends on
	Shared string  // a file outside every module
}

// Layered makes a graph with sizes[l] modules in layer l; every module of
// layer l > 0 depends on 1 to 3 modules of the layers below, at least one
// of them in layer l-1. The modules of the last layer are leaves.
func Layered(seed int64, sizes ...int) *Graph {
	rng := rand.New(rand.NewSource(seed))
	g := &Graph{Shared: "README.md"}
	var below []int // every module of lower layers
	prev := []int{}
	for l, n := range sizes {
		var this []int
		for range n {
			i := len(g.Names)
			g.Names = append(g.Names, fmt.Sprintf("m%03d-l%d", i, l))
			g.Layer = append(g.Layer, l)
			var deps []int
			if l > 0 {
				deps = append(deps, prev[rng.Intn(len(prev))])
				for range rng.Intn(3) {
					if d := below[rng.Intn(len(below))]; !slices.Contains(deps, d) {
						deps = append(deps, d)
					}
				}
			}
			g.Deps = append(g.Deps, deps)
			this = append(this, i)
		}
		below = append(below, this...)
		prev = this
	}
	return g
}

// Dir is the folder module i owns.
func (g *Graph) Dir(i int) string {
	return fmt.Sprintf("mods/l%d/%s", g.Layer[i], g.Names[i])
}

// File is a file of module i.
func (g *Graph) File(i int, name string) string { return g.Dir(i) + "/" + name }

// Pipeline is a .jetci.yml with the graph as modules:, every module's job
// from the module_jobs template, in archs.
func (g *Graph) Pipeline(archs ...string) string {
	var b strings.Builder
	if len(archs) > 0 {
		fmt.Fprintf(&b, "arch: [%s]\n", strings.Join(archs, ", "))
	}
	b.WriteString("module_jobs:\n  test:\n    steps: \"make -C ${module_dir} test\"\nmodules:\n")
	for i, name := range g.Names {
		fmt.Fprintf(&b, "  %s:\n    paths: [\"%s/**\"]\n", name, g.Dir(i))
		if len(g.Deps[i]) > 0 {
			b.WriteString("    depends:\n")
			for _, d := range g.Deps[i] {
				fmt.Fprintf(&b, "      - %s\n", g.Names[d])
			}
		}
	}
	return b.String()
}

// Files is one file per module and the shared file.
func (g *Graph) Files() map[string]string {
	files := map[string]string{g.Shared: "shared\n"}
	for i := range g.Names {
		files[g.File(i, "src.txt")] = g.Names[i] + "\n"
	}
	return files
}

// Leaves are the modules no module depends on.
func (g *Graph) Leaves() []int {
	used := make([]bool, len(g.Names))
	for _, ds := range g.Deps {
		for _, d := range ds {
			used[d] = true
		}
	}
	var out []int
	for i, u := range used {
		if !u {
			out = append(out, i)
		}
	}
	return out
}

// All is every module.
func (g *Graph) All() []int {
	all := make([]int, len(g.Names))
	for i := range all {
		all[i] = i
	}
	return all
}

// Dependents is the tests' reference for an affected set: the changed
// modules and every module that depends on them, transitively, by a
// breadth-first search over the generator's own edges (not the dispatcher's
// code), sorted by name.
func (g *Graph) Dependents(changed ...int) []string {
	users := make([][]int, len(g.Names))
	for m, deps := range g.Deps {
		for _, d := range deps {
			users[d] = append(users[d], m)
		}
	}
	seen := map[int]bool{}
	var queue []int
	for _, c := range changed {
		if !seen[c] {
			seen[c] = true
			queue = append(queue, c)
		}
	}
	for len(queue) > 0 {
		m := queue[0]
		queue = queue[1:]
		for _, u := range users[m] {
			if !seen[u] {
				seen[u] = true
				queue = append(queue, u)
			}
		}
	}
	out := []string{}
	for m := range seen {
		out = append(out, g.Names[m])
	}
	slices.Sort(out)
	return out
}
