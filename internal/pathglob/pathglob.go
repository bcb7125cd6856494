// Package pathglob matches repository paths against the path globs of the
// pipeline file's modules. The dispatcher uses it to find the modules a
// commit changed, the observer to find globs that match no file of a commit.
//
// A glob is a slash-separated path relative to the repository root whose
// segments follow path.Match ("*", "?", "[a-z]"); a "**" segment matches any
// number of segments (none included). A glob also matches everything under a
// folder it matches: "core" and "core/**" both match "core/a/b.go".
//
// Globs are compiled once. A Set indexes many globs by their literal leading
// folders, so a path is tried only against the globs that can match it.
package pathglob

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Glob is one compiled glob.
type Glob struct {
	text string
	segs []seg // ends with "**": a glob matches what is under what it matches
}

type segKind uint8

const (
	literal segKind = iota
	wild            // path.Match syntax
	deep            // "**"
)

type seg struct {
	kind segKind
	text string
}

// maxDeep bounds the "**" segments of a glob, which each multiply the cost
// of a match by the depth of the path.
const maxDeep = 4

// Compile checks and compiles a glob. Absolute globs, empty segments, "." and
// ".." are refused, as are segments path.Match cannot parse.
func Compile(text string) (*Glob, error) {
	t := strings.TrimSuffix(text, "/")
	switch {
	case strings.TrimSpace(t) == "":
		return nil, errors.New("empty path glob")
	case strings.HasPrefix(t, "/"):
		return nil, fmt.Errorf("path glob %q is absolute: write it relative to the repository root", text)
	case strings.Contains(t, "\\"):
		return nil, fmt.Errorf("path glob %q has a backslash: separate folders with /", text)
	}
	g := &Glob{text: text}
	for _, s := range strings.Split(t, "/") {
		switch {
		case s == "":
			return nil, fmt.Errorf("path glob %q has an empty segment (//)", text)
		case s == "." || s == "..":
			return nil, fmt.Errorf("path glob %q has a %q segment: write it from the repository root", text, s)
		case s == "**":
			if n := len(g.segs); n > 0 && g.segs[n-1].kind == deep {
				continue // a/**/** is a/**
			}
			g.segs = append(g.segs, seg{kind: deep})
		case strings.Contains(s, "**"):
			return nil, fmt.Errorf("path glob %q: ** must be a whole segment", text)
		case strings.ContainsAny(s, "*?["):
			if _, err := path.Match(s, ""); err != nil {
				return nil, fmt.Errorf("path glob %q: segment %q: %w", text, s, err)
			}
			g.segs = append(g.segs, seg{kind: wild, text: s})
		default:
			g.segs = append(g.segs, seg{kind: literal, text: s})
		}
	}
	deeps := 0
	for _, sg := range g.segs {
		if sg.kind == deep {
			deeps++
		}
	}
	if deeps > maxDeep {
		return nil, fmt.Errorf("path glob %q has %d ** segments; at most %d", text, deeps, maxDeep)
	}
	if g.segs[len(g.segs)-1].kind != deep {
		g.segs = append(g.segs, seg{kind: deep})
	}
	return g, nil
}

// String returns the glob as written.
func (g *Glob) String() string { return g.text }

// Prefix returns the glob's leading literal folders ("apps/app" for
// "apps/app/**", "" for "**/*.proto"): every path it matches is under it.
func (g *Glob) Prefix() string {
	var b strings.Builder
	for _, s := range g.segs {
		if s.kind != literal {
			break
		}
		if b.Len() > 0 {
			b.WriteByte('/')
		}
		b.WriteString(s.text)
	}
	return b.String()
}

// Folder reports whether the glob is literal folders only ("core",
// "core/**"): it matches every path under Prefix.
func (g *Glob) Folder() bool { return g.literals() == len(g.segs)-1 }

func (g *Glob) literals() int {
	n := 0
	for n < len(g.segs) && g.segs[n].kind == literal {
		n++
	}
	return n
}

// Match reports whether a slash-separated path (a file, or a folder) matches.
func (g *Glob) Match(p string) bool { return matchFrom(g.segs, p) }

