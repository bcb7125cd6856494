package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDetectCgroups: the pure v2 layout (cgroup2 at /sys/fs/cgroup with the
// controllers), the hybrid one (v1 controllers beside an empty cgroup2, as
// on Debian hosts booted so), and none.
func TestDetectCgroups(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cg := filepath.Join(dir, "cg")
	write("cg/unified/cgroup.controllers", "hugetlb\n")
	write("v2/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
	hybrid := write("hybrid.mountinfo", strings.ReplaceAll(`31 23 0:28 / CG rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / CG/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / CG/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / CG/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / CG/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / CG/unified rw,relatime - cgroup2 cgroup2 rw
`, "CG", cg))
	hybridSelf := write("hybrid.cgroup", "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n")
	l := detectCgroups(hybrid, hybridSelf)
	if l.v2 != "" || l.v1["memory"] != filepath.Join(cg, "memory/process_api/abc") || l.v1["pids"] != filepath.Join(cg, "pids") || l.v1["cpuacct"] != filepath.Join(cg, "cpuacct") {
		t.Errorf("hybrid: %+v", l)
	}
	v2 := write("v2.mountinfo", "30 23 0:27 / "+filepath.Join(dir, "v2")+" rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
	v2Self := write("v2.cgroup", "0::/system.slice/jetci-runner.service\n")
	if l := detectCgroups(v2, v2Self); l.v2 != filepath.Join(dir, "v2/system.slice/jetci-runner.service") {
		t.Errorf("v2: %+v", l)
	}
	none := write("none.mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
	if l := detectCgroups(none, v2Self); l.ok() || !strings.Contains(l.reason, "memory and pids") {
		t.Errorf("none: %+v", l)
	}
}
