package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// The request/reply clients of jetci's services: RequestTrigger (the
// observers), RequestRecheck (the dispatchers) and Poke (the observers). Each
// fails with a *RequestError whose Kind callers branch on with errors.Is.

// Kinds of a RequestError.
var (
	ErrNoObserver   = errors.New("no observer watches that repo")
	ErrNoDispatcher = errors.New("no dispatcher answers re-check requests")
	ErrRefused      = errors.New("request refused")
)

// RequestError is a failed request to a jetci service.
type RequestError struct {
	Op   string // trigger, recheck or poke
	Repo string
	// Kind is ErrNoObserver or ErrNoDispatcher (nobody answers the
	// request's subject), ErrRefused (the service said no: Reason says
	// why), or nil (Err says what went wrong).
	Kind   error
	Reason string
	// Err is the request's own failure: a timeout, ctx's error
	// (context.DeadlineExceeded when ctx ended first), a bad reply.
	Err error
}

// Error is the failure as people read it: who is missing, the service's
// refusal as it gave it, or the request and its error.
func (e *RequestError) Error() string {
	switch e.Kind {
	case ErrNoObserver:
		return fmt.Sprintf("no observer watches a repo named %q", e.Repo)
	case ErrNoDispatcher:
		return "no dispatcher answers re-check requests: is one running with --gate?"
	case ErrRefused:
		return e.Reason
	}
	return fmt.Sprintf("%s %s: %v", e.Op, e.Repo, e.Err)
}

// Unwrap makes errors.Is find the Kind and the request's own error.
func (e *RequestError) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.Kind, e.Err} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// RequestTrigger asks the observers of req.Repo to run a commit (see
// TriggerRequest) and returns their answer. No observer is ErrNoObserver, an
// observer's refusal (no such branch or commit) ErrRefused; ctx bounds the
// wait.
func RequestTrigger(ctx context.Context, nc *nats.Conn, req *TriggerRequest) (*TriggerReply, error) {
	return request(ctx, nc, "trigger", req.Repo, TriggerSubject(req.Repo), req, ErrNoObserver)
}

// RecheckTimeout bounds RequestRecheck's wait when its ctx does not.
const RecheckTimeout = 90 * time.Second

// RequestRecheck asks the dispatchers (the one that gates req.Repo) to
// re-check a branch (see RecheckRequest). No dispatcher is ErrNoDispatcher, a
// refusal ErrRefused; it waits at most RecheckTimeout.
func RequestRecheck(ctx context.Context, nc *nats.Conn, req *RecheckRequest) (*TriggerReply, error) {
	ctx, cancel := context.WithTimeout(ctx, RecheckTimeout)
	defer cancel()
	return request(ctx, nc, "recheck", req.Repo, RecheckSubject(req.Repo), req, ErrNoDispatcher)
}

// PokeTimeout bounds Poke's wait.
const PokeTimeout = 10 * time.Second

// Poke tells the observers of repo to poll it now. No observer is
// ErrNoObserver; it waits at most PokeTimeout.
func Poke(ctx context.Context, nc *nats.Conn, repo string) error {
	ctx, cancel := context.WithTimeout(ctx, PokeTimeout)
	defer cancel()
	_, err := nc.RequestWithContext(ctx, PokeSubject(repo), nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return &RequestError{Op: "poke", Repo: repo, Kind: ErrNoObserver}
	}
	if err != nil {
		return &RequestError{Op: "poke", Repo: repo, Err: err}
	}
	return nil
}

// request sends msg on subject and decodes the TriggerReply it gets.
func request(ctx context.Context, nc *nats.Conn, op, repo, subject string, msg any, nobody error) (*TriggerReply, error) {
	data, err := Encode(msg)
	if err != nil {
		return nil, err
	}
	m, err := nc.RequestWithContext(ctx, subject, data)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, &RequestError{Op: op, Repo: repo, Kind: nobody}
	}
	if err != nil {
		return nil, &RequestError{Op: op, Repo: repo, Err: err}
	}
	reply, err := DecodeAs[TriggerReply](m.Data)
	if err != nil {
		return nil, &RequestError{Op: op, Repo: repo, Err: fmt.Errorf("bad reply: %w", err)}
	}
	if reply.Error != "" {
		return nil, &RequestError{Op: op, Repo: repo, Kind: ErrRefused, Reason: reply.Error}
	}
	return reply, nil
}
