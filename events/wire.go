package events

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// wireSubject is one subject family of the wire contract.
type wireSubject struct {
	Const   string // the Go constant of its root
	Root    string // its value
	Pattern string // the whole subject, tokens in <>
	Message string // what travels on it
	Request bool   // core NATS request/reply
	Doc     string
	// From names the publisher when it is no role (the NATS server).
	From string
}

// wireSubjects is every subject family jetci uses. WireDoc renders them with
// their transport (the stream that stores them, or core NATS) and the roles
// that may publish and read them, both taken from StreamConfigs and Roles.
func wireSubjects() []wireSubject {
	return []wireSubject{
		{Const: "SubjectCommits", Root: SubjectCommits, Pattern: "jetci.commit.<repo>.<branch>", Message: "CommitDetected",
			Doc: "every new commit an observer saw"},
		{Const: "SubjectJobs", Root: SubjectJobs, Pattern: "jetci.job.<pool>.<arch>.<class>.<repo>.<branch>", Message: "JobQueued",
			Doc: "the work queue: one partition per pool, arch, priority class, repo and branch"},
		{Const: "SubjectResults", Root: SubjectResults, Pattern: "jetci.result.<repo>.<branch>.{queued,started,finished}",
			Message: "JobQueued, JobStarted, JobFinished", Doc: "every job's events; the reporters fold them into records"},
		{Const: "SubjectLogs", Root: SubjectLogs, Pattern: "jetci.log.<job-id>", Message: "LogChunk",
			Doc: "live output of running jobs (the full log goes to the jetci-logs object store)"},
		{Const: "SubjectNotify", Root: SubjectNotify, Pattern: "jetci.notify.{mail,webhook}", Message: "reporter.Notification",
			Doc: "the outbox: mails and webhook deliveries waiting to be sent"},
		{Const: "SubjectBranch", Root: SubjectBranch, Pattern: "jetci.branch.<repo>.<branch>", Message: "BranchState",
			Doc: "state changes of branches under the broken-build flow"},
		{Const: "SubjectBisect", Root: SubjectBisect, Pattern: "jetci.bisect.<repo>.<branch>", Message: "Bisection",
			Doc: "every step of the culprit searches"},
		{Const: "SubjectMaxDeliveries", Root: SubjectMaxDeliveries, Pattern: SubjectMaxDeliveries, Message: "server advisory",
			From: "the NATS server", Doc: "a job reached its delivery limit (JobMaxDeliver); recorded as an error"},
		{Const: "SubjectCancel", Root: SubjectCancel, Pattern: "jetci.cancel.<job-id>", Message: "CancelRequest",
			Doc: "the runner running the job kills it (the request is also kept in jetci-cancel)"},
		{Const: "SubjectTrigger", Root: SubjectTrigger, Pattern: "jetci.trigger.<repo>", Message: "TriggerRequest → TriggerReply", Request: true,
			Doc: "run a commit now; queue group \"observers\""},
		{Const: "SubjectRecheck", Root: SubjectRecheck, Pattern: "jetci.recheck.<repo>", Message: "RecheckRequest", Request: true,
			Doc: "re-check a broken branch; queue group \"dispatchers\""},
		{Const: "SubjectPoke", Root: SubjectPoke, Pattern: "jetci.poke.<repo>", Message: "(empty)", Request: true,
			Doc: "poll the repository now (jetci notify, push hooks); queue group \"observers\""},
		{Const: "SubjectWake", Root: SubjectWake, Pattern: "jetci.wake.<pool>.<arch>", Message: "(empty)",
			Doc: "a job was handed back: idle runners look again"},
		{Const: "SubjectAlive", Root: SubjectAlive, Pattern: "jetci.alive.<incarnation>.<runner-id>", Message: "(empty)", Request: true,
			Doc: "the dispatcher's probe of a runner holding jobs: \"no responders\" means its connection closed"},
		{Const: "SubjectHealth", Root: SubjectHealth, Pattern: "jetci.health.<service>.<id>", Message: "(a time stamp)",
			Doc: "each service's write probe every 5 s: a server that answers but takes no write (a full disk) shows in /healthz"},
		{Const: "SubjectQueryResults", Root: SubjectQueryResults, Pattern: SubjectQueryResults, Message: "a page of job records", Request: true,
			Doc: "the reporters' results service (a NATS micro service)"},
	}
}

