package events_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

func TestSetupIsIdempotentAndPartitionsDoNotOverlap(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	info, err := s.JS.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().Config.Retention; got != jetstream.WorkQueuePolicy {
		t.Fatalf("jobs retention %v, want work queue", got)
	}
	// Consumers for two arches and all classes must coexist on the work queue
	// (overlapping filters are refused with error 10100), and creating them twice
	// (dispatcher and runner both do) must work.
	for i := 0; i < 2; i++ {
		for _, arch := range []string{"amd64", "arm64"} {
			if _, err := events.EnsureJobConsumers(ctx, s.JS, "default", arch); err != nil {
				t.Fatalf("EnsureJobConsumers(%s) #%d: %v", arch, i, err)
			}
		}
	}
	// A job published to a partition is seen by that partition's consumer only.
	subj := events.JobSubject("default", "arm64", events.ClassFirst, "repo", "a>b")
	if _, err := s.JS.Publish(ctx, subj, []byte(`{}`), jetstream.WithMsgID("x")); err != nil {
		t.Fatal(err)
	}
	ack, err := s.JS.Publish(ctx, subj, []byte(`{}`), jetstream.WithMsgID("x"))
	if err != nil || !ack.Duplicate {
		t.Fatalf("second publish with the same Msg-Id: dup=%v err=%v, want a duplicate", ack != nil && ack.Duplicate, err)
	}
	for _, c := range []struct {
		arch string
		cls  events.Class
		want uint64
	}{{"arm64", events.ClassFirst, 1}, {"amd64", events.ClassFirst, 0}, {"arm64", events.ClassUser, 0}} {
		cons, err := s.JS.Consumer(ctx, events.StreamJobs, events.JobConsumerName("default", c.arch, c.cls))
		if err != nil {
			t.Fatal(err)
		}
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.NumPending != c.want {
			t.Errorf("%s/%s pending %d, want %d", c.arch, c.cls, ci.NumPending, c.want)
		}
	}
	if _, err := s.JS.KeyValue(ctx, events.BucketResults); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JS.ObjectStore(ctx, events.BucketLogs); errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatal("no logs object store")
	}
}

func TestEnsureRetention(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	ttl := func(bucket string) time.Duration {
		obs, err := s.JS.ObjectStore(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		st, err := obs.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.TTL()
	}
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if got := ttl(events.BucketLogs); got != events.LogRetention {
		t.Fatalf("default log retention %s", got)
	}
	set := events.DefaultSetup()
	set.LogRetention, set.ArtifactRetention = 48*time.Hour, 7*24*time.Hour
	if err := set.Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if a, b := ttl(events.BucketLogs), ttl(events.BucketArtifacts); a != 48*time.Hour || b != 7*24*time.Hour {
		t.Fatalf("after setting: logs %s artifacts %s", a, b)
	}
	// A process started without the setting (a runner) leaves it alone.
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if got := ttl(events.BucketLogs); got != 48*time.Hour {
		t.Fatalf("a default Ensure reset log retention to %s", got)
	}
}

// TestMsgGone: a delete of a message already deleted (another dispatcher
// superseded it, a runner took it) and a get of a missing one are "gone",
// wherever the message was and on either storage; other errors are not.
func TestMsgGone(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	for _, storage := range []jetstream.StorageType{jetstream.FileStorage, jetstream.MemoryStorage} {
		name := "GONE" + storage.String()
		st, err := s.JS.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: storage,
			Retention: jetstream.WorkQueuePolicy})
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		for range 5 {
			ack, err := s.JS.Publish(ctx, name+".x", []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, ack.Sequence)
		}
		// The first, one in the middle, the last, and one never stored.
		for _, seq := range []uint64{seqs[0], seqs[2], seqs[4]} {
			if err := st.DeleteMsg(ctx, seq); err != nil {
				t.Fatal(err)
			}
			if err := st.DeleteMsg(ctx, seq); !events.MsgGone(err) {
				t.Errorf("%s: second delete of %d: %v, want gone", name, seq, err)
			}
			if _, err := st.GetMsg(ctx, seq); !events.MsgGone(err) {
				t.Errorf("%s: get of deleted %d: %v, want gone", name, seq, err)
			}
		}
		if err := st.DeleteMsg(ctx, seqs[4]+10); !events.MsgGone(err) {
			t.Errorf("%s: delete of a sequence never stored: %v, want gone", name, err)
		}
	}
	if events.MsgGone(nil) || events.MsgGone(errors.New("timeout")) || events.MsgGone(jetstream.ErrStreamNotFound) ||
		events.MsgGone(fmt.Errorf("%w: nats: API error: code=500 err_code=10057 description=write failed", jetstream.ErrMsgDeleteUnsuccessful)) {
		t.Error("MsgGone of other errors")
	}
}

