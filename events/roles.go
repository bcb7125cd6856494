package events

import (
	"fmt"
	"strings"
)

// Role is one kind of jetci process and what the NATS server lets it do: the
// subjects it may publish to (its own messages, and the JetStream API calls,
// acks, KV and object store writes it makes) and subscribe to. Roles renders
// them as the permissions of one user each in jetci-accounts.conf, which
// nats.conf includes; a test keeps that file equal to Roles.
type Role struct {
	Name      string
	Doc       string   // what the role does, one line
	Publish   []string // subjects it may publish to
	Subscribe []string // subjects it may subscribe to, besides its inbox
	// Responds lets it answer requests (publish once to the reply subject of a
	// request it received), as observers answer triggers and pokes.
	Responds bool
}

// Role names; a process connects as one (ConnectOptions.Role).
const (
	RoleObserver   = "observer"
	RoleDispatcher = "dispatcher"
	RoleRunner     = "runner"
	RoleReporter   = "reporter"
	RoleAdmin      = "admin"
	RoleHook       = "hook"
	RolePool       = "pool"
)

// jsAPI is a JetStream API subject.
func jsAPI(f string, a ...any) string { return "$JS.API." + fmt.Sprintf(f, a...) }

// inAnyDomain returns the JetStream API and KV subjects of list in the form a
// client of another JetStream domain uses: nats-server sends $JS.API.X as
// $JS.<domain>.API.X and $KV.X as $JS.<domain>.API.$KV.X across a leaf
// connection, and keeps the plain forms off it.
func inAnyDomain(list []string) []string {
	var out []string
	for _, s := range list {
		if rest, ok := strings.CutPrefix(s, "$JS.API."); ok {
			out = append(out, "$JS.*.API."+rest)
		} else if strings.HasPrefix(s, "$KV.") {
			out = append(out, "$JS.*.API."+s)
		}
	}
	return out
}

// durable: create (or update), look up, pull from and ack one durable consumer.
func durable(stream, consumer string) []string {
	return []string{
		jsAPI("CONSUMER.CREATE.%s.%s", stream, consumer),
		jsAPI("CONSUMER.CREATE.%s.%s.>", stream, consumer),
		jsAPI("CONSUMER.INFO.%s.%s", stream, consumer),
		jsAPI("CONSUMER.MSG.NEXT.%s.%s", stream, consumer),
		"$JS.ACK." + stream + "." + consumer + ".>",
	}
}

// ordered: the ephemeral ordered consumers of KV watches, key listings, object
// reads and live log pages on one stream (create, pull or push with flow
// control, delete on reset).
func ordered(stream string) []string {
	return []string{
		jsAPI("CONSUMER.CREATE.%s", stream),
		jsAPI("CONSUMER.CREATE.%s.>", stream),
		jsAPI("CONSUMER.INFO.%s.>", stream),
		jsAPI("CONSUMER.MSG.NEXT.%s.>", stream),
		jsAPI("CONSUMER.DELETE.%s.>", stream),
		"$JS.FC." + stream + ".>",
	}
}

// getMsg: read single messages of a stream (by sequence or last by subject).
func getMsg(stream string) []string {
	return []string{jsAPI("STREAM.MSG.GET.%s", stream), jsAPI("DIRECT.GET.%s", stream), jsAPI("DIRECT.GET.%s.>", stream)}
}

func kvGet(bucket string) []string    { return getMsg("KV_" + bucket) }
func kvRead(bucket string) []string   { return append(kvGet(bucket), ordered("KV_"+bucket)...) }
func kvWrite(bucket string) []string  { return []string{"$KV." + bucket + ".>"} }
func kvUse(bucket string) []string    { return append(kvRead(bucket), kvWrite(bucket)...) }
func objRead(bucket string) []string  { return append(getMsg("OBJ_"+bucket), ordered("OBJ_"+bucket)...) }
func objWrite(bucket string) []string { return []string{"$O." + bucket + ".>"} }

// objPut: store new objects — write chunks and metadata, and read metadata
// (a put first looks for an object of the same name), but no contents.
func objPut(bucket string) []string {
	return append(objWrite(bucket), jsAPI("DIRECT.GET.OBJ_%s.$O.%s.M.>", bucket, bucket))
}

// common: every service looks its streams and buckets up at start (stream
// info, read-only) and makes sure they exist; when the admin created them, that
// is all it needs. Each writes its probe of the server (JETCI_HEALTH).
var common = []string{jsAPI("INFO"), jsAPI("STREAM.INFO.*"), SubjectHealth + ".>"}

