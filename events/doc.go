// Package events is the vocabulary every jetci service shares: subject names,
// stream, consumer and bucket definitions, and the versioned JSON messages that
// travel between the observer, the dispatcher, the runners and the reporter.
// Services import events and never each other.
//
// # Subject tree
//
//	jetci.commit.<repo>.<branch>                      CommitDetected     stream JETCI_COMMITS (limits)
//	jetci.job.<pool>.<arch>.<class>.<repo>.<branch>   JobQueued          stream JETCI_JOBS (work queue)
//	jetci.result.<repo>.<branch>.queued               JobQueued          stream JETCI_RESULTS (limits, kept)
//	jetci.result.<repo>.<branch>.started              JobStarted         stream JETCI_RESULTS
//	jetci.result.<repo>.<branch>.finished             JobFinished        stream JETCI_RESULTS
//	jetci.log.<job-id>                                LogChunk           stream JETCI_LOGS (limits, 24 h): live output
//	jetci.cancel.<job-id>                             CancelRequest      core NATS: the runner running the job kills it
//	jetci.notify.{mail,webhook}                       (reporter's own)   stream JETCI_NOTIFY (work queue, bounded): the outbox
//	jetci.trigger.<repo>                              TriggerRequest     core NATS request/reply, queue group "observers"
//	jetci.poke.<repo>                                 (empty)            core NATS request/reply, queue group "observers": poll now
//	jetci.wake.<pool>.<arch>                          (empty)            core NATS: a job was handed back; idle runners look again
//	jetci.alive.<incarnation>.<runner id>             (empty)            core NATS request: the dispatcher's probe; "no responders" = the runner's connection closed
//	jetci.bisect.<repo>.<branch>                      Bisection          stream JETCI_BISECT (limits, 90 days): culprit searches
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
// # Buckets
//
//	jetci-heads    KV     last published head per repo and branch (observer)
//	jetci-results  KV     one record per job: <repo>.<branch>.<job-id> (reporter)
//	jetci-runners  KV     leases: runner.<id> is a live runner and the jobs it holds (see Lease);
//	                      entries expire LeaseTTL after the last refresh
//	jetci-reaped   KV     one key per job attempt held under an expired lease (see ReapKey)
//	jetci-cancel   KV     cancel requests by job id (see CancelRequest)
//	jetci-notify   KV     notification state per repo, branch, job and arch (passing/failing, first failure)
//	jetci-sent     KV     one key per notification sent or being sent (30 days), so none goes out twice
//	jetci-logs     object full job logs, "<job-id>/<queue-seq>-<attempt>.log" (see LogObject)
//	jetci-artifacts object files jobs left, "<job-id>/<queue-seq>-<attempt>/<path>" (see ArtifactObject)
//	jetci-bisect   KV     culprit finding (90 days): b.<repo>.<branch>.<job-id> a Bisection (see BisectKey);
//	                      c.… the commits and o.… the job outcomes of bisected branches (dispatcher)
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
// silently, so a refused request times out; [Explain] turns that timeout into a
// [PermissionError] naming the role and the subject.
//
// # Messages
//
// Every message is a JSON object with a "type" naming it and its version, for example
// "jetci.commit.detected.v1". [Decode] rejects unknown types and malformed bodies with
// an error wrapping [ErrBadMessage]: consumers terminate such messages instead of
// retrying them forever. Publishes that must not duplicate carry a Nats-Msg-Id
// ([CommitMsgID], [JobMsgID], [ResultMsgID]).
package events