// TestEnsureUpdatesExisting: with Update, Ensure brings existing streams and
// buckets back to jetci's configuration and says what it changed; without,
// it leaves them; what the server cannot change is reported, not attempted.
func TestEnsureUpdatesExisting(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	var notes []string
	upd := events.DefaultSetup()
	upd.Update = true
	upd.Note = func(m string) { notes = append(notes, m) }
	// A fresh deployment is already what jetci wants: nothing to change.
	if err := upd.Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if len(notes) > 0 {
		t.Fatalf("Ensure with Update on a fresh deployment changed: %q", notes)
	}
	config := func(name string) jetstream.StreamConfig {
		st, err := s.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config
	}
	// Someone (an older jetci) left other settings.
	for _, name := range []string{events.StreamCommits, "KV_" + events.BucketSessions} {
		c := config(name)
		c.MaxAge, c.Description = 2*time.Hour, "old"
		if _, err := s.JS.UpdateStream(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := events.DefaultSetup().Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if c := config(events.StreamCommits); c.MaxAge != 2*time.Hour {
		t.Fatalf("Ensure without Update changed max_age to %s", c.MaxAge)
	}
	upd.LiveLogBytes = 32 << 20
	if err := upd.Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if c := config(events.StreamCommits); c.MaxAge != 90*24*time.Hour || c.Description != "every new commit seen by an observer" {
		t.Errorf("after Update: %s max_age %s, description %q", events.StreamCommits, c.MaxAge, c.Description)
	}
	if c := config("KV_" + events.BucketSessions); c.MaxAge != 24*time.Hour {
		t.Errorf("after Update: bucket %s ttl %s, want 24h", events.BucketSessions, c.MaxAge)
	}
	if c := config(events.StreamLogs); c.MaxBytes != 32<<20 {
		t.Errorf("after Update with LiveLogBytes 32MiB: %s max_bytes %d", events.StreamLogs, c.MaxBytes)
	}
	all := fmt.Sprint(notes)
	for _, want := range []string{"stream " + events.StreamCommits + " updated: description old →", "max_age 2h0m0s → 2160h0m0s",
		"bucket " + events.BucketSessions + " updated", "stream " + events.StreamLogs + " updated: max_bytes"} {
		if !strings.Contains(all, want) {
			t.Errorf("notes lack %q: %q", want, notes)
		}
	}
	// Memory storage cannot replace file storage on existing streams: said, not done.
	notes = nil
	mem := upd
	mem.Storage = jetstream.MemoryStorage
	if err := mem.Ensure(ctx, s.JS); err != nil {
		t.Fatal(err)
	}
	if c := config(events.StreamJobs); c.Storage != jetstream.FileStorage {
		t.Fatalf("storage changed to %s", c.Storage)
	}
	if all := fmt.Sprint(notes); !strings.Contains(all, "stream "+events.StreamJobs+": its storage is File, jetci's is Memory; the server cannot change it") {
		t.Errorf("notes do not say the storage cannot change: %q", notes)
	}
}