func cat(lists ...[]string) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range lists {
		for _, s := range l {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	return out
}

func sub(roots ...string) []string {
	out := make([]string, len(roots))
	for i, r := range roots {
		out[i] = r + ".>"
	}
	return out
}

// jobConsumers: the runners' consumers on the work queue: create them for a
// partition no job went to yet, look them up, pull jobs and ack them.
var jobConsumers = []string{
	jsAPI("CONSUMER.CREATE.%s.*.%s.>", StreamJobs, SubjectJobs),
	jsAPI("CONSUMER.INFO.%s.*", StreamJobs),
	jsAPI("CONSUMER.MSG.NEXT.%s.*", StreamJobs),
	"$JS.ACK." + StreamJobs + ".>",
}

// Roles returns every role, in the order of the config file.
func Roles() []Role {
	runnerPub := cat(common, sub(SubjectResults, SubjectLogs), jobConsumers,
		kvWrite(BucketRunners), kvGet(BucketReaped), kvWrite(BucketReaped), kvGet(BucketCancel),
		objPut(BucketLogs), objPut(BucketArtifacts))
	// Runners in another region reach the hub's JetStream through a leaf
	// node that logs in as the runner user (docs/operations.md): the leaf
	// sends their API calls under the hub's JetStream domain,
	// $JS.<domain>.API.…, so the runner may make each of its calls in that
	// form too. It is the same call on the same account's streams.
	runnerPub = cat(runnerPub, inAnyDomain(runnerPub))
	runnerSub := sub(SubjectJobs, SubjectCancel, SubjectWake, SubjectAlive)
	return []Role{
		{
			Name: RoleObserver,
			Doc:  "watches repositories: publishes commits, keeps the heads, answers trigger and poke requests",
			Publish: cat(common, sub(SubjectCommits),
				kvUse(BucketHeads)),
			Subscribe: sub(SubjectTrigger, SubjectPoke),
			Responds:  true,
		},
		{
			Name: RoleDispatcher,
			Doc:  "turns commits into jobs; schedules, gates, ages and cancels superseded jobs; hands back jobs of dead runners",
			Publish: cat(common, sub(SubjectJobs, SubjectResults, SubjectBranch, SubjectTrigger, SubjectBisect, SubjectWake, SubjectAlive),
				durable(StreamCommits, ConsumerDispatcher), getMsg(StreamCommits),
				durable(StreamResults, ConsumerGate),
				durable(StreamResults, ConsumerBisect), durable(StreamCommits, ConsumerBisectCommits), // culprit finding
				durable(StreamDead, ConsumerDead),
				[]string{
					jsAPI("CONSUMER.CREATE.%s.>", StreamJobs), jsAPI("CONSUMER.INFO.%s.*", StreamJobs),
					jsAPI("CONSUMER.LIST.%s", StreamJobs), jsAPI("CONSUMER.NAMES.%s", StreamJobs),
					jsAPI("STREAM.MSG.GET.%s", StreamJobs), jsAPI("STREAM.MSG.DELETE.%s", StreamJobs),
					"$JS.ACK." + StreamJobs + ".>", // hand a dead runner's job back (-NAK)
				},
				kvUse(BucketRunners), // ends the lease of a runner whose connection closed
				kvUse(BucketReaped), kvUse(BucketBranches), kvUse(BucketHeld),
				kvUse(BucketSchedule), kvRead(BucketHeads), kvRead(BucketResults), kvUse(BucketBisect),
				// the broken-build flow pauses later commits' jobs that started after the break
				sub(SubjectCancel), getMsg(StreamResults), kvUse(BucketCancel),
				kvRead(BucketKeys)), // the service key, to sign the results it publishes
			Subscribe: sub(SubjectRecheck),
			Responds:  true,
		},
		{
			Name:      RoleRunner,
			Doc:       "runs jobs: pulls and acks jobs, publishes results and logs, stores logs and artifacts, keeps its lease",
			Publish:   runnerPub,
			Subscribe: runnerSub,
			Responds:  true, // to the dispatcher's probes of its alive subject
		},
		{
			Name: RoleReporter,
			Doc:  "keeps the records and serves the UI and API; its actions trigger, re-check and cancel; sends notifications",
			Publish: cat(common, sub(SubjectResults, SubjectCancel, SubjectNotify, SubjectTrigger, SubjectRecheck, SubjectPoke),
				durable(StreamResults, ConsumerReporter), durable(StreamResults, ConsumerNotifierResults), durable(StreamResults, ConsumerNotifierQueued),
				durable(StreamNotify, ConsumerNotifier), durable(StreamBranch, ConsumerNotifierBranches),
				durable(StreamBisect, ConsumerNotifierBisect),
				ordered(StreamLogs), ordered(StreamResults), // the read model's fold
				[]string{
					jsAPI("STREAM.MSG.DELETE.%s", StreamJobs), jsAPI("STREAM.MSG.GET.%s", StreamJobs), // cancel a queued job; queue age
					jsAPI("CONSUMER.LIST.%s", StreamJobs), jsAPI("CONSUMER.INFO.%s.*", StreamJobs),
				},
				kvUse(BucketResults), kvRead(BucketRunners), kvUse(BucketCancel), kvRead(BucketBranches),
				kvUse(BucketNotify), kvUse(BucketSent), objRead(BucketLogs), objRead(BucketArtifacts),
				kvUse(BucketTests), kvRead(BucketBisect),
				kvRead(BucketKeys), kvUse(BucketForgeries), // verify and sign results; keep the refused ones
				kvUse(BucketSessions), kvUse(BucketDeliveries)),
			// The results service: its subject, and the micro discovery subjects.
			Subscribe: cat(sub(SubjectLogs), []string{SubjectQueryResults, "$SRV.>"}),
			Responds:  true,
		},
		{
			Name:    RoleAdmin,
			Doc:     "the operator and the CLI: creates streams and buckets (jetci setup), results, trigger, recheck, artifacts; may do anything in the account",
			Publish: []string{"$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>", "jetci.>"},
			// _INBOX.> too: the default inbox of the nats CLI and other tools.
			Subscribe: []string{"jetci.>", "_INBOX.>"},
		},
		{
			Name:    RoleHook,
			Doc:     "a git post-receive hook (jetci notify): may only ask the observers to poll",
			Publish: sub(SubjectPoke),
		},
		{
			Name:      RolePool,
			Doc:       "jetci pool and the runners it starts: a runner that may also read the leases, to see which runners are idle",
			Publish:   cat(runnerPub, kvRead(BucketRunners)),
			Subscribe: runnerSub,
			Responds:  true,
		},
	}
}

// RoleByName returns the role called name.
func RoleByName(name string) (Role, bool) {
	for _, r := range Roles() {
		if r.Name == name {
			return r, true
		}
	}
	return Role{}, false
}

// PasswordVar is the environment variable nats.conf reads a role's password
// from, e.g. JETCI_RUNNER_PASSWORD.
func PasswordVar(role string) string { return "JETCI_" + strings.ToUpper(role) + "_PASSWORD" }

// AccountsConf renders the jetci account with one user per role, in the
// nats-server configuration syntax; nats.conf includes it. Passwords are
// environment variable references (PasswordVar): the server refuses to start
// until each is set.
func AccountsConf() string {
	var b strings.Builder
	b.WriteString(`# The jetci account: one user per role, each allowed only its own subjects.
# GENERATED from events/roles.go by 'go test ./events -run TestAccountsConf -update';
# edit roles.go, not this file. docs/security.md ("Roles") explains each role.
#
# Passwords come from the environment of the server; it will not start until
# every one is set, e.g.  export JETCI_RUNNER_PASSWORD=$(openssl rand -hex 16)
# Each process gives its own: jetci runner --nats-user runner --nats-password ...
# (or $JETCI_NATS_USER / $JETCI_NATS_PASSWORD). To use nkeys instead, replace
# "user: X, password: $VAR" with "nkey: U...". Each role reads replies only on
# its own inbox prefix, _INBOX_<role>.
accounts {
  JETCI {
    jetstream: enabled
    users: [
`)
	for _, r := range Roles() {
		fmt.Fprintf(&b, "      # %s: %s\n", r.Name, r.Doc)
		fmt.Fprintf(&b, "      { user: %s, password: $%s, permissions: {\n", r.Name, PasswordVar(r.Name))
		b.WriteString("          publish: { allow: [")
		writeList(&b, r.Publish)
		b.WriteString("] }\n")
		subs := cat([]string{InboxPrefix(r.Name) + ".>"}, r.Subscribe)
		if r.Name == RolePool {
			subs = cat(subs, []string{InboxPrefix(RoleRunner) + ".>"}) // the runners it starts
		}
		b.WriteString("          subscribe: { allow: [")
		writeList(&b, subs)
		b.WriteString("] }\n")
		if r.Responds {
			b.WriteString("          allow_responses: true\n")
		}
		b.WriteString("      } }\n")
	}
	b.WriteString("    ]\n  }\n}\n")
	return b.String()
}

func writeList(b *strings.Builder, l []string) {
	for i, s := range l {
		if i > 0 {
			b.WriteString(",")
		}
		if i%3 == 0 {
			b.WriteString("\n            ")
		} else {
			b.WriteString(" ")
		}
		fmt.Fprintf(b, "%q", s)
	}
	b.WriteString("\n          ")
}
