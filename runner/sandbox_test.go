//go:build linux

package runner

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// hostProcs lists the host's processes whose command line contains s.
func hostProcs(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// hostEnvHas reports whether some host process has s in its environment.
func hostEnvHas(s string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// TestSandboxContainsTheJob: a sandboxed job writes its workspace, TMPDIR and
// HOME and nothing else; it cannot read another slot's workspace, the
// runner's work dir or the runner's environment; what it leaves running after
// setsid and a double fork is gone when the job ends.
func TestSandboxContainsTheJob(t *testing.T) {
	requireSandbox(t)
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	outside := filepath.Join(t.TempDir(), "escaped")
	work := t.TempDir()
	// Another slot's workspace, with a file of its job's.
	other := filepath.Join(work, "slots", "7", "proj")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "theirs"), []byte("private"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another repo's cache.
	if err := os.MkdirAll(filepath.Join(work, "cache", "other.git"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "cache", "other.git", "config"), []byte("[core]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JETCI_RUNNER_CANARY", "canary-5a7e")
	startRunner(t, s, func(c *Config) { c.Exec, c.WorkDir = ExecSandbox, work })
	j := enqueueMod(t, s, repo, c, nil,
		"touch "+outside+" 2>/dev/null; touch /etc/jetci-escaped 2>/dev/null; touch /usr/jetci-escaped 2>/dev/null; true",
		`touch ws-ok "$HOME/home-ok" "$TMPDIR/tmp-ok" /tmp/tmp-ok`,
		"! cat "+filepath.Join(other, "theirs")+" 2>/dev/null",
		"! ls "+filepath.Join(work, "outbox")+" 2>/dev/null",
		"! cat "+filepath.Join(work, "cache", "other.git", "config")+" 2>/dev/null",
		`for f in /proc/[0-9]*/environ; do tr '\0' '\n' <"$f"; done 2>/dev/null | grep canary-5a7e && exit 1; true`,
		`test "$(ls -d /proc/[0-9]* | wc -l)" -lt 10`,
		"(setsid sh -c 'sleep 300.4711 & sleep 300.4712 &' </dev/null >/dev/null 2>&1 &); sleep 0.2; true")
	fin := res.wait(t, j.JobID)
	log := readLog(t, s, fin.Log)
	if fin.Status != events.StatusPassed || fin.Exec != ExecSandbox {
		t.Fatalf("result %+v\n%s", fin, log)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Error("the job wrote outside its workspace")
	}
	for _, p := range []string{"/etc/jetci-escaped", "/usr/jetci-escaped"} {
		if _, err := os.Stat(p); err == nil {
			os.Remove(p)
			t.Errorf("the job wrote %s", p)
		}
	}
	if ps := hostProcs("sleep\x00300.471"); len(ps) > 0 {
		t.Errorf("processes left behind: %v", ps)
	}
}

// TestSecretsStayInTheirJob: while a job with a secret runs in one slot, a
// job in another slot cannot find the secret in any process's environment.
func TestSecretsStayInTheirJob(t *testing.T) {
	requireSandbox(t)
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"a": "a"})
	const secret = "s3cr3t-value-91c2"
	startRunner(t, s, func(c *Config) {
		c.Exec, c.Slots, c.Grace = ExecSandbox, 2, 0
		c.Secrets = []Secret{{Name: "TOKEN", Value: secret}}
	})
	holder := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Secrets = []string{"TOKEN"} }, "sleep 20")
	brokertest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !hostEnvHas(secret) {
			return fmt.Errorf("the job with the secret is not running")
		}
		return nil
	})
	spy := enqueueMod(t, s, repo, c, nil,
		`for f in /proc/[0-9]*/environ; do tr '\0' '\n' <"$f"; done 2>/dev/null | grep -c `+secret+` && exit 1; true`)
	if fin := res.wait(t, spy.JobID); fin.Status != events.StatusPassed {
		t.Errorf("the other job found the secret: %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	_ = holder // still running: stopping the runner ends it
}

// TestSandboxLimits: in the sandbox the kernel stops a fork bomb at the pids
// limit and kills a memory hog at the memory limit; each job fails saying
// which limit, and leaves no process behind.
func TestSandboxLimits(t *testing.T) {
	requireSandbox(t)
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{
		"hog.py": "b = []\nwhile True:\n    b.append(bytearray(8 << 20))\n",
	})
	startRunner(t, s, func(c *Config) { c.Exec, c.Slots = ExecSandbox, 2 })
	limited := func(l events.Limits) func(*events.JobQueued) {
		return func(j *events.JobQueued) { j.Limits = &l; j.TimeoutMs = 30000 }
	}
	bomb := enqueueMod(t, s, repo, c, limited(events.Limits{Processes: 40}),
		"b() { b | b & }; (setsid sh -c 'b() { sleep 300.4713 | b & }; b' &); b; sleep 2", "echo never-runs")
	hog := enqueueMod(t, s, repo, c, limited(events.Limits{MemoryBytes: 64 << 20}), "python3 hog.py", "echo never-runs")
	for _, tt := range []struct {
		job  *events.JobQueued
		want string
	}{
		{bomb, "process limit of 40 exceeded"},
		{hog, "memory limit of 64MiB exceeded"},
	} {
		fin := res.wait(t, tt.job.JobID)
		log := readLog(t, s, fin.Log)
		if fin.Status != events.StatusFailed || !strings.Contains(fin.Error, tt.want) || strings.Contains(log, "never-runs\n") {
			t.Errorf("result %+v, want failed with %q\n%s", fin, tt.want, log)
		}
	}
	if ps := hostProcs("sleep\x00300.4713"); len(ps) > 0 {
		t.Errorf("processes left behind: %v", ps)
	}
}

