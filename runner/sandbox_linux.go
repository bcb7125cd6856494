package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jetci/jetci/events"
)

// Why bubblewrap and not namespaces set up from Go: a mount namespace with a
// read-only root, fresh /proc and /tmp and a few binds must be built in the
// child between clone and exec, and Go runs no code there (SysProcAttr gives
// the clone flags and id maps, not mounts). Doing it ourselves means the
// runner re-executing itself as a setup helper: a few hundred lines of
// security-critical code that bubblewrap (Flatpak's sandbox, in Debian) has
// already, reviewed and maintained, with a PID-1 that reaps and, when it
// ends, takes the namespace's processes with it. It costs one exec per step
// (a few ms, BENCHMARKS.md). cgroups jetci sets up itself, around bubblewrap.

// gateScript holds the step's first process until the runner has put it in
// the step's cgroup (it reads a byte on fd 3), so that nothing it starts
// runs outside the group even for a moment.
const gateScript = `read _ <&3; exec 3<&-; exec "$@"`

// bwrapName is bubblewrap's command (a variable for tests).
var bwrapName = "bwrap"

// bwrapPath is bubblewrap, or "" when it is not installed.
func bwrapPath() string {
	p, _ := exec.LookPath(bwrapName)
	return p
}

// probeSandbox checks that a sandbox can start here, as the user uid (-1: the
// runner's): bubblewrap is installed and the kernel allows user, PID and mount
// namespaces. The error says what is missing.
func probeSandbox(uid int) error {
	bw := bwrapPath()
	if bw == "" {
		return errors.New("bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)")
	}
	cmd := exec.Command(bw, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true")
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("the kernel allows no sandbox here (bwrap --unshare-all: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// containerEngine finds podman (preferred) or docker.
func containerEngine() (string, error) {
	for _, e := range []string{"podman", "docker"} {
		if p, err := exec.LookPath(e); err == nil {
			return p, nil
		}
	}
	return "", errors.New("neither podman nor docker is installed")
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// bwrapArgs are bubblewrap's arguments for a step; binds are the host
// directories bound in (bubblewrap reaches them by path as the step's user:
// stepExec.own makes their parents searchable).
func (x *stepExec) bwrapArgs(step string) (args []string, binds []string) {
	args = []string{"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--hostname", "jetci", "--die-with-parent", "--new-session", "--disable-userns"}
	if !x.network {
		args = append(args, "--unshare-net")
	}
	args = append(args, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", "--tmpfs", "/run")
	// The runner's work dir (caches, every slot's workspace, logs, the
	// outbox) and the runner user's home are hidden; the job's own
	// directories are bound back in.
	wd, _ := filepath.Abs(x.workDir)
	if !under(wd, "/tmp") {
		args = append(args, "--tmpfs", wd)
	}
	if h, err := os.UserHomeDir(); err == nil && h != "/" && !under(wd, h) && !under(h, "/tmp") {
		args = append(args, "--tmpfs", h)
	}
	bind := func(flag, dir string) {
		abs, _ := filepath.Abs(dir)
		args = append(args, flag, abs, abs)
		binds = append(binds, abs)
	}
	if _, err := os.Stat(x.cache); err == nil {
		bind("--ro-bind", x.cache)
	}
	for _, d := range x.writable() {
		bind("--bind", d)
	}
	ws, _ := filepath.Abs(x.ws)
	args = append(args, "--chdir", ws, "--", "sh", "-c", step)
	return args, binds
}

// containerSeq numbers this process's containers.
var containerSeq atomic.Int64

// containerArgs are the engine's arguments for a step in container name.
//
// keep leaves the container after it exits (no --rm), for the runner to ask
// whether the kernel killed it for memory.
func (x *stepExec) containerArgs(name, step string, lim *jobLimits, keep bool, cgroupParent string) []string {
	ws, _ := filepath.Abs(x.ws)
	args := []string{"run", "--name", name, "--init", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "all",
		"--security-opt", "no-new-privileges", "--pull", "never", "--log-driver", "none", "-w", ws}
	if cgroupParent != "" {
		args = append(args, "--cgroup-parent", cgroupParent)
	}
	if !keep {
		args = append(args, "--rm")
	}
	for _, d := range x.writable() {
		abs, _ := filepath.Abs(d)
		args = append(args, "-v", abs+":"+abs)
	}
	if cache, err := filepath.Abs(x.cache); err == nil {
		if _, err := os.Stat(cache); err == nil {
			args = append(args, "-v", cache+":"+cache+":ro")
		}
	}
	switch {
	case !x.network:
		args = append(args, "--network", "none")
	case filepath.Base(x.engine) == "podman":
		// User-mode networking: needs no netavark or CNI set-up, and the
		// job reaches the network without a door into the host's.
		args = append(args, "--network", "slirp4netns")
	}
	if x.uid >= 0 {
		args = append(args, "--user", strconv.Itoa(x.uid)+":"+strconv.Itoa(x.gid))
	}
	// Engines set RLIMIT_NOFILE and RLIMIT_NPROC above what this process may
	// have by default, which fails without CAP_SYS_RESOURCE: ask for what we have.
	var nofile unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile) == nil && nofile.Max < 1<<20 {
		args = append(args, "--ulimit", fmt.Sprintf("nofile=%d:%d", nofile.Max, nofile.Max))
	}
	if lim != nil && lim.MemoryBytes > 0 {
		m := strconv.FormatInt(lim.MemoryBytes, 10)
		args = append(args, "--memory", m, "--memory-swap", m)
	}
	procs := 4096
	if lim != nil && lim.Processes > 0 {
		procs = lim.Processes
		args = append(args, "--pids-limit", strconv.Itoa(lim.Processes))
	}
	args = append(args, "--ulimit", fmt.Sprintf("nproc=%d:%d", procs, procs))
	// Variables go by name: their values (secrets) stay out of the engine's
	// command line, which every user can read.
	for _, kv := range x.env {
		k, _, _ := strings.Cut(kv, "=")
		args = append(args, "-e", k)
	}
	return append(args, x.image, "sh", "-c", step)
}

// containerCgroup readies the slot's cgroup as the parent of a step's
// container (its limits lifted: the container has its own), so that its
// CPU time is counted there.
func (x *stepExec) containerCgroup() (*stepCgroup, error) {
	cg, err := x.slotCgroup()
	if err != nil {
		return nil, err
	}
	if cg.rel == "" {
		return nil, errors.New("no cgroup counts the slot's CPU time (cpuacct is not mounted)")
	}
	if err := cg.start(0, 0); err != nil {
		return nil, err
	}
	return cg, nil
}

var (
	engineCgOnce sync.Once
	engineCgWhy  string
)

// engineCgroupsWhy says why the engine cannot put containers under a cgroup
// the runner names ("" when it can): only podman run as root with its
// cgroupfs manager takes a --cgroup-parent path (the systemd manager wants
// a slice; rootless podman on cgroup v1 has no cgroups at all).
func engineCgroupsWhy(engine string) string {
	engineCgOnce.Do(func() {
		switch {
		case filepath.Base(engine) != "podman":
			engineCgWhy = "only podman is told where to put a container's cgroup"
		case os.Geteuid() != 0:
			engineCgWhy = "rootless podman puts containers in cgroups of its own"
		default:
			x := &stepExec{engine: engine}
			out, err := x.engineCommand("info", "--format", "{{.Host.CgroupManager}}").Output()
			if m := strings.TrimSpace(string(out)); err != nil || m != "cgroupfs" {
				engineCgWhy = fmt.Sprintf("podman's cgroup manager is %q (%v), not cgroupfs", m, err)
			}
		}
	})
	return engineCgWhy
}

// hybridUnified is the empty cgroup2 mount of a hybrid host, "" otherwise.
// crun refuses to run where it is mounted ("cgroups in hybrid mode not
// supported, drop all controllers from cgroupv2"), so podman runs in a mount
// namespace of its own without it.
func hybridUnified() string {
	l := cgroups()
	if l.v2 != "" || len(l.v1) == 0 {
		return ""
	}
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup/unified", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return "/sys/fs/cgroup/unified"
	}
	return ""
}

// engineCommand is the command that runs the engine with args.
func (x *stepExec) engineCommand(args ...string) *exec.Cmd {
	if u := hybridUnified(); u != "" && os.Geteuid() == 0 && filepath.Base(x.engine) == "podman" {
		if unshare, err := exec.LookPath("unshare"); err == nil {
			return exec.Command(unshare, append([]string{"--mount", "--propagation", "private", "sh", "-c",
				`umount "$0" 2>/dev/null; exec "$@"`, u, x.engine}, args...)...)
		}
	}
	return exec.Command(x.engine, args...)
}

// isolatedStep is a step started under the sandbox or in a container.
type isolatedStep struct {
	cmd    *exec.Cmd
	cg     *stepCgroup // sandbox: the step's cgroup (nil without limits or cgroups)
	name   string      // container: its name
	x      *stepExec
	closed []*os.File
	done   atomic.Bool // the step's first process exited
	// container: keep says it was started without --rm (it has a memory
	// limit: after a failure the runner asks whether it was OOM-killed);
	// killed that the runner stopped it, and the engine may not remove it.
	keep   bool
	killed atomic.Bool
}

// startIsolated starts step under x's backend, its output to pw.
func startIsolated(x *stepExec, step string, pw *os.File, lim *jobLimits) (*isolatedStep, error) {
	s := &isolatedStep{x: x}
	if x.mode == ExecContainer {
		s.name = fmt.Sprintf("jetci-%d-%d", os.Getpid(), containerSeq.Add(1))
		s.keep = lim != nil && lim.MemoryBytes > 0
		parent := ""
		if lim != nil && lim.CPUMs > 0 && x.slotCgroup != nil { // else the job's log says why not
			// The engine makes the container's cgroup under the slot's, whose
			// CPU time then counts the container's (the kernel's hierarchical
			// accounting): the runner kills at the limit, as in a sandbox.
			// The container's own memory and process limits are the engine's.
			cg, err := x.containerCgroup()
			if err != nil {
				return nil, fmt.Errorf("cpu limit cannot be enforced in a container: %w", err)
			}
			s.cg, parent = cg, cg.rel
		}
		s.cmd = x.engineCommand(x.containerArgs(s.name, step, lim, s.keep, parent)...)
		s.cmd.Env = x.env
		s.cmd.Stdout, s.cmd.Stderr = pw, pw
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start container: %w", err)
		}
		return s, nil
	}
	var err error
	if x.slotCgroup != nil {
		var mem int64
		var procs int
		if lim != nil {
			mem, procs = lim.MemoryBytes, lim.Processes
		}
		cg, cerr := x.slotCgroup()
		if cerr == nil {
			cerr = cg.start(mem, procs)
		}
		switch {
		case cerr == nil:
			s.cg = cg
		case lim != nil && !lim.IsZero():
			return nil, fmt.Errorf("limits cannot be enforced: %w", cerr)
		}
	}
	gr, gw, err := os.Pipe()
	if err != nil {
		s.cleanup()
		return nil, err
	}
	s.closed = append(s.closed, gr)
	args, _ := x.bwrapArgs(step)
	files := []*os.File{gr}
	s.cmd = exec.Command("sh", append([]string{"-c", gateScript, "jetci-step", bwrapPath()}, args...)...)
	s.cmd.Dir, s.cmd.Env = "/", x.env
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	s.cmd.ExtraFiles = files
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if x.uid >= 0 {
		s.cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(x.uid), Gid: uint32(x.gid)}
	}
	if err := s.cmd.Start(); err != nil {
		gw.Close()
		s.cleanup()
		return nil, fmt.Errorf("start sandbox: %w", err)
	}
	for _, f := range s.closed {
		f.Close()
	}
	s.closed = nil
	if s.cg != nil {
		if err := s.cg.add(s.cmd.Process.Pid); err != nil {
			gw.Close()
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			_ = s.cmd.Wait()
			s.cleanup()
			return nil, err
		}
	}
	_, _ = gw.Write([]byte{'\n'})
	gw.Close()
	return s, nil
}

// kill ends the step: everything in its process group and cgroup (the
// sandbox's PID namespace goes with its init), or the container.
func (s *isolatedStep) kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	if s.cg != nil {
		s.cg.kill()
	}
	if s.name != "" && !s.done.Load() {
		s.killed.Store(true)
		_ = s.x.engineCommand("kill", s.name).Run()
	}
}

