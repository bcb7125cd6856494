package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
)

// Execution backends: how a job's steps run (Config.Exec).
//
//   - host: `sh -c` as the runner's own user, in its own process group, limits
//     measured from /proc. For trusted set-ups only.
//   - sandbox (the default on Linux): bubblewrap puts each step in new user,
//     PID, mount, IPC and UTS namespaces (and a network namespace for
//     network: none), the host's root read-only, only the workspace, a fresh
//     TMPDIR and a fresh HOME writable, inside a cgroup the kernel enforces
//     memory and process limits on. When the PID namespace's init ends, the
//     kernel kills every process left in it.
//   - container: each step runs in the job's image: (or the runner's --image)
//     with podman or docker, the workspace bind-mounted, the same limits.
//
// A job that names an image: runs in a container on sandbox runners too.
const (
	ExecHost      = "host"
	ExecSandbox   = "sandbox"
	ExecContainer = "container"
)

// validExec checks a Config.Exec value ("" is the default).
func validExec(e string) error {
	switch e {
	case "", ExecHost, ExecSandbox, ExecContainer:
		return nil
	}
	return fmt.Errorf("exec %q: want host, sandbox or container", e)
}

// stepExec is how one job's steps run: the backend, the directories it may
// write, its environment and its limits.
type stepExec struct {
	mode string // host, sandbox, container
	env  []string
	ws   string // the workspace, where steps start
	home string // fresh per job
	tmp  string // fresh per job
	// cacheHome is XDG_CACHE_HOME, kept between the jobs of a branch ("": none).
	cacheHome string
	cache     string // the repo's git cache (objects the workspace's .git borrows), read-only
	workDir   string // the runner's work dir, hidden from steps
	uid       int    // the user steps run as (-1: the runner's)
	gid       int
	network   bool   // false: no network (network: none)
	image     string // container: the image
	engine    string // container: podman or docker
	// slotCgroup returns the cgroup sandboxed steps run in (nil: none).
	slotCgroup func() (*stepCgroup, error)
}

// execMode returns the backend the runner uses: Config.Exec, or the default.
func (c Config) execMode() string {
	if c.Exec != "" {
		return c.Exec
	}
	if runtime.GOOS == "linux" {
		return ExecSandbox
	}
	return ExecHost
}

// sandboxUID is the user a slot's steps run as when the runner is root:
// one per slot, so that slots cannot read each other's files or signal each
// other's processes, and a step owns nothing of root's.
func (c Config) sandboxUID(slot int) int {
	base := c.SandboxUID
	if base <= 0 {
		base = DefaultSandboxUID
	}
	return base + slot
}

// DefaultSandboxUID is the first user id sandboxed steps run as when the
// runner runs as root (slot N runs as this + N).
const DefaultSandboxUID = 2_000_000_000

// newStepExec sets up how job's steps run on slot: its backend, and its
// directories owned by the user it runs as.
func (r *Runner) newStepExec(slot int, job *events.JobQueued, ws, home, tmp, cacheHome string, env []string) (*stepExec, error) {
	x := &stepExec{mode: r.mode, env: env, ws: ws, home: home, tmp: tmp, cacheHome: cacheHome, uid: -1, gid: -1,
		cache: r.caches.path(job.Repo), workDir: r.cfg.WorkDir, network: job.Network != "none"}
	if job.Image != "" || x.mode == ExecContainer {
		x.image = job.Image
		if x.image == "" {
			x.image = r.cfg.Image
		}
		if x.image == "" {
			return nil, fmt.Errorf("runner %s runs steps in containers but the job names no image: and the runner has no --image", r.cfg.ID)
		}
		if x.mode == ExecHost {
			return nil, fmt.Errorf("job asks for image %s but runner %s runs steps on the host (--exec host)", x.image, r.cfg.ID)
		}
		if r.engine == "" {
			return nil, fmt.Errorf("job asks for image %s but runner %s has no container engine (podman or docker): %s", x.image, r.cfg.ID, r.engineErr)
		}
		x.mode, x.engine = ExecContainer, r.engine
	}
	if x.mode == ExecHost && job.Network == "none" {
		return nil, fmt.Errorf("job asks for network: none but runner %s runs steps on the host (--exec host)", r.cfg.ID)
	}
	if x.mode != ExecHost && os.Geteuid() == 0 {
		x.uid, x.gid = r.cfg.sandboxUID(slot), r.cfg.sandboxUID(slot)
	}
	if (x.mode == ExecSandbox || x.mode == ExecContainer && engineCgroupsWhy(x.engine) == "") && cgroupsReady() == nil {
		x.slotCgroup = func() (*stepCgroup, error) { return r.slotCgroup(slot) }
	}
	return x, x.own()
}

