package broker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/internal/disktest"
)

func waitFor(t *testing.T, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFullDiskIsReportedAndRecovers fills a real (tmpfs) disk under the store:
// writes fail, StorageProblem says why, and once space is freed the server
// takes writes again by itself (the embedded server restarts itself), keeping what it stored;
// a server stopped while its disk is full stops promptly.
func TestFullDiskIsReportedAndRecovers(t *testing.T) {
	mnt := disktest.Small(t, "24m")
	s, err := Start(Config{Listen: "127.0.0.1:0", StoreDir: filepath.Join(mnt, "nats"), DiskCheck: 100 * time.Millisecond, DiskLow: 1 << 20}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	publish := func() error {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := js.Publish(c, "s.x", make([]byte, 64<<10))
		return err
	}
	for range 3 {
		if err := publish(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.StorageProblem(); err != nil {
		t.Fatalf("an empty disk: %v", err)
	}

	fill := filepath.Join(mnt, "fill")
	disktest.Fill(t, fill)
	waitFor(t, 30*time.Second, func() error {
		_ = publish()
		if err := s.StorageProblem(); err == nil || !strings.Contains(err.Error(), "cannot write its store") {
			return errors.New("no storage problem reported on a full disk")
		}
		return nil
	})
	t.Logf("reported: %v", s.StorageProblem())
	if err := publish(); err == nil {
		t.Fatal("a publish on a full disk succeeded")
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitFor(t, 60*time.Second, func() error {
		if err := publish(); err != nil {
			return err
		}
		return s.StorageProblem()
	})
	t.Logf("writes taken again %s after space was freed", time.Since(freed).Round(time.Millisecond))
	st, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs < 4 {
		t.Fatalf("after recovery: %v, %d messages, want the 3 from before and 1 after", err, info.State.Msgs)
	}

	// Full again, then stopped: the stop does not hang on the failing store.
	disktest.Fill(t, fill)
	waitFor(t, 30*time.Second, func() error {
		_ = publish()
		if s.StorageProblem() == nil {
			return errors.New("no storage problem reported on a full disk")
		}
		return nil
	})
	done := make(chan struct{})
	go func() { s.Shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown on a full disk did not return within 20s")
	}
}
