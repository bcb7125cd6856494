//go:build linux

package runner

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkStepStart measures what running one trivial step (`true`) costs
// on each backend, start to exit and clean-up: the per-step overhead a job
// pays over the host, with and without a network namespace (network: none).
// The container figures use a local image.
//
//	go test -run '^$' -bench StepStart -benchtime 200x ./runner
func BenchmarkStepStart(b *testing.B) {
	for _, bc := range []struct {
		name, mode string
		network    bool
	}{{"host", ExecHost, true}, {"sandbox", ExecSandbox, true}, {"sandbox-nonet", ExecSandbox, false},
		{"container-nonet", ExecContainer, false}, {"container", ExecContainer, true}} {
		mode := bc.mode
		b.Run(bc.name, func(b *testing.B) {
			work := b.TempDir()
			x := &stepExec{mode: mode, ws: filepath.Join(work, "ws"), home: filepath.Join(work, "home"), tmp: filepath.Join(work, "tmp"),
				cache: filepath.Join(work, "cache"), workDir: work, uid: -1, gid: -1, network: bc.network,
				env: []string{"PATH=" + defaultPath, "HOME=" + filepath.Join(work, "home")}}
			for _, d := range []string{x.ws, x.home, x.tmp} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					b.Fatal(err)
				}
			}
			switch mode {
			case ExecSandbox:
				requireSandbox(b)
			case ExecContainer:
				engine, err := containerEngine()
				requireEnv(b, "container engine", err)
				x.engine, x.image = engine, buildImage(b, engine)
			}
			if mode != ExecHost && os.Geteuid() == 0 {
				x.uid, x.gid = DefaultSandboxUID, DefaultSandboxUID
				if err := x.own(); err != nil {
					b.Fatal(err)
				}
			}
			if mode == ExecSandbox {
				var cg *stepCgroup
				x.slotCgroup = func() (*stepCgroup, error) {
					var err error
					if cg == nil {
						cg, err = newSlotCgroup(fmt.Sprintf("jetci-bench-%d", os.Getpid()))
					}
					return cg, err
				}
				b.Cleanup(func() {
					if cg != nil {
						cg.remove()
					}
				})
			}
			lim := &jobLimits{}
			lim.MemoryBytes, lim.Processes = 512<<20, 256 // cgroups made and removed each step
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var out bytes.Buffer
				code, err := runStep(context.Background(), x, "true", &out, time.Now().Add(time.Minute), lim)
				if code != 0 || err != nil {
					b.Fatalf("step: %d, %v: %s", code, err, out.String())
				}
			}
		})
	}
}
