package dispatcher

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/jetci/jetci/events"
)

// Pipeline is a parsed pipeline file: the jobs of a commit, in file order.
type Pipeline struct {
	Path string
	Jobs []Job // the jobs of the whole repository, run on every commit
	// Graph is the modules: section, nil without one (see modules.go).
	Graph *ModuleGraph

	src *parser // for errors found later (globs that match nothing)
}

// Job is one named job of a pipeline.
type Job struct {
	Name      string
	Steps     []string
	Arch      []string // nil: the file's or the dispatcher's default matrix
	Pool      string   // "": the file's or the dispatcher's default pool
	Timeout   time.Duration
	Env       map[string]string
	Artifacts []string
	Reports   []string      // JUnit XML globs, read for test results
	Retry     int           // runs again after a failure (0: never)
	Secrets   []string      // names of runner-side secrets put in the steps' environment
	Limits    events.Limits // zero: the runner's limits
	Image     string        // container image the steps run in ("": the runner's backend decides)
	Network   string        // "none": no network; "": the default
}

// hasJob reports whether the file has a repo-wide job of that name.
func (pl *Pipeline) hasJob(name string) bool {
	for _, j := range pl.Jobs {
		if j.Name == name {
			return true
		}
	}
	return false
}

// PipelineError is a problem in a pipeline file, with the line it is on.
type PipelineError struct {
	Path   string
	Line   int    // 1-based; 0 when the problem is the file as a whole
	Text   string // the line as written, made safe to print and cut at 160 bytes
	Reason string
}

func (e *PipelineError) Error() string {
	if e.Line <= 0 {
		return fmt.Sprintf("%s: %s", e.Path, e.Reason)
	}
	s := fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Reason)
	if t := strings.TrimRight(e.Text, " \t\r"); t != "" {
		s += fmt.Sprintf("\n%5d | %s", e.Line, t)
	}
	return s
}

// MaxTimeout bounds a job's timeout.
const MaxTimeout = 24 * time.Hour

var jobNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// parser carries the file for error messages.
type parser struct {
	path  string
	lines []string
}

func (p *parser) errAt(line int, format string, args ...any) *PipelineError {
	e := &PipelineError{Path: p.path, Line: line, Reason: fmt.Sprintf(format, args...)}
	if line >= 1 && line <= len(p.lines) {
		e.Text = quote(p.lines[line-1])
	}
	return e
}

func (p *parser) errNode(n *yaml.Node, format string, args ...any) *PipelineError {
	return p.errAt(n.Line, format, args...)
}

