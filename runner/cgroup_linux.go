package runner

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Kernel-enforced limits: every sandboxed step runs in a cgroup of its own,
// where the kernel caps memory (the OOM killer acts inside it alone) and the
// number of processes (fork fails at pids.max), and counts CPU time for the
// whole tree, whatever setsid or double forks it did.
//
// Two layouts exist. cgroup v2 ("unified", one hierarchy) where it is mounted
// with the memory and pids controllers; otherwise the v1 controllers, each
// mounted on its own (memory, pids, cpu,cpuacct). Hybrid hosts mount both:
// v1 controllers beside an empty cgroup2 at /sys/fs/cgroup/unified, where the
// v1 ones are used.

// cgroupLayout is where this machine's cgroup controllers are.
type cgroupLayout struct {
	v2     string            // the cgroup2 directory jetci uses ("": v1)
	v1     map[string]string // controller → the directory jetci uses under it
	reason string            // why there are none
	// Where the hierarchies are mounted: v2's, and every v1 controller's
	// (a container engine told --cgroup-parent makes that path in each).
	v2mount  string
	v1mounts map[string]string // controller → mount point
}

var (
	cgOnce sync.Once
	cgHere cgroupLayout
)

// cgroups returns this machine's layout, found once.
func cgroups() cgroupLayout {
	cgOnce.Do(func() { cgHere = detectCgroups("/proc/self/mountinfo", "/proc/self/cgroup") })
	return cgHere
}

// detectCgroups reads the mounts and this process's own cgroups. jetci's
// groups go under the cgroup the runner is in (see v2Parent for v2).
func detectCgroups(mountinfo, self string) cgroupLayout {
	own := map[string]string{} // controller ("" for v2) → own path
	if f, err := os.Open(self); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			parts := strings.SplitN(sc.Text(), ":", 3)
			if len(parts) != 3 {
				continue
			}
			if parts[1] == "" {
				own[""] = parts[2]
			}
			for _, c := range strings.Split(parts[1], ",") {
				own[c] = parts[2]
			}
		}
		f.Close()
	}
	f, err := os.Open(mountinfo)
	if err != nil {
		return cgroupLayout{reason: err.Error()}
	}
	defer f.Close()
	var l cgroupLayout
	l.v1 = map[string]string{}
	mounts := map[string]string{}
	var v2mount, v2root string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(fields) || len(fields) < 5 {
			continue
		}
		root, mnt, fstype, super := fields[3], fields[4], fields[sep+1], fields[sep+3]
		switch fstype {
		case "cgroup2":
			if v2mount == "" {
				v2mount, v2root = mnt, root
			}
		case "cgroup":
			for _, c := range strings.Split(super, ",") {
				if _, ok := mounts[c]; !ok && c != "rw" && c != "ro" {
					mounts[c] = mnt
				}
				if c == "memory" || c == "pids" || c == "cpuacct" {
					if _, ok := l.v1[c]; !ok {
						l.v1[c] = filepath.Join(mnt, strings.TrimPrefix(own[c], root))
					}
				}
			}
		}
	}
	if v2mount != "" {
		dir := filepath.Join(v2mount, strings.TrimPrefix(own[""], v2root))
		b, _ := os.ReadFile(filepath.Join(v2mount, "cgroup.controllers"))
		ctl := " " + strings.TrimSpace(string(b)) + " "
		if strings.Contains(ctl, " memory ") && strings.Contains(ctl, " pids ") {
			return cgroupLayout{v2: dir, v2mount: v2mount}
		}
	}
	if l.v1["memory"] != "" && l.v1["pids"] != "" {
		l.v1mounts = mounts
		return l
	}
	return cgroupLayout{reason: "neither cgroup v2 with the memory and pids controllers nor the v1 memory and pids controllers are mounted"}
}

// String says which layout is used, for the runner's start message.
func (l cgroupLayout) String() string {
	switch {
	case l.v2 != "":
		return "cgroup v2 at " + l.v2
	case len(l.v1) > 0:
		return fmt.Sprintf("cgroup v1 (memory %s, pids %s)", l.v1["memory"], l.v1["pids"])
	}
	return "no cgroups: " + l.reason
}

func (l cgroupLayout) ok() bool { return l.v2 != "" || len(l.v1) > 0 }

var (
	v2Once sync.Once
	v2Base string
	v2Err  error
)

