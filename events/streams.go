package events

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stream, consumer and bucket names.
const (
	StreamCommits = "JETCI_COMMITS"
	StreamJobs    = "JETCI_JOBS"
	StreamResults = "JETCI_RESULTS"
	StreamDead    = "JETCI_DEAD"
	StreamLogs    = "JETCI_LOGS"
	StreamNotify  = "JETCI_NOTIFY"
	StreamBranch  = "JETCI_BRANCHES"
	StreamBisect  = "JETCI_BISECT"
	StreamHealth  = "JETCI_HEALTH"

	// SubjectMaxDeliveries is the server's advisory for a job that reached
	// JobMaxDeliver; JETCI_DEAD keeps these so none is missed while no
	// dispatcher runs.
	SubjectMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamJobs + ".*"

	ConsumerDispatcher       = "dispatcher"
	ConsumerReporter         = "reporter"
	ConsumerDead             = "dead-letters"
	ConsumerNotifier         = "notifier"
	ConsumerNotifierResults  = "notifier-results"
	ConsumerGate             = "gate"
	ConsumerNotifierBranches = "notifier-branches"
	ConsumerBisect           = "bisect"
	ConsumerBisectCommits    = "bisect-commits"
	ConsumerNotifierBisect   = "notifier-bisect"
	ConsumerNotifierQueued   = "notifier-queued" // queued jobs, for pending commit statuses

	BucketHeads     = "jetci-heads"
	BucketResults   = "jetci-results"
	BucketRunners   = "jetci-runners"
	BucketReaped    = "jetci-reaped"
	BucketLogs      = "jetci-logs"
	BucketArtifacts = "jetci-artifacts"
	BucketCancel    = "jetci-cancel"
	BucketNotify    = "jetci-notify"
	BucketSent      = "jetci-sent"
	BucketBranches  = "jetci-branches"
	BucketHeld      = "jetci-held"
	BucketSchedule  = "jetci-schedule"
	// BucketTests keeps per-test history per repo, branch, arch and job
	// (the reporter's flaky and slowest tests), under TestsKey.
	BucketTests  = "jetci-tests"
	BucketBisect = "jetci-bisect"
	// BucketForgeries keeps what the reporter refused as forged (a result
	// without a valid signature, a claim on another runner's delivery, a
	// replay, a log or artifact replaced after its run), by digest.
	BucketForgeries = "jetci-forgeries"
	// BucketSessions keeps the web UI's login sessions (by a hash of their
	// id, with their expiry), so that every reporter knows them and a
	// logout ends one everywhere.
	BucketSessions = "jetci-sessions"
	// BucketDeliveries remembers the push hooks the reporters received (by
	// delivery id and by body) for a day, to refuse replays.
	BucketDeliveries = "jetci-deliveries"
)

// Defaults shared by every process, so that whichever process creates a stream or
// consumer first creates the same thing.
const (
	DedupWindow   = time.Hour
	JobAckWait    = 30 * time.Second // backstop; runners send in-progress acks every AckWait/3
	JobMaxDeliver = 10
	// A runner refreshes its lease (its entry in jetci-runners) every LeaseRenew;
	// an entry not refreshed for LeaseTTL expires, and the dispatcher hands the
	// jobs it names back to the queue at once.
	LeaseRenew   = time.Second
	LeaseTTL     = 3 * time.Second
	LogRetention = 30 * 24 * time.Hour
	// LiveLogAge is how long JETCI_LOGS keeps live log chunks, so a job page
	// opened in the middle of a run shows the output from its start; the full
	// log is in the logs bucket once the job is done.
	LiveLogAge   = 24 * time.Hour
	LiveLogBytes = 1 << 30
	// RebuildWindow is how long JETCI_RESULTS keeps job events and the
	// jetci-results bucket a record nothing wrote to since: the reporters'
	// read models keep history beyond it, and a read model rebuilt from the
	// stream (jetci reindex) holds the jobs of this window.
	RebuildWindow = 90 * 24 * time.Hour
	// OutboxMax bounds the notifications waiting to be sent (JETCI_NOTIFY);
	// beyond it new ones are refused and counted as failed.
	OutboxMax = 10000
)

