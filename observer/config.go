package observer

import (
	"github.com/jetci/jetci/metrics"

	"errors"
	"fmt"
	"time"
)

// Config configures an observer.
type Config struct {
	Repos         []Repo
	Poll          time.Duration    // how often each repo is polled
	CacheDir      string           // bare caches, one per repo
	Concurrency   int              // repos polled at once
	MaxNewCommits int              // per branch and poll; beyond it only the newest are published
	PipelineMax   int              // bytes of pipeline file carried in an event
	ChangedMax    int              // changed paths carried in an event
	Metrics       *metrics.Metrics // nil: none
}

// DefaultConfig polls every second.
func DefaultConfig() Config {
	return Config{Poll: time.Second, CacheDir: ".jetci/observer", Concurrency: 8, MaxNewCommits: 1000, PipelineMax: 256 << 10, ChangedMax: 5000}
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	if len(c.Repos) == 0 {
		return errors.New("observer: Repos is empty: watch at least one repository")
	}
	seen := map[string]string{}
	for _, r := range c.Repos {
		if r.Name == "" || r.URL == "" {
			return fmt.Errorf("observer: Repos: %+v needs a name and a URL", r)
		}
		if prev, ok := seen[r.Name]; ok {
			return fmt.Errorf("observer: two repos are named %q (%s and %s): name them with --repo name=PATH_OR_URL", r.Name, prev, r.URL)
		}
		seen[r.Name] = r.URL
	}
	switch {
	case c.Poll <= 0:
		return fmt.Errorf("observer: Poll %s: want more than 0", c.Poll)
	case c.CacheDir == "":
		return errors.New("observer: CacheDir is empty")
	case c.Concurrency < 1:
		return fmt.Errorf("observer: Concurrency %d: want at least 1", c.Concurrency)
	case c.MaxNewCommits < 1:
		return fmt.Errorf("--max-new-commits %d: want at least 1", c.MaxNewCommits)
	case c.PipelineMax < 1 || c.PipelineMax > 512<<10:
		return fmt.Errorf("observer: PipelineMax %d: want 1 to %d bytes", c.PipelineMax, 512<<10)
	case c.ChangedMax < 0:
		return fmt.Errorf("observer: ChangedMax %d: want 0 or more", c.ChangedMax)
	}
	return nil
}
