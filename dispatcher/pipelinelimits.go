package dispatcher

import (
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/jetci/jetci/events"
)

// MaxSecrets bounds the secrets one job may ask for.
const MaxSecrets = 64

// secrets reads a job's secrets: a name or a list of environment variable
// names. Only names: a value in the repository would not be a secret.
func (p *parser) secrets(n *yaml.Node, where string) ([]string, error) {
	if n.Kind == yaml.MappingNode {
		return nil, p.errNode(n, "secrets of %s: list names only (secrets: [DEPLOY_TOKEN]); the values are given to the runner, never in the repository", where)
	}
	names, err := p.strings(n, "secrets of "+where)
	if err != nil {
		return nil, err
	}
	if len(names) > MaxSecrets {
		return nil, p.errNode(n, "secrets of %s: %d names, at most %d", where, len(names), MaxSecrets)
	}
	seen := map[string]bool{}
	for i, s := range names {
		at := n
		if n.Kind == yaml.SequenceNode {
			at = n.Content[i]
		}
		if !envNameRE.MatchString(s) {
			return nil, p.errNode(at, "secrets of %s: %q is not a valid variable name", where, s)
		}
		if strings.HasPrefix(s, "JETCI_") || s == "CI" {
			return nil, p.errNode(at, "secrets of %s: %s is set by jetci itself", where, s)
		}
		if seen[s] {
			return nil, p.errNode(at, "secrets of %s: %s is listed twice", where, s)
		}
		seen[s] = true
	}
	return names, nil
}

// limits reads a job's resource limits: {cpu: 10m, memory: 2GiB, processes: 256}.
func (p *parser) limits(n *yaml.Node, where string) (events.Limits, error) {
	var l events.Limits
	if n.Kind != yaml.MappingNode {
		return l, p.errNode(n, "limits of %s: want a mapping like {cpu: 10m, memory: 2GiB, processes: 256}", where)
	}
	err := p.fields(n, "limits of "+where, func(key string, k, v *yaml.Node) error {
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			return p.errNode(v, "limits of %s: %s wants a value", where, key)
		}
		switch key {
		case "cpu":
			d, err := time.ParseDuration(v.Value)
			if err != nil || d < time.Second || d > MaxTimeout {
				return p.errNode(v, "limits of %s: cpu %q: want CPU time like 90s or 10m (1s to %s)", where, v.Value, MaxTimeout)
			}
			l.CPUMs = d.Milliseconds()
		case "memory":
			b, err := events.ParseSize(v.Value)
			if err != nil || b < 1<<20 {
				return p.errNode(v, "limits of %s: memory %q: want a size like 512MiB or 2GiB (at least 1MiB)", where, v.Value)
			}
			l.MemoryBytes = b
		case "processes":
			c, err := strconv.Atoi(v.Value)
			if err != nil || c < 1 || c > 1<<20 {
				return p.errNode(v, "limits of %s: processes %q: want a count like 256", where, v.Value)
			}
			l.Processes = c
		default:
			return p.errNode(k, "unknown field %q in limits of %s (want cpu, memory, processes)", key, where)
		}
		return nil
	})
	return l, err
}

func limitsOf(l events.Limits) *events.Limits {
	if l.IsZero() {
		return nil
	}
	return &l
}
