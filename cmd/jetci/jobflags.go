package main

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/jetci/jetci/runner"
)

// jobFlags registers what a runner gives its jobs: secrets, variables passed
// from its own environment, and resource limits. The returned func applies
// them to a runner config (reading the secrets' values).
func jobFlags(fs *flag.FlagSet) func(*runner.Config) error {
	var secrets, passEnv listFlag
	fs.Var(&secrets, "secret", "a secret jobs may ask for (secrets: in the pipeline file): NAME[@REPO[:BRANCH_PATTERN]]=env:VAR or =file:PATH; only that repo's (and branch's) jobs get it; masked as *** in logs (repeat for more)")
	fs.Var(&passEnv, "pass-env", "variables of this process's environment that steps get, comma-separated; PREFIX* for a prefix (steps get no other but PATH, LANG, LC_*, TZ, USER, LOGNAME)")
	cpu := fs.Duration("limit-cpu", 0, "CPU time each job may use, all steps together (e.g. 10m; 0: none; Linux)")
	var memory sizeFlag
	fs.Var(&memory, "limit-memory", "resident memory each job's processes may hold together (e.g. 2GiB; 0: none; Linux)")
	procs := fs.Int("limit-processes", 0, "processes each job may run at once (0: none; Linux)")
	exec := fs.String("exec", "", "how steps run: sandbox (default on Linux: namespaces, read-only host, cgroup limits), container (podman or docker, in the job's image: or --image), or host (the runner's own user; trusted jobs only)")
	hostFallback := fs.Bool("host-fallback", false, "where the kernel allows no sandbox, run steps on the host (with a warning) instead of refusing to start")
	sandboxUID := fs.Int("sandbox-uid", 0, fmt.Sprintf("when run as root: the first user id sandboxed steps run as, slot N as this+N (default %d)", runner.DefaultSandboxUID))
	image := fs.String("image", "", "with --exec container: the image of jobs whose pipeline names no image:")
	return func(c *runner.Config) error {
		c.Exec, c.HostFallback, c.SandboxUID, c.Image = *exec, *hostFallback, *sandboxUID, *image
		for _, spec := range secrets {
			s, err := runner.ParseSecret(spec)
			if err != nil {
				return fmt.Errorf("--secret: %w", err)
			}
			for _, o := range c.Secrets {
				if o.Name == s.Name && o.Repo == s.Repo && o.Branch == s.Branch {
					return fmt.Errorf("--secret: %s for %s is given twice", s.Name, s.Scope())
				}
			}
			c.Secrets = append(c.Secrets, s)
		}
		c.PassEnv = splitList(passEnv)
		for _, p := range c.PassEnv {
			if strings.ContainsAny(p, "= ") {
				return fmt.Errorf("--pass-env %q: want variable names, not values", p)
			}
		}
		switch {
		case *cpu < 0 || (*cpu > 0 && *cpu < time.Second):
			return fmt.Errorf("--limit-cpu %s: want 0 (none) or at least 1s", *cpu)
		case *procs < 0:
			return fmt.Errorf("--limit-processes %d: want 0 (none) or more", *procs)
		case memory > 0 && memory < 1<<20:
			return fmt.Errorf("--limit-memory %d: want 0 (none) or at least 1MiB", memory)
		}
		c.Limits.CPUMs, c.Limits.MemoryBytes, c.Limits.Processes = cpu.Milliseconds(), int64(memory), *procs
		return nil
	}
}
