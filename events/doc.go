// Package events is the vocabulary every jetci service shares: subject names,
// stream, consumer and bucket definitions, and the versioned JSON messages that
// travel between the observer, the dispatcher, the runners and the reporter.
// Services import events and never each other.
//
// # The wire contract
//
// docs/wire.md is the one table of every subject (its message, whether a
// stream stores it or it is core NATS, which roles may publish and read it),
// stream (subjects, retention, limits, durable consumers) and bucket (kind,
// TTL, writers, readers). [WireDoc] renders it from the definitions in this
// package (the Subject*, Stream*, Consumer* and Bucket* constants,
// [Setup.StreamConfigs], [Setup.BucketConfigs], [Roles]); TestWireDoc keeps
// the file equal to it and fails when a constant is missing from it. After a
// change here, run 'go generate ./events' (or 'go test ./events -run
// TestWireDoc -update').
//
// <repo> and <branch> are tokens made by [Token]: base64url without padding of
// the name as git spells it, so any branch git accepts (feature/x.y, a>b, ünï, *)
// is exactly one safe token; names whose token would exceed [MaxTokenLen] become
// "=" followed by a hex SHA-256 prefix. The readable name always travels in the
// message body; tokens are for routing and filtering only. <pool>, <arch> and
// <class> are plain names checked by [ValidName].
//
// # Streams and consumers
//
// JETCI_COMMITS keeps every CommitDetected (limits retention); the dispatcher reads it
// through the durable consumer "dispatcher". JETCI_JOBS is a work queue: each job is
// routed to exactly one partition subject, and the runners of one (pool, arch) share
// one durable pull consumer per priority class, "run-<pool>-<arch>-<class>", whose
// filter jetci.job.<pool>.<arch>.<class>.> cannot overlap any other (the server
// refuses overlapping filters on a work queue, error 10100). The dispatcher creates
// the consumers of every partition it routes to, so a job waiting for a runner that
// has not joined yet is held by a durable consumer, never dropped. JETCI_RESULTS keeps
// every queued, started and finished event; the reporter reads it through the
// durable consumer "reporter" and folds it into one record per job in the
// jetci-results bucket.
//
// # Roles and permissions
//
// Each kind of process connects as the user of its role ([Roles]: observer,
// dispatcher, runner, reporter, admin, hook, pool) and reads replies on its own
// inbox prefix ([InboxPrefix], "_INBOX_<role>"). [Roles] lists the subjects each
// may publish and subscribe to, JetStream API, ack, KV and object store subjects
// included; [AccountsConf] renders them as the jetci-accounts.conf that nats.conf
// includes. Only the admin creates streams and buckets ([Setup.Ensure] is a
// lookup for the others once they exist). The server refuses a publish
// silently, so a refused request times out; the [Conn] that [Connect] returns
// remembers the server's last refusal, and [Conn.Explain] turns that timeout
// into a [PermissionError] naming the role and the subject.
//
// # Messages
//
// Every message is a JSON object with a "type" naming it and its version, for example
// "jetci.commit.detected.v1". The message types are one registry (messageTypes,
// in registry.go): [Encode] sets a message's type from it and [Decode] makes the
// struct of a type from it; adding a message type is its Type constant and its
// line there. [Decode] rejects unknown types and malformed bodies with an error
// wrapping [ErrBadMessage]: consumers terminate such messages instead of
// retrying them forever. Publishes that must not duplicate carry a Nats-Msg-Id
// ([CommitMsgID], [JobMsgID], [ResultMsgID]).
//
// # Requests
//
// The services' request/reply subjects have one client each here:
// [RequestTrigger] (the observers run a commit now), [RequestRecheck] (the
// dispatchers re-check a broken branch) and [Poke] (the observers poll a
// repository now). They fail with a [RequestError] whose Kind callers branch on
// with errors.Is: [ErrNoObserver] or [ErrNoDispatcher] (nobody serves the
// subject), [ErrRefused] (the service said no, and why).
package events

//go:generate go test -run TestWireDoc -update