// own gives the job's directories to the user its steps run as (after a
// checkout, which the runner makes as itself).
func (x *stepExec) own() error {
	if x.uid < 0 {
		return nil
	}
	for _, d := range x.writable() {
		if err := chownTree(d, x.uid, x.gid); err != nil {
			return fmt.Errorf("give the job its directories: %w", err)
		}
	}
	// bubblewrap binds them by path, as the step's user: their parents must
	// let it pass (search, not list). Inside, the work dir is hidden.
	for _, d := range append(x.writable(), x.cache) {
		if err := searchable(d); err != nil {
			return err
		}
	}
	return nil
}

// writable are the directories the job's steps may write.
func (x *stepExec) writable() []string {
	d := []string{x.ws, x.home, x.tmp}
	if x.cacheHome != "" {
		d = append(d, x.cacheHome)
	}
	return d
}

// searchable adds search permission for others (o+x) to every parent of dir
// that lacks it: the sandbox's users must reach the job's directories by path.
func searchable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let sandboxed steps reach %s: %w", dir, err)
			}
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// chownTree gives every file under dir that is not the user's yet to uid:gid.
func chownTree(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid && int(st.Gid) == gid {
			return nil
		}
		return os.Lchown(p, uid, gid)
	})
}

// emulation says how this runner runs its architecture: "" natively, else
// the QEMU user-mode emulator that runs its binaries ("qemu-aarch64 (binfmt)").
func emulation(arch string) (string, error) {
	if arch == runtime.GOARCH || arch == "" {
		return "", nil
	}
	q, ok := qemuArch[arch]
	if !ok {
		return "", fmt.Errorf("arch %s: this %s machine can run only %s, or %s under QEMU emulation", arch, runtime.GOARCH, runtime.GOARCH, qemuArchList())
	}
	if runtime.GOOS != "linux" {
		return "", fmt.Errorf("arch %s: emulation needs Linux's binfmt_misc", arch)
	}
	b, err := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-" + q)
	if err != nil {
		return "", fmt.Errorf("arch %s: no binfmt_misc handler qemu-%s is registered (install qemu-user-static; on a host without systemd-binfmt, register it: cat /usr/lib/binfmt.d/qemu-%s.conf > /proc/sys/fs/binfmt_misc/register): %v", arch, q, q, err)
	}
	if len(b) < 7 || string(b[:7]) != "enabled" {
		return "", fmt.Errorf("arch %s: binfmt_misc handler qemu-%s is disabled", arch, q)
	}
	return "qemu-" + q + " user emulation (binfmt_misc) on " + runtime.GOARCH, nil
}

// qemuArch maps Go architecture names to QEMU's.
var qemuArch = map[string]string{"arm64": "aarch64", "riscv64": "riscv64", "amd64": "x86_64", "386": "i386",
	"arm": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "loong64": "loongarch64", "mips64le": "mips64el"}

func qemuArchList() string {
	return "arm64, riscv64, arm, ppc64le, s390x, loong64, mips64le, amd64, 386"
}

func itoa(n int) string { return strconv.Itoa(n) }

// execChoice is what chooseExec found.
type execChoice struct{ mode, engine, engineErr, emulated string }

// chooseExec checks, at start, that the configured backend can run here. A
// sandbox the kernel does not allow is an error, unless HostFallback says to
// run steps on the host, which is then logged as a warning.
func chooseExec(cfg Config, log zerolog.Logger) (execChoice, error) {
	c := execChoice{mode: cfg.execMode()}
	var err error
	if c.emulated, err = emulation(cfg.Arch); err != nil {
		return c, fmt.Errorf("runner: %w", err)
	}
	if e, err := containerEngine(); err == nil {
		c.engine = e
	} else {
		c.engineErr = err.Error()
	}
	switch c.mode {
	case ExecSandbox:
		uid := -1
		if os.Geteuid() == 0 {
			uid = cfg.sandboxUID(0)
		}
		if err := probeSandbox(uid); err != nil {
			if !cfg.HostFallback {
				return c, fmt.Errorf("runner: --exec sandbox: %w; start with --exec host (trusted jobs only) or --host-fallback to run steps on the host", err)
			}
			log.Warn().Err(err).Msg("NO SANDBOX: the kernel allows no namespaces here; steps run on the host as this runner's user (--host-fallback)")
			c.mode = ExecHost
		}
	case ExecContainer:
		if c.engine == "" {
			return c, fmt.Errorf("runner: --exec container: %s", c.engineErr)
		}
	}
	ev := log.Info().Str("exec", c.mode)
	if c.mode == ExecSandbox {
		ev = ev.Str("cgroups", cgroupsSummary())
		if err := cgroupsReady(); err != nil {
			log.Warn().Err(err).Msg("no cgroups: jobs with limits will end in error (limits cannot be enforced); others run sandboxed without")
		}
	}
	if c.engine != "" {
		ev = ev.Str("container_engine", c.engine)
	}
	if c.emulated != "" {
		ev = ev.Str("emulation", c.emulated)
	}
	ev.Msg("step execution")
	return c, nil
}
