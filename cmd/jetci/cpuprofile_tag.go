//go:build jetciprof

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"
)

// Built only with -tags jetciprof (JETCI_BUILD_TAGS=jetciprof for the
// benchmarks, which build the binary): every jetci process writes a CPU
// profile of JETCI_CPUPROFILE_SECS seconds (default 15), starting
// JETCI_CPUPROFILE_DELAY after it starts (default 2s), to
// $JETCI_CPUPROFILE_DIR/<command>-<pid>.prof. A timed profile survives the
// SIGKILL that ends a benchmark's processes.
func init() {
	dir := os.Getenv("JETCI_CPUPROFILE_DIR")
	if dir == "" || len(os.Args) < 2 {
		return
	}
	delay, err := time.ParseDuration(os.Getenv("JETCI_CPUPROFILE_DELAY"))
	if err != nil {
		delay = 2 * time.Second
	}
	secs, err := time.ParseDuration(os.Getenv("JETCI_CPUPROFILE_SECS") + "s")
	if err != nil {
		secs = 15 * time.Second
	}
	go func() {
		time.Sleep(delay)
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.prof", os.Args[1], os.Getpid())))
		if err != nil {
			return
		}
		defer f.Close()
		if pprof.StartCPUProfile(f) != nil {
			return
		}
		time.Sleep(secs)
		pprof.StopCPUProfile()
	}()
}