// ParsePipeline parses a pipeline file. Every error is a *PipelineError that
// quotes the offending line.
func ParsePipeline(path string, data []byte) (*Pipeline, error) {
	p := &parser{path: path, lines: splitLines(data)}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, p.syntaxError(data, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, p.errAt(0, "the file is empty: it needs a jobs: (or modules:) section")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, p.errNode(root, "the file must be a mapping with a jobs: section")
	}
	pl := &Pipeline{Path: path, src: p}
	var defArch []string
	var defPool string
	defRetry := -1 // not given
	var jobs, modules, moduleJobs *yaml.Node
	if err := p.fields(root, "the top level", func(key string, k, v *yaml.Node) error {
		var err error
		switch key {
		case "arch":
			defArch, err = p.names(v, "arch")
		case "pool":
			defPool, err = p.name(v, "pool")
		case "jobs":
			jobs = v
		case "modules":
			modules = v
		case "module_jobs":
			moduleJobs = v
		case "retry":
			defRetry, err = p.retry(v, "the top level")
		default:
			return p.errNode(k, "unknown field %q at the top level (want arch, pool, retry, jobs, modules, module_jobs)", key)
		}
		return err
	}); err != nil {
		return nil, err
	}
	if moduleJobs != nil && modules == nil {
		return nil, p.errNode(moduleJobs, "module_jobs: is the template of the jobs of modules, and there is no modules: section")
	}
	if modules != nil {
		var template []Job
		if moduleJobs != nil {
			if moduleJobs.Kind != yaml.MappingNode || len(moduleJobs.Content) == 0 {
				return nil, p.errNode(moduleJobs, "module_jobs: must map job names to jobs, and name at least one")
			}
			if err := p.fields(moduleJobs, "module_jobs", func(_ string, k, v *yaml.Node) error {
				job, err := p.job(k, v)
				template = append(template, job)
				return err
			}); err != nil {
				return nil, err
			}
		}
		mods, err := p.parseModules(modules, template, defArch, defPool, defRetry)
		if err != nil {
			return nil, err
		}
		if pl.Graph, err = p.graph(mods); err != nil {
			return nil, err
		}
		if jobs == nil {
			return pl, nil
		}
	}
	if jobs == nil {
		return nil, p.errNode(root, "no jobs: section")
	}
	if jobs.Kind != yaml.MappingNode || len(jobs.Content) == 0 {
		return nil, p.errNode(jobs, "jobs: must map job names to jobs, and name at least one")
	}
	err := p.fields(jobs, "jobs", func(_ string, k, v *yaml.Node) error {
		job, err := p.job(k, v)
		if err != nil {
			return err
		}
		if job.Arch == nil {
			job.Arch = defArch
		}
		if job.Pool == "" {
			job.Pool = defPool
		}
		if job.Retry < 0 {
			job.Retry = max(defRetry, 0)
		}
		pl.Jobs = append(pl.Jobs, job)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pl, nil
}

// fields walks a mapping, refusing duplicate and non-string keys.
func (p *parser) fields(n *yaml.Node, where string, f func(key string, k, v *yaml.Node) error) error {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return p.errNode(k, "a key in %s is not a plain name", where)
		}
		if seen[k.Value] {
			return p.errNode(k, "%q is given twice in %s", k.Value, where)
		}
		seen[k.Value] = true
		if err := f(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) job(k, v *yaml.Node) (Job, error) {
	name := k.Value
	if k.Kind != yaml.ScalarNode || !jobNameRE.MatchString(name) {
		return Job{}, p.errNode(k, "invalid job name %q: use letters, digits, '.', '_' and '-' (at most 64)", name)
	}
	if v.Kind != yaml.MappingNode {
		return Job{}, p.errNode(v, "job %q must be a mapping with steps:", name)
	}
	job := Job{Name: name, Retry: -1}
	where := fmt.Sprintf("job %q", name)
	err := p.fields(v, where, func(key string, kn, vn *yaml.Node) error {
		var err error
		switch key {
		case "steps":
			job.Steps, err = p.strings(vn, "steps of "+where)
			if err == nil && len(job.Steps) == 0 {
				err = p.errNode(vn, "job %q has no steps", name)
			}
		case "arch":
			job.Arch, err = p.names(vn, "arch")
		case "pool":
			job.Pool, err = p.name(vn, "pool")
		case "timeout":
			job.Timeout, err = p.duration(vn, where)
		case "env":
			job.Env, err = p.env(vn, where)
		case "artifacts":
			job.Artifacts, err = p.strings(vn, "artifacts of "+where)
		case "reports":
			job.Reports, err = p.strings(vn, "reports of "+where)
		case "retry":
			job.Retry, err = p.retry(vn, where)
		case "secrets":
			job.Secrets, err = p.secrets(vn, where)
		case "limits":
			job.Limits, err = p.limits(vn, where)
		case "image":
			job.Image, err = p.image(vn, where)
		case "network":
			if vn.Kind != yaml.ScalarNode || (vn.Value != "none" && vn.Value != "default") {
				err = p.errNode(vn, "network of %s: want none or default", where)
			} else if vn.Value == "none" {
				job.Network = "none"
			}
		default:
			err = p.errNode(kn, "unknown field %q in job %q (want steps, arch, pool, timeout, env, artifacts, reports, retry, secrets, limits, image, network)", key, name)
		}
		return err
	})
	if err != nil {
		return Job{}, err
	}
	if job.Steps == nil {
		return Job{}, p.errNode(k, "job %q has no steps", name)
	}
	for _, s := range job.Secrets {
		if _, ok := job.Env[s]; ok {
			return Job{}, p.errNode(k, "job %q: %s is both in env and in secrets", name, s)
		}
	}
	return job, nil
}

// strings reads a string or a list of strings; empty entries are refused.
func (p *parser) strings(n *yaml.Node, what string) ([]string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" || strings.TrimSpace(n.Value) == "" {
			return nil, p.errNode(n, "%s: empty", what)
		}
		return []string{n.Value}, nil
	case yaml.SequenceNode:
		out := []string{}
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode || c.Tag == "!!null" {
				return nil, p.errNode(c, "%s: each entry must be a string", what)
			}
			if strings.TrimSpace(c.Value) == "" {
				return nil, p.errNode(c, "%s: an entry is empty", what)
			}
			out = append(out, c.Value)
		}
		return out, nil
	}
	return nil, p.errNode(n, "%s: want a string or a list of strings", what)
}