// subjectMatch reports whether subject matches a NATS subject pattern with *
// and > wildcards.
func subjectMatch(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, t := range p {
		switch {
		case t == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case t != "*" && t != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}

// example turns a subject pattern into one subject: <token> becomes x, a
// {a,b} choice its first.
func example(pattern string) string {
	toks := strings.Split(pattern, ".")
	for i, t := range toks {
		switch {
		case strings.HasPrefix(t, "<"):
			toks[i] = "x"
		case strings.HasPrefix(t, "{"):
			toks[i], _, _ = strings.Cut(strings.Trim(t, "{}"), ",")
		}
	}
	return strings.Join(toks, ".")
}

// rolesWhere lists the roles (the admin, who may do anything, aside) one of
// whose subjects matches one of subjects.
func rolesWhere(list func(Role) []string, subjects ...string) []string {
	var out []string
	for _, r := range Roles() {
		if r.Name == RoleAdmin {
			continue
		}
		if slices.ContainsFunc(list(r), func(p string) bool {
			return slices.ContainsFunc(subjects, func(s string) bool { return subjectMatch(p, s) })
		}) {
			out = append(out, r.Name)
		}
	}
	return out
}

func publishes(r Role) []string  { return r.Publish }
func subscribes(r Role) []string { return r.Subscribe }

// streamReaders are the roles that may read stream: make consumers on it or
// get its messages.
func streamReaders(stream string) []string {
	var out []string
	for _, r := range Roles() {
		if r.Name == RoleAdmin {
			continue
		}
		if slices.ContainsFunc(r.Publish, func(p string) bool {
			t := strings.Split(p, ".")
			return len(t) >= 5 && strings.Join(t[:5], ".") == jsAPI("CONSUMER.CREATE.%s", stream) ||
				subjectMatch(p, jsAPI("STREAM.MSG.GET.%s", stream)) || subjectMatch(p, jsAPI("DIRECT.GET.%s", stream))
		}) {
			out = append(out, r.Name)
		}
	}
	return out
}

// durables lists the durable consumers of a stream that Roles names.
func durables(stream string) []string {
	var out []string
	prefix := jsAPI("CONSUMER.CREATE.%s.", stream)
	for _, r := range Roles() {
		for _, p := range r.Publish {
			name, ok := strings.CutPrefix(p, prefix)
			if ok && !strings.ContainsAny(name, "*>.") && !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return out
}

func names(l []string) string {
	if len(l) == 0 {
		return "—"
	}
	return strings.Join(l, ", ")
}

func days(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%d d", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%d h", d/time.Hour)
	}
	return d.String()
}

// WireDoc renders the wire contract, docs/wire.md: every subject, stream and
// bucket, its Go name, and who may publish and read it. A test keeps the file
// equal to it ('go test ./events -run TestWireDoc -update' rewrites it).
func WireDoc() string {
	var b strings.Builder
	s := DefaultSetup()
	streams := s.StreamConfigs()
	b.WriteString(`# The wire contract

<!-- GENERATED from package events by 'go test ./events -run TestWireDoc -update'; edit events/wire.go, streams.go, roles.go, not this file. -->

Every jetci process talks to the others only through NATS: the subjects, streams
and buckets below, defined in package ` + "`events`" + ` (the Go name of each is
given). "May publish" and "may read" are the roles (` + "`events.Roles`" + `,
jetci-accounts.conf) the server allows to do so; the admin may do anything. The
messages are versioned JSON objects with a "type" (` + "`events.Decode`" + `);
<repo> and <branch> are tokens made by ` + "`events.Token`" + ` (base64url of the name
as git spells it; the readable name travels in the message body).

## Subjects

| Subject | Go name | Message | Transport | May publish | May read | What |
|---|---|---|---|---|---|---|
`)
	for _, w := range wireSubjects() {
		ex := example(w.Pattern)
		transport := "core NATS"
		if w.Request {
			transport = "core NATS, request/reply"
		}
		var readers []string
		for _, st := range streams {
			if slices.ContainsFunc(st.Subjects, func(p string) bool { return subjectMatch(p, ex) }) {
				transport = "stream " + st.Name
				readers = streamReaders(st.Name)
			}
		}
		if !strings.HasPrefix(transport, "stream") {
			readers = rolesWhere(subscribes, ex)
		}
		from := w.From
		if from == "" {
			from = names(rolesWhere(publishes, ex))
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s |\n", w.Pattern, w.Const, w.Message, transport, from, names(readers), w.Doc)
	}
	b.WriteString(`
## Streams

| Stream | Go name | Subjects | Retention | Limits | Durable consumers | May read | What |
|---|---|---|---|---|---|---|---|
`)
	for _, st := range streams {
		var lim []string
		if st.MaxAge > 0 {
			lim = append(lim, "max age "+days(st.MaxAge))
		}
		if st.MaxBytes > 0 {
			lim = append(lim, fmt.Sprintf("max %d MiB (--live-logs-max)", st.MaxBytes>>20))
		}
		if st.MaxMsgs > 0 {
			lim = append(lim, fmt.Sprintf("max %d messages, then new ones are refused", st.MaxMsgs))
		}
		if st.MaxMsgsPerSubject > 0 {
			lim = append(lim, fmt.Sprintf("max %d per subject", st.MaxMsgsPerSubject))
		}
		if st.Duplicates > 0 {
			lim = append(lim, "dedup "+days(st.Duplicates))
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s | %s | %s | %s | %s |\n", st.Name, streamConst(st.Name), strings.Join(st.Subjects, "`, `"),
			st.Retention, names(lim), names(durables(st.Name)), names(streamReaders(st.Name)), st.Description)
	}
	b.WriteString(`
The runners' consumers on JETCI_JOBS are made per pool, arch and class:
` + "`run-<pool>-<arch>-<class>`" + ` (` + "`events.JobConsumerName`" + `).

## Buckets

| Bucket | Go name | Kind | TTL | May write | May read | What |
|---|---|---|---|---|---|---|
`)
	for _, kv := range s.BucketConfigs() {
		fmt.Fprintf(&b, "| `%s` | %s | KV | %s | %s | %s | %s |\n", kv.Bucket, bucketConst(kv.Bucket), days(kv.TTL),
			names(rolesWhere(publishes, "$KV."+kv.Bucket+".x")), names(streamReaders("KV_"+kv.Bucket)), kv.Description)
	}
	for _, o := range s.ObjectStoreConfigs() {
		fmt.Fprintf(&b, "| `%s` | %s | object store | %s (--%s-retention) | %s | %s | %s |\n", o.Bucket, bucketConst(o.Bucket), days(o.TTL),
			map[string]string{BucketLogs: "log", BucketArtifacts: "artifact"}[o.Bucket],
			names(rolesWhere(publishes, "$O."+o.Bucket+".x")), names(streamReaders("OBJ_"+o.Bucket)), o.Description)
	}
	b.WriteString(`
Keys: jetci-results ` + "`<repo>.<branch>.<job-id>`" + `; jetci-runners ` + "`runner.<id>`" + ` (a Lease);
jetci-reaped one per job attempt (ReapKey); jetci-logs ` + "`<job-id>/<queue-seq>-<attempt>.log`" + ` (LogObject);
jetci-artifacts ` + "`<job-id>/<queue-seq>-<attempt>/<path>`" + ` (ArtifactObject); jetci-bisect
` + "`b.<repo>.<branch>.<job-id>`" + ` (BisectKey), ` + "`c.…`" + ` and ` + "`o.…`" + `.
`)
	return b.String()
}

var streamConsts = map[string]string{StreamCommits: "StreamCommits", StreamJobs: "StreamJobs", StreamResults: "StreamResults",
	StreamDead: "StreamDead", StreamLogs: "StreamLogs", StreamNotify: "StreamNotify", StreamBranch: "StreamBranch", StreamBisect: "StreamBisect",
	StreamHealth: "StreamHealth"}

func streamConst(name string) string { return streamConsts[name] }

var bucketConsts = map[string]string{BucketHeads: "BucketHeads", BucketResults: "BucketResults", BucketRunners: "BucketRunners",
	BucketReaped: "BucketReaped", BucketLogs: "BucketLogs", BucketArtifacts: "BucketArtifacts", BucketCancel: "BucketCancel",
	BucketNotify: "BucketNotify", BucketSent: "BucketSent", BucketBranches: "BucketBranches", BucketHeld: "BucketHeld",
	BucketSchedule: "BucketSchedule", BucketTests: "BucketTests", BucketBisect: "BucketBisect", BucketForgeries: "BucketForgeries",
	BucketSessions: "BucketSessions", BucketDeliveries: "BucketDeliveries", BucketKeys: "BucketKeys"}

func bucketConst(name string) string { return bucketConsts[name] }