// cpu is the CPU time the step used so far, as the kernel counts it (0: not
// known; the caller then counts the process's own rusage).
func (s *isolatedStep) cpu() time.Duration {
	if s.cg != nil {
		return s.cg.cpu()
	}
	return 0
}

// over says which kernel-enforced limit the step hit, after it ended.
func (s *isolatedStep) over(lim *jobLimits) *limitError {
	if lim == nil {
		return nil
	}
	if s.name != "" {
		if !s.keep || s.cmd.ProcessState == nil || s.cmd.ProcessState.ExitCode() == 0 {
			return nil
		}
		out, err := s.x.engineCommand("inspect", "--format", "{{.State.OOMKilled}}", s.name).Output()
		if err == nil && bytes.Equal(bytes.TrimSpace(out), []byte("true")) {
			return memoryOver(lim.MemoryBytes, 0)
		}
		// conmon does not see OOM kills on hybrid cgroup hosts: a step the
		// runner did not kill that died of SIGKILL under a memory limit was
		// killed by the kernel's OOM killer (nothing else sends it there).
		if code := s.cmd.ProcessState.ExitCode(); code == 128+int(syscall.SIGKILL) && !s.killed.Load() {
			e := memoryOver(lim.MemoryBytes, 0)
			e.msg = fmt.Sprintf("memory limit of %s exceeded: a process of the step was killed with SIGKILL at its memory limit", events.FormatSize(lim.MemoryBytes))
			return e
		}
		return nil
	}
	if s.cg == nil {
		return nil
	}
	if lim.MemoryBytes > 0 && s.cg.oomKilled() {
		return memoryOver(lim.MemoryBytes, s.cg.peakMemory())
	}
	if lim.Processes > 0 {
		if n := s.cg.pidsRefused(); n > 0 {
			return &limitError{"processes", fmt.Sprintf("process limit of %d exceeded: the kernel refused %d fork(s)", lim.Processes, n)}
		}
	}
	return nil
}