// Setup describes how streams and buckets are created.
type Setup struct {
	Replicas int                   // 1 for a single server, 3 for a cluster
	Storage  jetstream.StorageType // file by default
	// LogRetention and ArtifactRetention are how long full logs and artifacts
	// are kept. 0 creates missing buckets with LogRetention and leaves
	// existing ones alone; a set value is applied to existing buckets too.
	LogRetention      time.Duration
	ArtifactRetention time.Duration
	// LiveLogBytes is the space JETCI_LOGS may use (JetStream reserves it when
	// the stream is created). 0 creates the stream with CreateLiveLogBytes, or
	// else LiveLogBytes, and leaves an existing stream's limit alone; a set
	// value is applied to an existing stream too (with Update).
	LiveLogBytes int64
	// CreateLiveLogBytes replaces the default of LiveLogBytes when the stream
	// is created, and only then (jetci up sizes it to the disk: see
	// LiveLogBytesFor).
	CreateLiveLogBytes int64
	// Update applies this Setup to the streams and buckets that exist already:
	// their limits (age, size, count, history, duplicate window), discard
	// policy, subjects, description and replicas. jetci setup, jetci server
	// (with the admin's credentials) and jetci up set it; the services leave
	// it false and only create what is missing, so a service started with
	// defaults never undoes the admin's settings. What the server cannot change
	// on an existing stream (its storage type and retention policy) is left as
	// it is and reported through Note.
	Update bool
	// Note, if set, hears of every change made to an existing stream or
	// bucket, and of every difference that cannot be changed.
	Note func(msg string)
}

// Bounds of the JETCI_LOGS reservation sized to a disk.
const (
	liveLogShare = 8        // at most an eighth of the store's free space
	liveLogMin   = 16 << 20 // and never less than 16 MiB
)

// LiveLogBytesFor sizes the JETCI_LOGS reservation to a store with free bytes
// free: LiveLogBytes (1 GiB) when there is room, else an eighth of the free
// space, at least 16 MiB. free < 0 (unknown) gives LiveLogBytes.
func LiveLogBytesFor(free int64) int64 {
	if free < 0 || free/liveLogShare >= LiveLogBytes {
		return LiveLogBytes
	}
	return max(free/liveLogShare, liveLogMin)
}

// DefaultSetup is one replica on file storage.
func DefaultSetup() Setup { return Setup{Replicas: 1, Storage: jetstream.FileStorage} }

func (s Setup) retention(d time.Duration) time.Duration {
	if d <= 0 {
		return LogRetention
	}
	return d
}

func (s Setup) liveLogBytes() int64 {
	if s.LiveLogBytes > 0 {
		return s.LiveLogBytes
	}
	if s.CreateLiveLogBytes > 0 {
		return s.CreateLiveLogBytes
	}
	return LiveLogBytes
}

func (s Setup) note(format string, args ...any) {
	if s.Note != nil {
		s.Note(fmt.Sprintf(format, args...))
	}
}

// SetupFor fits the server nc is connected to: three replicas of everything
// on a JetStream cluster, so losing a node loses nothing; one otherwise.
func SetupFor(nc *nats.Conn) Setup {
	s := DefaultSetup()
	if nc.ConnectedClusterName() != "" {
		s.Replicas = 3
	}
	return s
}

// StreamConfigs returns the configuration of every jetci stream.
func (s Setup) StreamConfigs() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name: StreamCommits, Subjects: []string{SubjectCommits + ".>"},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			Duplicates: DedupWindow, MaxAge: 90 * 24 * time.Hour,
			Description: "every new commit seen by an observer",
		},
		{
			Name: StreamJobs, Subjects: []string{SubjectJobs + ".>"},
			Retention: jetstream.WorkQueuePolicy, Storage: s.Storage, Replicas: s.Replicas,
			Duplicates:  DedupWindow,
			Description: "jobs waiting for a runner, one partition per pool, arch, class, repo and branch",
		},
		{
			Name: StreamResults, Subjects: []string{SubjectResults + ".>"},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			Duplicates: DedupWindow, MaxAge: RebuildWindow,
			Description: "queued, started and finished events of every job",
		},
		{
			Name: StreamDead, Subjects: []string{SubjectMaxDeliveries},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			MaxAge:      30 * 24 * time.Hour,
			Description: "jobs that reached their delivery limit, to be recorded as errors and taken out of the queue",
		},
		{
			Name: StreamLogs, Subjects: []string{SubjectLogs + ".>"},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			MaxAge: LiveLogAge, MaxBytes: s.liveLogBytes(), Discard: jetstream.DiscardOld,
			Description: "live output of running jobs, for job pages opened mid-run",
		},
		{
			Name: StreamNotify, Subjects: []string{SubjectNotify + ".>"},
			Retention: jetstream.WorkQueuePolicy, Storage: s.Storage, Replicas: s.Replicas,
			Duplicates: DedupWindow, MaxMsgs: OutboxMax, Discard: jetstream.DiscardNew,
			Description: "outbox: mails and webhook deliveries waiting to be sent",
		},
		{
			Name: StreamBranch, Subjects: []string{SubjectBranch + ".>"},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			MaxAge: 90 * 24 * time.Hour, MaxMsgsPerSubject: 1000,
			Description: "every state change of branches under the broken-build flow",
		},
		{
			Name: StreamBisect, Subjects: []string{SubjectBisect + ".>"},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			MaxAge: 90 * 24 * time.Hour, MaxMsgsPerSubject: 1000, Duplicates: DedupWindow,
			Description: "every step of the culprit searches (bisections) of each branch",
		},
		{
			Name: StreamHealth, Subjects: []string{SubjectHealth + ".>"},
			Retention: jetstream.LimitsPolicy, Storage: s.Storage, Replicas: s.Replicas,
			MaxAge: time.Hour, MaxMsgsPerSubject: 1, MaxBytes: 1 << 20, Discard: jetstream.DiscardOld,
			Description: "the services' write probes: the last one of each process, to tell a server that takes no write",
		},
	}
}

