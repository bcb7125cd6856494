package events

import (
	"encoding/json"
	"fmt"
	"reflect"
)

// Message types, each with its version: the "type" field of every message.
const (
	TypeCommitDetected = "jetci.commit.detected.v1"
	TypeJobQueued      = "jetci.job.queued.v1"
	TypeJobStarted     = "jetci.job.started.v1"
	TypeJobFinished    = "jetci.job.finished.v1"
	TypeLogChunk       = "jetci.log.chunk.v1"
	TypeTriggerRequest = "jetci.trigger.request.v1"
	TypeTriggerReply   = "jetci.trigger.reply.v1"
	TypeCancel         = "jetci.job.cancel.v1"
	TypeBranchState    = "jetci.branch.state.v1"
	TypeRecheckRequest = "jetci.recheck.request.v1"
	TypeBisectState    = "jetci.bisect.state.v1"
)

// messageTypes is the registry of message types: Encode sets the type of the
// structs listed here and Decode makes them from it. Adding a message type is
// its constant above and its line here; its struct starts with a
// `Type string` field and has a check method that names the first missing
// field every consumer relies on (the compiler asks for it).
// TestEveryTypeRegistered catches a constant without its line.
var messageTypes = register(
	kind[CommitDetected](TypeCommitDetected),
	kind[JobQueued](TypeJobQueued),
	kind[JobStarted](TypeJobStarted),
	kind[JobFinished](TypeJobFinished),
	kind[LogChunk](TypeLogChunk),
	kind[TriggerRequest](TypeTriggerRequest),
	kind[TriggerReply](TypeTriggerReply),
	kind[CancelRequest](TypeCancel),
	kind[BranchState](TypeBranchState),
	kind[RecheckRequest](TypeRecheckRequest),
	kind[Bisection](TypeBisectState),
)

// message is what every registered struct is: check reports the first field
// a consumer relies on that is missing or wrong.
type message interface{ check() error }

// messageType is one registered message type.
type messageType struct {
	name   string
	goType reflect.Type // the pointer to its struct
	new    func() message
}

// kind is the registry entry of the message struct T, named name.
func kind[T any, P interface {
	*T
	message
}](name string) messageType {
	return messageType{name: name, goType: reflect.TypeFor[P](), new: func() message { return P(new(T)) }}
}

// registry looks message types up by name (Decode) and by Go type (Encode).
type registry struct {
	byName map[string]messageType
	byType map[reflect.Type]messageType
}

// register builds the registry; it panics on a duplicate name or type, and
// on a struct without a Type string field first, at init.
func register(types ...messageType) registry {
	r := registry{byName: map[string]messageType{}, byType: map[reflect.Type]messageType{}}
	for _, t := range types {
		if f := t.goType.Elem().Field(0); f.Name != "Type" || f.Type.Kind() != reflect.String {
			panic(fmt.Sprintf("events: message %s: its first field must be Type string", t.goType))
		}
		if _, dup := r.byName[t.name]; dup {
			panic("events: message type registered twice: " + t.name)
		}
		if _, dup := r.byType[t.goType]; dup {
			panic(fmt.Sprintf("events: message %s registered twice", t.goType))
		}
		r.byName[t.name], r.byType[t.goType] = t, t
	}
	return r
}

// Encode marshals a message, setting its type.
func Encode(m any) ([]byte, error) {
	t, ok := messageTypes.byType[reflect.TypeOf(m)]
	if !ok || reflect.ValueOf(m).IsNil() {
		return nil, fmt.Errorf("encode: unknown message %T", m)
	}
	reflect.ValueOf(m).Elem().Field(0).SetString(t.name)
	return json.Marshal(m)
}

// Decode parses a message of any known type and checks the fields every consumer
// relies on. It returns a pointer to the message struct.
func Decode(data []byte) (any, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	t, ok := messageTypes.byName[head.Type]
	switch {
	case head.Type == "":
		return nil, fmt.Errorf("%w: no type", ErrBadMessage)
	case !ok:
		return nil, fmt.Errorf("%w: unknown type %q", ErrBadMessage, head.Type)
	}
	m := t.new()
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadMessage, head.Type, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadMessage, head.Type, err)
	}
	return m, nil
}

// DecodeAs decodes a message that must be of type T.
func DecodeAs[T any](data []byte) (*T, error) {
	m, err := Decode(data)
	if err != nil {
		return nil, err
	}
	v, ok := m.(*T)
	if !ok {
		var zero T
		return nil, fmt.Errorf("%w: got %T, want %T", ErrBadMessage, m, &zero)
	}
	return v, nil
}
