package events

import (
	"errors"
	"testing"
	"time"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	ref := JobRef{JobID: JobID("r", "a>b", "c0ffee", "test", "amd64"), Repo: "r", Branch: "a>b", Commit: "c0ffee", Job: "test", Arch: "amd64"}
	msgs := []any{
		&CommitDetected{Repo: "r", Branch: "fix/ünï", Commit: "c0ffee", Class: ClassFirst, Time: time.Unix(1, 0).UTC()},
		&JobQueued{JobRef: ref, Pool: "default", Class: ClassUser, Steps: []string{"true"}},
		&JobStarted{JobRef: ref, Attempt: 2, Runner: "r1"},
		&JobFinished{JobRef: ref, Status: StatusFailed, ExitCode: 3},
		&TriggerRequest{Repo: "r", Branch: "main"},
		&Bisection{ID: ref.JobID, Repo: "r", Branch: "a>b", Job: "test", Arch: "amd64", State: BisectRunning,
			Commits: []BisectCommit{{Commit: "c0", Status: StatusPassed}, {Commit: "c1"}}, Steps: []BisectStep{{Kind: StepBisect, Commit: "c1"}}},
	}
	for _, m := range msgs {
		data, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%T): %v", m, err)
		}
		got, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode(%s): %v", data, err)
		}
		if _, ok := got.(interface{ check() error }); !ok {
			t.Fatalf("Decode gave %T", got)
		}
	}
}

func TestDecodeRejectsBadMessages(t *testing.T) {
	for _, in := range []string{
		``, `{`, `[]`, `{}`, `{"type":"jetci.nope.v1"}`, `{"type":"jetci.commit.detected.v1"}`,
		`{"type":"jetci.job.finished.v1","job_id":"x","repo":"r","branch":"b","commit":"c","job":"j","arch":"a","status":"running"}`,
		`{"type":"jetci.job.queued.v1","job_id":1}`,
		`{"type":"jetci.bisect.state.v1","id":"x","repo":"r","branch":"b","job":"j","arch":"a"}`,
		`{"type":"jetci.bisect.state.v1","id":"x","repo":"r","branch":"b","job":"j","arch":"a","state":"found","steps":{}}`,
	} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrBadMessage) {
			t.Errorf("Decode(%q) = %v, want ErrBadMessage", in, err)
		}
	}
	if _, err := DecodeAs[JobQueued]([]byte(`{"type":"jetci.trigger.request.v1","repo":"r","branch":"b"}`)); !errors.Is(err, ErrBadMessage) {
		t.Errorf("DecodeAs with the wrong type = %v, want ErrBadMessage", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"type":"jetci.commit.detected.v1","repo":"r","branch":"b","commit":"c","class":"first"}`))
	f.Add([]byte(`{"type":"jetci.job.finished.v1"}`))
	f.Add([]byte(`{"type":"jetci.bisect.state.v1","id":"x","repo":"r","branch":"b","job":"j","arch":"a","state":"found","culprit":{"commit":"c"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil && !errors.Is(err, ErrBadMessage) {
			t.Fatalf("Decode error %v does not wrap ErrBadMessage", err)
		}
		if err == nil && m == nil {
			t.Fatal("nil message without error")
		}
	})
}

func TestModuleFieldsRoundTrip(t *testing.T) {
	ref := JobRef{Repo: "r", Branch: "main", Commit: "c0ffee", Job: "test", Arch: "amd64", Module: "core"}
	ref.JobID = JobID(ref.Repo, ref.Branch, ref.Commit, ref.QualifiedJob(), ref.Arch)
	if ref.QualifiedJob() != "core/test" || ref.JobID == JobID("r", "main", "c0ffee", "test", "amd64") {
		t.Fatalf("%q %s: a module's job must not share the plain job's id", ref.QualifiedJob(), ref.JobID)
	}
	data, err := Encode(&JobFinished{JobRef: ref, Status: StatusPassed})
	if err != nil {
		t.Fatal(err)
	}
	fin, err := DecodeAs[JobFinished](data)
	if err != nil || fin.Module != "core" {
		t.Fatalf("got %+v, %v from %s", fin, err, data)
	}
	ev := &CommitDetected{Repo: "r", Branch: "b", Commit: "c", Class: ClassUser, OnlyModule: "core", NewBranch: true,
		ModuleGlobs: &GlobCheck{Checked: 3, Dead: []string{"x/**"}}}
	if data, err = Encode(ev); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeAs[CommitDetected](data)
	if err != nil || got.OnlyModule != "core" || !got.NewBranch || got.ModuleGlobs == nil || got.ModuleGlobs.Dead[0] != "x/**" {
		t.Fatalf("got %+v, %v from %s", got, err, data)
	}
	if QualifiedJob("", "test") != "test" {
		t.Fatal("a plain job's name changed")
	}
}