func memoryOver(limit, peak int64) *limitError {
	held := ""
	if peak > 0 {
		held = fmt.Sprintf(" (the job's processes held %s)", mib(peak))
	}
	return &limitError{"memory", fmt.Sprintf("memory limit of %s exceeded%s: killed by the kernel", events.FormatSize(limit), held)}
}

// cleanup ends what is left of the step in its cgroup, or removes its
// container.
func (s *isolatedStep) cleanup() {
	for _, f := range s.closed {
		f.Close()
	}
	if s.cg != nil {
		s.cg.kill()
	}
	if s.name != "" && (s.keep || s.killed.Load()) {
		_ = s.x.engineCommand("rm", "-f", s.name).Run()
	}
}

// waitEmpty waits until no process is left in the step's cgroup.
func (s *isolatedStep) waitEmpty(ctx context.Context) {
	if s.cg == nil {
		return
	}
	// The kernel takes the namespace's processes down after its init died:
	// a few milliseconds, polled finely at first.
	wait := 100 * time.Microsecond
	for deadline := time.Now().Add(5 * time.Second); !s.cg.empty() && time.Now().Before(deadline); {
		s.cg.kill()
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Millisecond)
	}
}

// cgroupsSummary says which cgroups limit sandboxed steps.
func cgroupsSummary() string { return cgroups().String() }