// BucketConfigs returns the configuration of every jetci key-value bucket,
// the keys bucket (BucketKeys) included.
func (s Setup) BucketConfigs() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: BucketHeads, Description: "last published head per repo and branch", Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketResults, Description: "one record per job", Storage: s.Storage, Replicas: s.Replicas, TTL: RebuildWindow},
		{Bucket: BucketRunners, Description: "live runners and the jobs they hold (leases)", Storage: s.Storage, Replicas: s.Replicas,
			TTL: LeaseTTL, LimitMarkerTTL: 10 * time.Second},
		{Bucket: BucketReaped, Description: "who decided the fate of jobs under expired leases", Storage: s.Storage, Replicas: s.Replicas,
			TTL: 24 * time.Hour},
		{Bucket: BucketCancel, Description: "cancel requests, by job id", Storage: s.Storage, Replicas: s.Replicas,
			TTL: 24 * time.Hour},
		{Bucket: BucketNotify, Description: "notification state per repo, branch, job and arch", Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketBranches, Description: "broken-build flow: the state of each gated branch", Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketHeld, Description: "broken-build flow: commits held until their branch opens, <repo>.<branch>.<commit-seq>", Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketSchedule, Description: "when the periodic full check last ran", Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketTests, Description: "per-test history per repo, branch, arch and job", Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketBisect, Description: "culprit finding: bisections (b.), and the commits (c.) and job outcomes (o.) of bisected branches",
			Storage: s.Storage, Replicas: s.Replicas, TTL: 90 * 24 * time.Hour},
		{Bucket: BucketForgeries, Description: "result events, logs and artifacts refused as forged, for the admins", Storage: s.Storage,
			Replicas: s.Replicas, TTL: 90 * 24 * time.Hour, History: 1},
		{Bucket: BucketSessions, Description: "web UI login sessions, by a hash of their id", Storage: s.Storage,
			Replicas: s.Replicas, TTL: 24 * time.Hour, History: 1},
		{Bucket: BucketDeliveries, Description: "push hook deliveries received, to refuse replays", Storage: s.Storage,
			Replicas: s.Replicas, TTL: 24 * time.Hour, History: 1},
		{Bucket: BucketSent, Description: "notifications sent (or being sent), so none goes out twice", Storage: s.Storage, Replicas: s.Replicas,
			TTL: 30 * 24 * time.Hour},
		s.keysConfig(),
	}
}

// ObjectStoreConfigs returns the configuration of jetci's object stores.
func (s Setup) ObjectStoreConfigs() []jetstream.ObjectStoreConfig {
	return []jetstream.ObjectStoreConfig{
		{Bucket: BucketLogs, Description: "full job logs", TTL: s.retention(s.LogRetention), Compression: true,
			Storage: s.Storage, Replicas: s.Replicas},
		{Bucket: BucketArtifacts, Description: "files jobs left for download", TTL: s.retention(s.ArtifactRetention),
			Storage: s.Storage, Replicas: s.Replicas},
	}
}

