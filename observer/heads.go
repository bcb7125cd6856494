package observer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
)

// headEntry is the value of a jetci-heads entry.
type headEntry struct {
	Repo      string    `json:"repo"`
	Branch    string    `json:"branch"`
	Commit    string    `json:"commit"`
	UpdatedAt time.Time `json:"updated_at"`
}

func (o *Observer) loadHeads(ctx context.Context, repo string) (map[string]string, error) {
	w, err := o.headsKV().Watch(ctx, events.Token(repo)+".*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("load heads: %w", err)
	}
	defer w.Stop()
	heads := map[string]string{}
	for e := range w.Updates() {
		if e == nil {
			return heads, nil
		}
		var h headEntry
		if err := json.Unmarshal(e.Value(), &h); err == nil && h.Repo == repo && h.Branch != "" {
			heads[h.Branch] = h.Commit
		}
	}
	return nil, errors.New("load heads: watcher closed")
}

// openHeads opens the heads bucket once, retrying while the server is not ready.
func (o *Observer) openHeads(ctx context.Context) error {
	o.headsMu.Lock()
	defer o.headsMu.Unlock()
	if o.heads != nil {
		return nil
	}
	return events.Retry(ctx, o.log, "open heads bucket", 5*time.Second, func(ctx context.Context) error {
		kv, err := o.js.KeyValue(ctx, events.BucketHeads)
		if err == nil {
			o.heads = kv
		}
		return err
	})
}

// headsKV returns the bucket openHeads opened.
func (o *Observer) headsKV() jetstream.KeyValue {
	o.headsMu.Lock()
	defer o.headsMu.Unlock()
	return o.heads
}