// matchFrom matches segs against the rest of a path, without allocating.
func matchFrom(segs []seg, p string) bool {
	for len(segs) > 0 {
		s := segs[0]
		if s.kind == deep {
			rest := segs[1:]
			if len(rest) == 0 {
				return true
			}
			for {
				if matchFrom(rest, p) {
					return true
				}
				i := strings.IndexByte(p, '/')
				if i < 0 {
					return false
				}
				p = p[i+1:]
			}
		}
		if p == "" {
			return false
		}
		name, tail := p, ""
		if i := strings.IndexByte(p, '/'); i >= 0 {
			name, tail = p[:i], p[i+1:]
		}
		if s.kind == literal {
			if name != s.text {
				return false
			}
		} else if ok, _ := path.Match(s.text, name); !ok {
			return false
		}
		segs, p = segs[1:], tail
	}
	return p == ""
}

// Set indexes globs, each with an owner (a module's index), for fast lookup.
type Set struct {
	root node
	n    int
}

type node struct {
	next  map[string]*node
	globs []entry // globs whose literal folders end here
}

type entry struct {
	g     *Glob
	rest  []seg // the segments after the literal ones
	owner int
}

// Add indexes g for owner.
func (s *Set) Add(g *Glob, owner int) {
	n := &s.root
	lit := g.literals()
	for _, sg := range g.segs[:lit] {
		if n.next == nil {
			n.next = map[string]*node{}
		}
		c := n.next[sg.text]
		if c == nil {
			c = &node{}
			n.next[sg.text] = c
		}
		n = c
	}
	n.globs = append(n.globs, entry{g: g, rest: g.segs[lit:], owner: owner})
	s.n++
}

// Len is the number of globs in the set.
func (s *Set) Len() int { return s.n }

// Owners calls f with the owner of every glob that matches p; skip, when not
// nil, says which owners need not be tried (already found). It reports
// whether any glob matched, skipped ones included.
func (s *Set) Owners(p string, skip func(owner int) bool, f func(owner int)) bool {
	matched := false
	n := &s.root
	rest := p
	for {
		for i := range n.globs {
			e := &n.globs[i]
			if skip != nil && skip(e.owner) {
				// Known already; it matches if its remainder would, but the
				// caller only needs to know that something owns p.
				if !matched && matchFrom(e.rest, rest) {
					matched = true
				}
				continue
			}
			if matchFrom(e.rest, rest) {
				matched = true
				f(e.owner)
			}
		}
		if n.next == nil || rest == "" {
			return matched
		}
		name, tail := rest, ""
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			name, tail = rest[:i], rest[i+1:]
		}
		c := n.next[name]
		if c == nil {
			return matched
		}
		n, rest = c, tail
	}
}

// Lister lists the folder dir of a tree ("" is the root): the names of its
// entries and which of them are folders. A folder that does not exist lists
// as empty. A folder that exists holds at least one file (as in git).
type Lister func(dir string) (names []string, folder []bool, err error)

// Exists reports whether some file of the tree list lists matches g. Only
// folders that can hold a match are listed: "core/**" lists the root alone,
// "mods/*/m1/*.go" the folders mods, mods/* and the m1 folders in them.
func (g *Glob) Exists(list Lister) (bool, error) {
	seen := map[string]bool{}
	var find func(dir string, segs []seg) (bool, error)
	// find reports whether a file under dir matches segs.
	find = func(dir string, segs []seg) (bool, error) {
		key := fmt.Sprintf("%d\x00%s", len(segs), dir)
		if seen[key] {
			return false, nil
		}
		seen[key] = true
		names, folder, err := list(dir)
		if err != nil || len(names) == 0 {
			return false, err
		}
		s := segs[0]
		if s.kind == deep {
			if len(segs) == 1 {
				return true, nil // anything under an existing folder
			}
			if ok, err := find(dir, segs[1:]); ok || err != nil {
				return ok, err
			}
			for i, n := range names {
				if folder[i] {
					if ok, err := find(join(dir, n), segs); ok || err != nil {
						return ok, err
					}
				}
			}
			return false, nil
		}
		for i, n := range names {
			if s.kind == literal && n != s.text {
				continue
			}
			if s.kind == wild {
				if ok, _ := path.Match(s.text, n); !ok {
					continue
				}
			}
			rest := segs[1:]
			if len(rest) == 1 && rest[0].kind == deep {
				return true, nil // this file, or this (non-empty) folder
			}
			if folder[i] {
				if ok, err := find(join(dir, n), rest); ok || err != nil {
					return ok, err
				}
			}
		}
		return false, nil
	}
	return find("", g.segs)
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