// v2Parent is the cgroup jetci's step groups go under in v2: the runner's
// own group (delegated to it: systemd's Delegate=yes, a container's
// cgroup namespace), with memory, pids and cpu enabled for its children. A
// v2 group with processes cannot enable controllers for its children, so the
// runner first moves itself into a leaf of its own, jetci-runner.
func (l cgroupLayout) v2Parent() (string, error) {
	v2Once.Do(func() {
		base := l.v2
		enable := func() error {
			var errs []error
			for _, c := range []string{"+memory", "+pids", "+cpu"} {
				if err := os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte(c), 0); err != nil && c != "+cpu" {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		}
		if err := enable(); err != nil {
			leaf := filepath.Join(base, "jetci-runner")
			if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				v2Err = fmt.Errorf("cgroup %s: %w", leaf, err)
				return
			}
			if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
				v2Err = fmt.Errorf("cgroup %s: move the runner in: %w", leaf, err)
				return
			}
			if err := enable(); err != nil {
				v2Err = fmt.Errorf("cgroup %s: cannot enable the memory and pids controllers (is it delegated to the runner?): %w", base, err)
				return
			}
		}
		v2Base = base
	})
	return v2Base, v2Err
}

// stepCgroup is the cgroup (one per controller in v1) steps run in. Each
// slot has one, made on its first step and reused (making and removing a
// memory cgroup costs milliseconds): before each step its limits are set
// anew and its counters read, so that each step's figures are its own.
type stepCgroup struct {
	v2   string
	v1   map[string]string // controller → directory
	dirs []string
	// rel is the group's path inside the hierarchy that counts its CPU time
	// (v2's, or v1's cpuacct), what a container engine takes as
	// --cgroup-parent; others are the directories the engine makes at that
	// path in the other v1 hierarchies, removed with the group.
	rel    string
	others []string
	// The counters when the step started.
	oomBase, pidsBase int
	cpuBase           time.Duration
}

// newSlotCgroup makes the cgroup of a slot's steps: name is unique to the
// runner process and slot.
func newSlotCgroup(name string) (*stepCgroup, error) {
	l := cgroups()
	if !l.ok() {
		return nil, errors.New(l.reason)
	}
	reapOnce.Do(func() { reapStale(l) })
	cg := &stepCgroup{}
	if l.v2 != "" {
		parent, err := l.v2Parent()
		if err != nil {
			return nil, err
		}
		cg.v2 = filepath.Join(parent, name)
		cg.dirs = []string{cg.v2}
		if rel, err := filepath.Rel(l.v2mount, cg.v2); err == nil && !strings.HasPrefix(rel, "..") {
			cg.rel = "/" + rel
		}
	} else {
		cg.v1 = map[string]string{}
		for _, c := range []string{"memory", "pids", "cpuacct"} {
			if d := l.v1[c]; d != "" {
				cg.v1[c] = filepath.Join(d, name)
				cg.dirs = append(cg.dirs, cg.v1[c])
			}
		}
		// The engine makes --cgroup-parent's path in every controller; it is
		// the one that counts CPU time that must be the slot's.
		if d := cg.v1["cpuacct"]; d != "" {
			if rel, err := filepath.Rel(l.v1mounts["cpuacct"], d); err == nil && !strings.HasPrefix(rel, "..") {
				cg.rel = "/" + rel
				seen := map[string]bool{}
				for _, d := range cg.dirs {
					seen[d] = true
				}
				for _, m := range l.v1mounts {
					if d := filepath.Join(m, cg.rel); !seen[d] {
						seen[d] = true
						cg.others = append(cg.others, d)
					}
				}
			}
		}
	}
	for _, d := range cg.dirs {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			cg.remove()
			return nil, fmt.Errorf("make cgroup: %w", err)
		}
	}
	return cg, nil
}

// start readies the group for a step with these memory and process limits
// (0: none): it must be empty.
func (cg *stepCgroup) start(memory int64, procs int) error {
	set := func(dir, file, v string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			return fmt.Errorf("cgroup %s: %w", file, err)
		}
		return nil
	}
	pidsMax := "max"
	if procs > 0 {
		pidsMax = strconv.Itoa(procs)
	}
	var err error
	if cg.v2 != "" {
		mem := "max"
		if memory > 0 {
			mem = strconv.FormatInt(memory, 10)
		}
		err = set(cg.v2, "memory.max", mem)
		if memory > 0 {
			_ = set(cg.v2, "memory.swap.max", "0") // absent without swap accounting
		}
		if err == nil {
			err = set(cg.v2, "pids.max", pidsMax)
		}
	} else {
		mem := "-1"
		if memory > 0 {
			mem = strconv.FormatInt(memory, 10)
		}
		// memory+swap may never be below memory: lift it, set memory, then
		// bound it too (it is absent without swap accounting).
		d := cg.v1["memory"]
		_ = set(d, "memory.memsw.limit_in_bytes", "-1")
		err = set(d, "memory.limit_in_bytes", mem)
		_ = set(d, "memory.memsw.limit_in_bytes", mem)
		_ = set(d, "memory.max_usage_in_bytes", "0")
		if err == nil {
			err = set(cg.v1["pids"], "pids.max", pidsMax)
		}
	}
	cg.oomBase, cg.pidsBase, cg.cpuBase = cg.oomKills(), cg.pidsMaxEvents(), cg.cpuTotal()
	return err
}

