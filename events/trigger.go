package events

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Errors of RequestTrigger.
var (
	ErrNoObserver = errors.New("no observer watches that repo")
	ErrRefused    = errors.New("trigger refused")
)

// RequestTrigger asks the observers of req.Repo to run a commit (see
// TriggerRequest) and returns their answer. No observer is ErrNoObserver, an
// observer's refusal (no such branch or commit) wraps ErrRefused; ctx bounds
// the wait.
func RequestTrigger(ctx context.Context, nc *nats.Conn, req *TriggerRequest) (*TriggerReply, error) {
	data, err := Encode(req)
	if err != nil {
		return nil, err
	}
	msg, err := nc.RequestWithContext(ctx, TriggerSubject(req.Repo), data)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("%w: no observer watches a repo named %q", ErrNoObserver, req.Repo)
	}
	if err != nil {
		return nil, fmt.Errorf("trigger %s: %w", req.Repo, err)
	}
	reply, err := DecodeAs[TriggerReply](msg.Data)
	if err != nil {
		return nil, fmt.Errorf("trigger %s: bad reply: %w", req.Repo, err)
	}
	if reply.Error != "" {
		return nil, fmt.Errorf("%w: %s", ErrRefused, reply.Error)
	}
	return reply, nil
}