// Ensure creates every stream and bucket that does not exist yet. With
// Update, it also applies the Setup to existing ones (see Setup.Update);
// without, existing ones are left as they are, but for retentions given
// explicitly (LogRetention, ArtifactRetention).
func (s Setup) Ensure(ctx context.Context, js jetstream.JetStream) error {
	for _, cfg := range s.StreamConfigs() {
		if st, err := js.Stream(ctx, cfg.Name); err == nil {
			if !s.Update {
				continue
			}
			have := st.CachedInfo().Config
			if cfg.Name == StreamLogs && s.LiveLogBytes == 0 {
				cfg.MaxBytes = have.MaxBytes // sized at creation; only a given size changes it
			}
			if err := s.updateStream(ctx, js, "stream "+cfg.Name, have, cfg); err != nil {
				return err
			}
			continue
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
		if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			if cfg.MaxBytes > 0 && IsStorageFull(err) {
				return fmt.Errorf("create stream %s: %w: it reserves %d bytes, more than the server's JetStream storage has left; "+
					"create it with less first (jetci setup --live-logs-max 64MiB; jetci up and jetci server take the flag too), or free or add disk space under the server's store_dir", cfg.Name, err, cfg.MaxBytes)
			}
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range s.BucketConfigs() {
		if _, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
			if s.Update {
				if err := s.updateBucket(ctx, js, cfg); err != nil {
					return err
				}
			}
			continue
		} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		if cfg.Bucket == BucketKeys {
			continue // EnsureKeys makes it with its service key
		}
		if _, err := js.CreateKeyValue(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
			return fmt.Errorf("create bucket %s: %w", cfg.Bucket, err)
		}
	}
	if err := EnsureKeys(ctx, js, s); err != nil {
		return err
	}
	for i, cfg := range s.ObjectStoreConfigs() {
		set := []time.Duration{s.LogRetention, s.ArtifactRetention}[i] > 0
		if err := ensureObjectStore(ctx, js, cfg, set); err != nil {
			return err
		}
		if s.Update {
			st, err := js.Stream(ctx, "OBJ_"+cfg.Bucket)
			if err != nil {
				return fmt.Errorf("object store %s: %w", cfg.Bucket, err)
			}
			have := st.CachedInfo().Config
			want := have
			want.Description, want.Replicas, want.Storage = cfg.Description, cfg.Replicas, cfg.Storage
			if err := s.updateStream(ctx, js, "object store "+cfg.Bucket, have, want); err != nil {
				return err
			}
		}
	}
	return nil
}

// updateBucket applies cfg to the stream under an existing key-value bucket.
func (s Setup) updateBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	st, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	have := st.CachedInfo().Config
	want := have
	want.Description, want.MaxAge, want.Replicas, want.Storage = cfg.Description, cfg.TTL, cfg.Replicas, cfg.Storage
	want.MaxMsgsPerSubject = max(int64(cfg.History), 1)
	if cfg.LimitMarkerTTL > 0 {
		want.AllowMsgTTL, want.SubjectDeleteMarkerTTL = true, cfg.LimitMarkerTTL
	}
	return s.updateStream(ctx, js, "bucket "+cfg.Bucket, have, want)
}

// updateStream makes an existing stream's configuration have what jetci
// manages of want, says what it changed (Note), and leaves and reports what
// the server cannot change.
func (s Setup) updateStream(ctx context.Context, js jetstream.JetStream, what string, have, want jetstream.StreamConfig) error {
	cfg := have
	cfg.Subjects = slices.Clone(have.Subjects)
	var changed []string
	set := func(name string, h, w any, apply func()) {
		if h != w {
			changed = append(changed, fmt.Sprintf("%s %v → %v", name, h, w))
			apply()
		}
	}
	limit := func(n int64) int64 { // 0 asks for no limit, which the server keeps as -1
		if n <= 0 {
			return -1
		}
		return n
	}
	if len(want.Subjects) > 0 && !slices.Equal(have.Subjects, want.Subjects) {
		changed = append(changed, fmt.Sprintf("subjects %v → %v", have.Subjects, want.Subjects))
		cfg.Subjects = slices.Clone(want.Subjects)
	}
	set("description", have.Description, want.Description, func() { cfg.Description = want.Description })
	set("max_age", have.MaxAge, want.MaxAge, func() { cfg.MaxAge = want.MaxAge })
	set("max_msgs", have.MaxMsgs, limit(want.MaxMsgs), func() { cfg.MaxMsgs = limit(want.MaxMsgs) })
	set("max_bytes", have.MaxBytes, limit(want.MaxBytes), func() { cfg.MaxBytes = limit(want.MaxBytes) })
	set("max_msgs_per_subject", have.MaxMsgsPerSubject, limit(want.MaxMsgsPerSubject), func() { cfg.MaxMsgsPerSubject = limit(want.MaxMsgsPerSubject) })
	set("discard", have.Discard, want.Discard, func() { cfg.Discard = want.Discard })
	set("replicas", max(have.Replicas, 1), max(want.Replicas, 1), func() { cfg.Replicas = max(want.Replicas, 1) })
	if want.AllowMsgTTL {
		set("allow_msg_ttl", have.AllowMsgTTL, true, func() { cfg.AllowMsgTTL = true })
		set("subject_delete_marker_ttl", have.SubjectDeleteMarkerTTL, want.SubjectDeleteMarkerTTL, func() { cfg.SubjectDeleteMarkerTTL = want.SubjectDeleteMarkerTTL })
	}
	if want.Duplicates > 0 {
		set("duplicate_window", have.Duplicates, want.Duplicates, func() { cfg.Duplicates = want.Duplicates })
	}
	if cfg.MaxAge > 0 && cfg.Duplicates > cfg.MaxAge {
		cfg.Duplicates = cfg.MaxAge // the server refuses a window longer than the age
	}
	if have.Retention != want.Retention {
		s.note("%s: its retention policy is %s, jetci's is %s; the server cannot change it on an existing stream: "+
			"to change it, delete the stream (losing its messages) and run jetci setup", what, have.Retention, want.Retention)
	}
	if have.Storage != want.Storage {
		s.note("%s: its storage is %s, jetci's is %s; the server cannot change it on an existing stream: "+
			"to change it, delete the stream (losing its messages) and run jetci setup", what, have.Storage, want.Storage)
	}
	if len(changed) == 0 {
		return nil
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("update %s (%s): %w", what, strings.Join(changed, ", "), err)
	}
	s.note("%s updated: %s", what, strings.Join(changed, ", "))
	return nil
}

