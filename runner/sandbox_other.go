//go:build !linux

package runner

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync/atomic"
	"time"
)

// Only Linux has the namespaces and cgroups the sandbox and container
// backends need: elsewhere steps run on the host.

var errNoIsolation = errors.New("sandbox and container backends need Linux")

type stepCgroup struct{}

type isolatedStep struct {
	cmd  *exec.Cmd
	cg   *stepCgroup
	done atomic.Bool
}

func probeSandbox(int) error                        { return errNoIsolation }
func containerEngine() (string, error)              { return "", errNoIsolation }
func cgroupsSummary() string                        { return "no cgroups" }
func (s *isolatedStep) kill()                       {}
func (s *isolatedStep) cpu() time.Duration          { return 0 }
func (s *isolatedStep) over(*jobLimits) *limitError { return nil }
func (s *isolatedStep) cleanup()                    {}
func (s *isolatedStep) waitEmpty(context.Context)   {}

func startIsolated(*stepExec, string, *os.File, *jobLimits) (*isolatedStep, error) {
	return nil, errNoIsolation
}

func cgroupsReady() error { return errNoIsolation }

func (r *Runner) slotCgroup(int) (*stepCgroup, error) { return nil, errNoIsolation }
func (r *Runner) removeCgroups()                      {}
func engineCgroupsWhy(string) string                  { return errNoIsolation.Error() }