var (
	cgReadyOnce sync.Once
	cgReadyErr  error
)

// cgroupsReady says why cgroup limits cannot be set here (nil: they can):
// the controllers are mounted and this process may make groups (it makes
// and removes one to know).
func cgroupsReady() error {
	cgReadyOnce.Do(func() {
		cg, err := newSlotCgroup(fmt.Sprintf("jetci-%d-probe", os.Getpid()))
		if err != nil {
			cgReadyErr = err
			return
		}
		cg.remove()
	})
	return cgReadyErr
}

// slotCgroup returns the cgroup of slot's steps, made on first use.
func (r *Runner) slotCgroup(slot int) (*stepCgroup, error) {
	r.cgMu.Lock()
	defer r.cgMu.Unlock()
	if cg := r.cgs[slot]; cg != nil {
		return cg, nil
	}
	cg, err := newSlotCgroup(fmt.Sprintf("jetci-%d-%s-slot-%d", os.Getpid(), r.id, slot))
	if err != nil {
		return nil, err
	}
	if r.cgs == nil {
		r.cgs = map[int]*stepCgroup{}
	}
	r.cgs[slot] = cg
	return cg, nil
}

// removeCgroups removes the slots' cgroups when the runner stops.
func (r *Runner) removeCgroups() {
	r.cgMu.Lock()
	defer r.cgMu.Unlock()
	for slot, cg := range r.cgs {
		cg.remove()
		delete(r.cgs, slot)
	}
}