func (p *parser) names(n *yaml.Node, kind string) ([]string, error) {
	vals, err := p.strings(n, kind)
	if err != nil {
		return nil, err
	}
	if len(vals) == 0 {
		return nil, p.errNode(n, "%s: the list is empty", kind)
	}
	seen := make(map[string]bool, len(vals))
	for i, v := range vals {
		at := n
		if n.Kind == yaml.SequenceNode {
			at = n.Content[i]
		}
		if err := events.ValidName(kind, v); err != nil {
			return nil, p.errNode(at, "%v", err)
		}
		if seen[v] {
			// Both entries would make the same job, with the same job id.
			return nil, p.errNode(at, "%s: %q is listed twice", kind, v)
		}
		seen[v] = true
	}
	return vals, nil
}

func (p *parser) name(n *yaml.Node, kind string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errNode(n, "%s: want a name", kind)
	}
	if err := events.ValidName(kind, n.Value); err != nil {
		return "", p.errNode(n, "%v", err)
	}
	return n.Value, nil
}

// imageRE is an image reference: [registry[:port]/]path[:tag][@digest].
var imageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._:/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`)

// image reads a container image reference (image:).
func (p *parser) image(n *yaml.Node, where string) (string, error) {
	if n.Kind != yaml.ScalarNode || len(n.Value) > 255 || !imageRE.MatchString(n.Value) {
		return "", p.errNode(n, "image of %s: want an image reference like debian:12 or registry.example.com/team/build:1.4", where)
	}
	return n.Value, nil
}

func (p *parser) duration(n *yaml.Node, where string) (time.Duration, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, p.errNode(n, "timeout of %s: want a duration like 10m or 1h30m", where)
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		return 0, p.errNode(n, "timeout of %s: %q is not a duration like 10m or 1h30m", where, n.Value)
	}
	if d <= 0 || d > MaxTimeout {
		return 0, p.errNode(n, "timeout of %s: %s is out of range (more than 0, at most %s)", where, d, MaxTimeout)
	}
	return d, nil
}

// MaxRetry bounds retry: in a pipeline file (the runner's bound too).
const MaxRetry = 3

// retry reads retry: N, how many times a failed job runs again.
func (p *parser) retry(n *yaml.Node, where string) (int, error) {
	v, err := strconv.Atoi(n.Value)
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || err != nil || v < 0 || v > MaxRetry {
		return 0, p.errNode(n, "retry of %s: want a number from 0 to %d", where, MaxRetry)
	}
	return v, nil
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (p *parser) env(n *yaml.Node, where string) (map[string]string, error) {
	if n.Kind != yaml.MappingNode {
		return nil, p.errNode(n, "env of %s: want a mapping of NAME: value", where)
	}
	env := map[string]string{}
	err := p.fields(n, "env of "+where, func(key string, k, v *yaml.Node) error {
		if !envNameRE.MatchString(key) {
			return p.errNode(k, "env of %s: %q is not a valid variable name", where, key)
		}
		if v.Kind != yaml.ScalarNode {
			return p.errNode(v, "env %s of %s: want a string, number or boolean", key, where)
		}
		if v.Tag == "!!null" {
			env[key] = ""
		} else {
			env[key] = v.Value
		}
		return nil
	})
	return env, err
}
