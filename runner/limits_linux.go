package runner

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jetci/jetci/events"
)

// limitsEnforced says whether this OS enforces job limits.
const limitsEnforced = true

// groupUsage is what the processes of one process group use now.
type groupUsage struct {
	cpu   time.Duration // user + system, with the children they waited for
	rss   int64         // resident bytes, summed (shared pages count in each)
	procs int
}

// clockTick is the unit of CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// usageOf reads /proc for the processes of group pgid.
func usageOf(pgid int) groupUsage {
	var u groupUsage
	forEachProc(func(pid int, f []string) {
		if pg, _ := strconv.Atoi(f[2]); pg != pgid {
			return
		}
		u.procs++
		var ticks int64
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			n, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += n
		}
		u.cpu += time.Duration(ticks) * clockTick
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		u.rss += rss * int64(os.Getpagesize())
	})
	return u
}

// forEachProc calls fn with the fields of /proc/<pid>/stat after the command
// name (f[0] is the state, f[2] the process group) for every process.
func forEachProc(fn func(pid int, f []string)) {
	d, err := os.Open("/proc")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var buf [1024]byte // a stat line is a few hundred bytes
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		// Plain syscalls: os.Open would register each file with the poller.
		fd, err := syscall.Open("/proc/"+name+"/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			continue // gone meanwhile
		}
		n, err := syscall.Read(fd, buf[:])
		syscall.Close(fd)
		if err != nil || n <= 0 {
			continue
		}
		b := buf[:n]
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 > len(b) {
			continue
		}
		f := bytes.Fields(b[i+2:])
		if len(f) < 22 {
			continue
		}
		fs := make([]string, 22)
		for j := range fs {
			fs[j] = string(f[j])
		}
		fn(pid, fs)
	}
}

// userThreads counts the threads of this user's processes: what RLIMIT_NPROC
// counts on Linux.
func userThreads() int {
	uid := uint32(os.Getuid())
	n := 0
	forEachProc(func(pid int, f []string) {
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+strconv.Itoa(pid), &st) == nil && st.Uid == uid {
			t, _ := strconv.Atoi(f[17])
			n += max(t, 1)
		}
	})
	return n
}

// capForks sets RLIMIT_NPROC of the step's shell (and so of all it starts) to
// what this user runs now plus generous headroom: a fork bomb stops there even
// between two looks of the watcher, which enforces the limit itself. The
// kernel does not apply it to root.
func capForks(pid int, l events.Limits) {
	if l.Processes <= 0 {
		return
	}
	n := uint64(userThreads() + 8*l.Processes + 64)
	var old unix.Rlimit
	if unix.Prlimit(pid, unix.RLIMIT_NPROC, nil, &old) == nil && old.Max < n {
		n = old.Max // an unprivileged process cannot raise its hard limit
	}
	_ = unix.Prlimit(pid, unix.RLIMIT_NPROC, &unix.Rlimit{Cur: n, Max: n}, nil)
}