// TestWipCannotPlantForMain: a job of branch wip writes the workspace's git
// config and hooks, its HOME and its cache dir; the next job of the slot, of
// main, runs git and none of it runs or is there.
func TestWipCannotPlantForMain(t *testing.T) {
	for _, mode := range []string{ExecHost, ExecSandbox} {
		t.Run(mode, func(t *testing.T) {
			if mode == ExecSandbox {
				requireSandbox(t)
			}
			s := brokertest.Run(t)
			res := watchResults(t, s)
			repo := newGitRepo(t)
			c := repo.Commit("change", map[string]string{"a": "a"})
			work := t.TempDir()
			startRunner(t, s, func(c *Config) { c.Exec, c.WorkDir = mode, work })
			marker := filepath.Join(work, "slots", "1", "proj", "PLANTED")
			plant := `
git config core.fsmonitor 'touch PLANTED; false'
git config alias.st '!touch PLANTED'
git config core.hooksPath .git/hooks
mkdir -p .git/hooks .git/info
for h in post-checkout pre-commit post-index-change; do printf '#!/bin/sh\ntouch PLANTED\n' >.git/hooks/$h; chmod +x .git/hooks/$h; done
echo '* filter=evil' >.git/info/attributes; git config filter.evil.smudge 'touch PLANTED; cat'
printf '[alias]\n\tlog = !touch PLANTED\n[core]\n\tfsmonitor = touch PLANTED\n' >"$HOME/.gitconfig"
echo 'touch PLANTED' >"$HOME/.profile"
echo 'touch PLANTED' >"$XDG_CACHE_HOME/poisoned"`
			wip := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Branch = "wip" }, plant)
			if fin := res.wait(t, wip.JobID); fin.Status != events.StatusPassed {
				t.Fatalf("wip job %+v\n%s", fin, readLog(t, s, fin.Log))
			}
			main := enqueueMod(t, s, repo, c, nil, "git status >/dev/null", "git st 2>/dev/null; git log -1 >/dev/null; git checkout -q -f HEAD", "test ! -e PLANTED")
			if fin := res.wait(t, main.JobID); fin.Status != events.StatusPassed {
				t.Fatalf("main job %+v\n%s", fin, readLog(t, s, fin.Log))
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("something the wip job planted ran")
			}
		})
	}
}