// ensureObjectStore creates an object store, or updates the retention of an
// existing one when it differs (an operator changed --log-retention).
func ensureObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig, update bool) error {
	obs, err := js.ObjectStore(ctx, cfg.Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		if _, err := js.CreateObjectStore(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
			return fmt.Errorf("create object store %s: %w", cfg.Bucket, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("object store %s: %w", cfg.Bucket, err)
	case !update:
		return nil
	}
	st, err := obs.Status(ctx)
	if err != nil {
		return fmt.Errorf("object store %s: %w", cfg.Bucket, err)
	}
	if st.TTL() == cfg.TTL {
		return nil
	}
	cfg.Compression = st.IsCompressed()
	cfg.Replicas = st.Replicas()
	cfg.Storage = st.Storage()
	if _, err := js.UpdateObjectStore(ctx, cfg); err != nil {
		return fmt.Errorf("set retention of %s to %s: %w", cfg.Bucket, cfg.TTL, err)
	}
	return nil
}

// JobConsumerName is the durable consumer shared by the runners of one pool, arch
// and class.
func JobConsumerName(pool, arch string, class Class) string {
	return fmt.Sprintf("run-%s-%s-%s", pool, arch, class)
}

// JobConsumerConfig is the one definition of a job consumer; the dispatcher and the
// runners both create it with this configuration.
func JobConsumerConfig(pool, arch string, class Class) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       JobConsumerName(pool, arch, class),
		Description:   fmt.Sprintf("runners of pool %s, arch %s, class %s", pool, arch, class),
		FilterSubject: JobFilter(pool, arch, class),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       JobAckWait,
		MaxDeliver:    JobMaxDeliver,
		MaxAckPending: -1,
	}
}

// EnsureJobConsumers creates the consumers of every class for one pool and arch.
func EnsureJobConsumers(ctx context.Context, js jetstream.JetStream, pool, arch string) ([]jetstream.Consumer, error) {
	out := make([]jetstream.Consumer, 0, len(Classes))
	for _, c := range Classes {
		cfg := JobConsumerConfig(pool, arch, c)
		cons, err := js.Consumer(ctx, StreamJobs, cfg.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			cons, err = js.CreateConsumer(ctx, StreamJobs, cfg)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				cons, err = js.Consumer(ctx, StreamJobs, cfg.Durable)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", cfg.Durable, err)
		}
		out = append(out, cons)
	}
	return out, nil
}

// IsStorageFull reports whether err is JetStream refusing a write or a
// reservation for want of storage: a full disk, or the server's max_file_store
// reached ("insufficient resources", "storage resources exceeded", a store
// that failed to write).
func IsStorageFull(err error) bool {
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode {
		case 10023, 10047, 10077: // insufficient resources, storage resources exceeded, store failed
			return true
		}
	}
	return err != nil && (strings.Contains(err.Error(), "insufficient resources") || strings.Contains(err.Error(), "insufficient storage resources") ||
		strings.Contains(err.Error(), "no space left on device"))
}