// add puts process pid (and so everything it starts from now on) in the group.
func (cg *stepCgroup) add(pid int) error {
	for _, d := range cg.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	return nil
}

// pids lists the processes in the group.
func (cg *stepCgroup) pids() []int {
	b, _ := os.ReadFile(filepath.Join(cg.dirs[0], "cgroup.procs"))
	var out []int
	for _, s := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(s); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// kill ends every process in the group, those that moved to a session or
// process group of their own included: the v2 cgroup.kill where there is one,
// else SIGKILL to each until none is left (the group is frozen-free, so a
// fork racing the kill is caught by the next round).
func (cg *stepCgroup) kill() {
	if cg.v2 != "" && os.WriteFile(filepath.Join(cg.v2, "cgroup.kill"), []byte("1"), 0) == nil {
		return
	}
	// A process already sent SIGKILL stays listed until it is gone, and
	// cannot fork any more: the rounds go on only while new processes show
	// up (a fork that raced the last round), not while the killed ones exit
	// (re-reading the list as fast as possible then cost a runner more CPU
	// than its jobs: waitEmpty polls for that).
	killed := map[int]bool{}
	for round := 0; round < 100; round++ {
		fresh := 0
		for _, p := range cg.pids() {
			if !killed[p] {
				killed[p] = true
				fresh++
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if fresh == 0 {
			return
		}
	}
}

// empty reports whether no process is left in the group.
func (cg *stepCgroup) empty() bool { return len(cg.pids()) == 0 }

// cpu is the CPU time the step's processes used, as the kernel counts it.
func (cg *stepCgroup) cpu() time.Duration { return cg.cpuTotal() - cg.cpuBase }

func (cg *stepCgroup) cpuTotal() time.Duration {
	if cg.v2 != "" {
		b, _ := os.ReadFile(filepath.Join(cg.v2, "cpu.stat"))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return time.Duration(n) * time.Microsecond
			}
		}
		return 0
	}
	if d := cg.v1["cpuacct"]; d != "" {
		b, _ := os.ReadFile(filepath.Join(d, "cpuacct.usage"))
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return time.Duration(n)
	}
	return 0
}

// oomKilled reports whether the kernel killed a process of the step for
// going over its memory limit.
func (cg *stepCgroup) oomKilled() bool { return cg.oomKills() > cg.oomBase }

func (cg *stepCgroup) oomKills() int {
	file := filepath.Join(cg.v2, "memory.events")
	if cg.v2 == "" {
		file = filepath.Join(cg.v1["memory"], "memory.oom_control")
	}
	b, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// peakMemory is the most memory the group held (0: unknown).
func (cg *stepCgroup) peakMemory() int64 {
	file := filepath.Join(cg.v2, "memory.peak")
	if cg.v2 == "" {
		file = filepath.Join(cg.v1["memory"], "memory.max_usage_in_bytes")
	}
	b, _ := os.ReadFile(file)
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// remove kills what is left and removes the group's directories.
func (cg *stepCgroup) remove() {
	cg.kill()
	// What a container engine made under the group (its containers' and
	// conmon's groups, empty once they exited) goes first.
	for _, d := range append(slices.Clone(cg.dirs), cg.others...) {
		removeChildren(d)
	}
	for _, d := range cg.others {
		_ = unix.Rmdir(d)
	}
	for _, d := range cg.dirs {
		for i := 0; i < 50; i++ {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(2 * time.Millisecond) // killed processes are still exiting
			cg.kill()
		}
	}
}

// removeChildren removes the (empty) cgroups under dir, deepest first.
func removeChildren(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			sub := filepath.Join(dir, e.Name())
			removeChildren(sub)
			_ = unix.Rmdir(sub)
		}
	}
}

// pidsRefused is how many forks of the step the kernel refused at pids.max.
func (cg *stepCgroup) pidsRefused() int { return cg.pidsMaxEvents() - cg.pidsBase }

func (cg *stepCgroup) pidsMaxEvents() int {
	dir := cg.v2
	if dir == "" {
		dir = cg.v1["pids"]
	}
	b, _ := os.ReadFile(filepath.Join(dir, "pids.events"))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "max "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

var reapOnce sync.Once

// reapStale removes the empty step groups of runners that are gone (killed
// before they could remove them): jetci-<pid>-... whose pid is not alive.
func reapStale(l cgroupLayout) {
	parents := []string{l.v2}
	if l.v2 == "" {
		parents = nil
		for _, d := range l.v1 {
			parents = append(parents, d)
		}
	}
	for _, p := range parents {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			rest, ok := strings.CutPrefix(e.Name(), "jetci-")
			if !ok || !e.IsDir() {
				continue
			}
			pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
			if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM) {
				continue
			}
			_ = unix.Rmdir(filepath.Join(p, e.Name())) // fails, harmlessly, when not empty
		}
	}
}
