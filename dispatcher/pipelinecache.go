package dispatcher

import (
	"crypto/sha256"
	"sync"
)

// pipelineCache keeps the last few parsed pipeline files, so that a burst of
// commits with the same file (a 500-module file takes ~13 ms to parse) parses
// it once. Parsed pipelines are never changed after parsing.
type pipelineCache struct {
	mu    sync.Mutex
	byKey map[[32]byte]cached
	order [][32]byte // oldest first
}

type cached struct {
	pl  *Pipeline
	err error
}

const pipelineCacheSize = 8

func (c *pipelineCache) parse(path, text string) (*Pipeline, error) {
	h := sha256.New()
	h.Write([]byte(path))
	h.Write([]byte{0})
	h.Write([]byte(text))
	var key [32]byte
	h.Sum(key[:0])
	c.mu.Lock()
	if e, ok := c.byKey[key]; ok {
		c.mu.Unlock()
		return e.pl, e.err
	}
	c.mu.Unlock()
	pl, err := ParsePipeline(path, []byte(text))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = map[[32]byte]cached{}
	}
	if _, ok := c.byKey[key]; !ok {
		if len(c.order) == pipelineCacheSize {
			delete(c.byKey, c.order[0])
			c.order = c.order[1:]
		}
		c.byKey[key] = cached{pl, err}
		c.order = append(c.order, key)
	}
	return pl, err
}
