package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// TestPutObjectResumesWithoutPartials: an attempt cut short after two of four
// chunks (and one of them arriving twice, as from a reconnect buffer) is
// resumed by the next: the object reads back whole through the object store's
// own Get, the chunk subject holds exactly its four chunks, and a repeated put
// changes nothing.
func TestPutObjectResumesWithoutPartials(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	data := make([]byte, 3*objChunkSize+1000)
	_, _ = rand.Read(data)
	path := filepath.Join(t.TempDir(), "job.log")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	const name = "job-1/7-1.log"
	nuid := objectNUID(events.BucketLogs, name, 0)
	subj := "$O." + events.BucketLogs + ".C." + nuid
	for _, i := range []int{0, 1, 1} { // the failed attempt, and a late duplicate
		m := nats.NewMsg(subj)
		m.Data = data[i*objChunkSize : (i+1)*objChunkSize]
		m.Header.Set(jetstream.MsgIDHeader, nuid+"."+strconv.Itoa(i))
		if _, err := s.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	store, err := s.JS.ObjectStore(ctx, events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.GetInfo(ctx, name); err == nil {
		t.Fatal("a half-written object is visible")
	}
	stream, err := s.JS.Stream(ctx, "OBJ_"+events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	for try := range 2 {
		n, _, err := putObject(ctx, s.JS, events.BucketLogs, name, "job log", path, -1)
		if err != nil || n != int64(len(data)) {
			t.Fatalf("put %d: %d bytes, %v", try, n, err)
		}
		obj, err := store.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(obj)
		obj.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("put %d: read back %d bytes (%v), want the %d written", try, len(got), err, len(data))
		}
		if c, err := subjectCount(ctx, stream, subj); err != nil || c != 4 {
			t.Fatalf("put %d: %d chunks on the subject (%v), want 4", try, c, err)
		}
	}

	// A limit cuts the object; an empty file is an empty object.
	if n, _, err := putObject(ctx, s.JS, events.BucketLogs, "cut", "", path, 10); err != nil || n != 10 {
		t.Fatalf("limited put: %d, %v", n, err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o644)
	if _, _, err := putObject(ctx, s.JS, events.BucketLogs, "empty", "", empty, -1); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"cut": data[:10], "empty": {}} {
		b, err := store.GetBytes(ctx, name)
		if err != nil || !bytes.Equal(b, want) {
			t.Errorf("%s: %q, %v", name, b, err)
		}
	}
}

// TestSpooledLogIsStoredByTheNextRunner: a log left in the spool by a runner
// that stopped before the store answered is stored by the next runner started
// on the same work directory, and leaves the spool.
func TestSpooledLogIsStoredByTheNextRunner(t *testing.T) {
	s := brokertest.Run(t)
	work := t.TempDir()
	const name = "job-9/3-1.log"
	if err := os.MkdirAll(filepath.Join(work, "spool"), 0o755); err != nil {
		t.Fatal(err)
	}
	spooled := filepath.Join(work, "spool", hex.EncodeToString([]byte(name))+".log")
	if err := os.WriteFile(spooled, []byte("kept output\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	startRunner(t, s, func(c *Config) { c.WorkDir = work })
	store, err := s.JS.ObjectStore(context.Background(), events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		b, err := store.GetBytes(context.Background(), name)
		if err != nil {
			return err
		}
		if string(b) != "kept output\n" {
			return fmt.Errorf("stored %q", b)
		}
		if _, err := os.Stat(spooled); !os.IsNotExist(err) {
			return fmt.Errorf("still spooled: %v", err)
		}
		return nil
	})
}

// TestPutFreshObject: a log of one chunk (chunk and meta published together)
// and one of several (chunk by chunk) read back whole through the object
// store's Get; and a one-chunk object whose meta landed while its chunk did
// not (what a failed put together can leave) is made whole by the spool's
// putObject of the same name.
func TestPutFreshObject(t *testing.T) {
	s := brokertest.Run(t)
	ctx := context.Background()
	store, err := s.JS.ObjectStore(ctx, events.BucketLogs)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 100, objChunkSize, 2*objChunkSize + 5} {
		data := make([]byte, size)
		_, _ = rand.Read(data)
		path := filepath.Join(t.TempDir(), "job.log")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("fresh-%d.log", size)
		if err := putFreshObject(ctx, s.JS, events.BucketLogs, name, "job log", path); err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		got, err := store.GetBytes(ctx, name)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back %d bytes, %v", size, len(got), err)
		}
		digest, err := fileDigest(path)
		if info, ierr := store.GetInfo(ctx, name); ierr != nil || err != nil || info.Digest != digest {
			t.Fatalf("%d bytes: digest %v against %s (%v, %v)", size, info, digest, ierr, err)
		}
	}

	data := []byte("a log whose chunk was lost\n")
	path := filepath.Join(t.TempDir(), "lost.log")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	const name = "lost-chunk.log"
	digest, _ := fileDigest(path)
	if err := putMeta(ctx, s.JS, events.BucketLogs, name, "job log", objectNUID(events.BucketLogs, name, 0), int64(len(data)), 1, digest); err != nil {
		t.Fatal(err)
	}
	if got, err := store.GetBytes(ctx, name); err == nil && bytes.Equal(got, data) {
		t.Fatal("the object reads whole without its chunk")
	}
	if _, _, err := putObject(ctx, s.JS, events.BucketLogs, name, "job log", path, -1); err != nil {
		t.Fatal(err)
	}
	if got, err := store.GetBytes(ctx, name); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the spool's put: %q, %v", got, err)
	}
}