// buildImage builds a local image from the busybox binary (Debian's
// busybox-static): no registry is needed. It returns the image's name.
func buildImage(t testing.TB, engine string) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	requireEnv(t, "busybox-static", err)
	if out, _ := exec.Command("file", "-L", bb).Output(); len(out) > 0 && !bytes.Contains(out, []byte("statically")) {
		requireEnv(t, "busybox-static", fmt.Errorf("%s is not statically linked", bb))
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "tmp/", "etc/", "proc/", "dev/", "sys/"} {
		_ = tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))})
	_, _ = tw.Write(bin)
	for _, a := range []string{"sh", "ls", "cat", "echo", "id", "touch", "test", "uname", "sleep", "grep", "true", "false", "wc", "tr", "mkdir", "rm", "env", "sort", "head", "setsid"} {
		_ = tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	etc := "jetci test image\n"
	_ = tw.WriteHeader(&tar.Header{Name: "etc/jetci-image", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(etc))})
	_, _ = tw.Write([]byte(etc))
	tw.Close()
	tarball := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(tarball, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("localhost/jetci-test-busybox:%d", os.Getpid())
	if out, err := exec.Command(engine, "import", "--change", "ENV=PATH=/bin", tarball, name).CombinedOutput(); err != nil {
		requireEnv(t, engine+" import", fmt.Errorf("%v: %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command(engine, "rmi", "-f", name).Run() })
	return name
}

// TestImageJob: a job that names an image: runs its steps in that image (a
// local one), with the workspace bound in, without network when it asks so,
// and under its memory limit.
func TestImageJob(t *testing.T) {
	engine, err := containerEngine()
	requireEnv(t, "container engine", err)
	image := buildImage(t, engine)
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("change", map[string]string{"hello.txt": "from the repo\n"})
	outside := filepath.Join(t.TempDir(), "escaped")
	startRunner(t, s, func(c *Config) { c.Exec = ExecSandbox })
	j := enqueueMod(t, s, repo, c, func(j *events.JobQueued) {
		j.Image, j.Network = image, "none"
		j.Limits = &events.Limits{MemoryBytes: 256 << 20, Processes: 64}
	},
		"cat /etc/jetci-image hello.txt", "echo built >out.txt", `touch "$TMPDIR/t" "$HOME/h"`,
		"touch "+outside+" 2>/dev/null; touch /bin/x 2>/dev/null; true", "test ! -e /etc/debian_version")
	fin := res.wait(t, j.JobID)
	log := readLog(t, s, fin.Log)
	if fin.Status != events.StatusPassed || fin.Exec != ExecContainer || !strings.Contains(log, "jetci test image\nfrom the repo\n") {
		t.Fatalf("result %+v\n%s", fin, log)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Error("the container wrote outside its workspace")
	}
	if !strings.Contains(log, "in container image "+image+", without network") {
		t.Errorf("log does not say the image:\n%s", log)
	}
	// Over its memory limit (sort holds its whole input), and over its timeout.
	hog := enqueueMod(t, s, repo, c, func(j *events.JobQueued) {
		j.Image, j.Limits = image, &events.Limits{MemoryBytes: 32 << 20}
	}, "head -c 200000000 /dev/zero | tr '\\0' a | sort >/dev/null", "echo never-runs")
	slow := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Image, j.TimeoutMs = image, 1500 }, "sleep 300.4714")
	// Over its CPU time: counted by the kernel in the slot's cgroup, which
	// the engine puts the container under, and killed at the limit — in a
	// process that left the step's session too.
	burn := enqueueMod(t, s, repo, c, func(j *events.JobQueued) {
		j.Image, j.Limits, j.TimeoutMs = image, &events.Limits{CPUMs: 1000}, 120000
	}, "setsid sh -c 'while :; do :; done' & sh -c 'while :; do :; done'", "echo never-runs")
	if fin := res.wait(t, hog.JobID); fin.Status != events.StatusFailed || !strings.Contains(fin.Error, "memory limit of 32MiB exceeded") {
		t.Errorf("memory hog in a container: %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	if fin := res.wait(t, burn.JobID); fin.Status != events.StatusFailed || !strings.Contains(fin.Error, "cpu limit of 1s exceeded") ||
		strings.Contains(readLog(t, s, fin.Log), "never-runs\n") {
		t.Errorf("CPU burner in a container: %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	if fin := res.wait(t, slow.JobID); fin.Status != events.StatusError || !strings.Contains(fin.Error, "timeout") {
		t.Errorf("slow job in a container: %+v\n%s", fin, readLog(t, s, fin.Log))
	}
	brokertest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if ps := hostProcs("sleep\x00300.4714"); len(ps) > 0 {
			return fmt.Errorf("the timed-out container's processes are left: %v", ps)
		}
		return nil
	})
}

// TestArm64JobRunsEmulated: an arm64 runner on an amd64 machine runs an
// arm64 binary (a Go program built with GOARCH=arm64) through QEMU user
// emulation, and the result says it ran emulated.
func TestArm64JobRunsEmulated(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("emulation is tested on amd64 machines")
	}
	_, err := emulation("arm64")
	requireEnv(t, "arm64 emulation", err)
	requireSandbox(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nimport (\n\t\"fmt\"\n\t\"runtime\"\n)\n\nfunc main() { fmt.Println(\"hello from\", runtime.GOARCH) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(src, "hello")
	cmd := exec.Command("go", "build", "-o", bin, "main.go")
	cmd.Dir, cmd.Env = src, append(os.Environ(), "GOARCH=arm64", "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	elf, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	s := brokertest.Run(t)
	res := watchResults(t, s)
	repo := newGitRepo(t)
	c := repo.Commit("arm64 binary", map[string]string{"hello": string(elf)})
	startRunner(t, s, func(c *Config) { c.Exec, c.Arch = ExecSandbox, "arm64" })
	j := enqueueMod(t, s, repo, c, func(j *events.JobQueued) { j.Arch = "arm64" }, "chmod +x hello && ./hello", `test "$GOARCH" = arm64`)
	fin := res.wait(t, j.JobID)
	log := readLog(t, s, fin.Log)
	if fin.Status != events.StatusPassed || !strings.Contains(log, "hello from arm64\n") || !strings.Contains(fin.Emulation, "qemu-aarch64") {
		t.Fatalf("result %+v\n%s", fin, log)
	}
}

// TestNoSandboxRefusesToStart: where no sandbox can start, a sandbox runner
// refuses to start and says why, unless told to fall back to the host, which
// it then says in its results.
func TestNoSandboxRefusesToStart(t *testing.T) {
	old := bwrapName
	bwrapName = "jetci-no-such-bwrap"
	t.Cleanup(func() { bwrapName = old })
	s := brokertest.Run(t)
	cfg := DefaultConfig()
	cfg.WorkDir, cfg.Exec = t.TempDir(), ExecSandbox
	_, err := New(cfg, s.NC, s.JS, brokertest.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "bubblewrap (bwrap) is not installed") || !strings.Contains(err.Error(), "--host-fallback") {
		t.Fatalf("New without bubblewrap: %v", err)
	}
	cfg.HostFallback = true
	r, err := New(cfg, s.NC, s.JS, brokertest.Logger(t))
	if err != nil || r.mode != ExecHost {
		t.Fatalf("New with HostFallback: %v, mode %q", err, r.mode)
	}
}
