package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/broker/brokertest"
	"github.com/jetci/jetci/events"
)

// farNet is a network namespace of its own joined to this one by a veth pair:
// a process started in it reaches this side only through hostIP, across a
// link that delay slows down. The delay is `tc netem` on both ends of the
// pair where the kernel has netem; where it has not (sch_netem not built, as
// on the machine of BENCHMARKS), a TCP proxy on hostIP holds every chunk for
// the one-way delay in each direction. Everything is removed when the test
// ends (deleting the namespace deletes the pair).
type farNet struct {
	ns, host, peer string
	hostIP, peerIP string
	netem          bool         // the delay is netem's, not the proxy's
	oneWay         atomic.Int64 // the proxy's delay, in nanoseconds
}

// newFarNet makes the namespace, or skips the test where this machine does
// not allow it (not root, no ip); JETCI_REQUIRE_NETNS=1 makes that a failure
// instead (CI).
func newFarNet(tb testing.TB) *farNet {
	tb.Helper()
	skip := func(why string) {
		if os.Getenv("JETCI_REQUIRE_NETNS") != "" {
			tb.Fatalf("network namespace: %s (JETCI_REQUIRE_NETNS is set)", why)
		}
		tb.Skipf("network namespace: %s", why)
	}
	if os.Geteuid() != 0 {
		skip("needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skip("ip is not installed (iproute2)")
	}
	id := os.Getpid() % 50000
	n := &farNet{ns: fmt.Sprintf("jetci-far-%d", id), host: fmt.Sprintf("jf%da", id), peer: fmt.Sprintf("jf%db", id),
		hostIP: fmt.Sprintf("10.%d.%d.1", 100+id/250%100, id%250), peerIP: fmt.Sprintf("10.%d.%d.2", 100+id/250%100, id%250)}
	tb.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", n.ns).Run()
		_ = exec.Command("ip", "link", "del", n.host).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", n.ns},
		{"link", "add", n.host, "type", "veth", "peer", "name", n.peer},
		{"link", "set", n.peer, "netns", n.ns},
		{"addr", "add", n.hostIP + "/30", "dev", n.host},
		{"link", "set", n.host, "up"},
		{"netns", "exec", n.ns, "ip", "addr", "add", n.peerIP + "/30", "dev", n.peer},
		{"netns", "exec", n.ns, "ip", "link", "set", n.peer, "up"},
		{"netns", "exec", n.ns, "ip", "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			skip(fmt.Sprintf("ip %s: %v: %s", strings.Join(args, " "), err, out))
		}
	}
	if _, err := exec.LookPath("tc"); err == nil {
		n.netem = exec.Command("tc", "qdisc", "replace", "dev", n.host, "root", "netem", "delay", "0us").Run() == nil
	}
	return n
}

// delay sets the one-way delay of the link: the round trip is twice it.
func (n *farNet) delay(tb testing.TB, oneWay time.Duration) {
	tb.Helper()
	if !n.netem {
		n.oneWay.Store(int64(oneWay))
		return
	}
	d := strconv.FormatInt(oneWay.Microseconds(), 10) + "us"
	for _, args := range [][]string{
		{"tc", "qdisc", "replace", "dev", n.host, "root", "netem", "delay", d},
		{"ip", "netns", "exec", n.ns, "tc", "qdisc", "replace", "dev", n.peer, "root", "netem", "delay", d},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// front returns the address on hostIP that processes in the namespace use
// to reach target: target itself with netem (then it must listen on
// hostIP), otherwise a delaying proxy's.
func (n *farNet) front(tb testing.TB, target string) string {
	tb.Helper()
	if n.netem {
		return target
	}
	ln, err := net.Listen("tcp", n.hostIP+":0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go n.carry(s, c)
			go n.carry(c, s)
		}
	}()
	return ln.Addr().String()
}

// carry copies src to dst, each chunk once it is the link's one-way delay
// old, in order.
func (n *farNet) carry(dst, src net.Conn) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 1<<14)
	go func() {
		defer dst.Close()
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.b); err != nil {
				for range ch {
				}
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			ch <- chunk{append([]byte(nil), buf[:k]...), time.Now().Add(time.Duration(n.oneWay.Load()))}
		}
		if err != nil {
			close(ch)
			return
		}
	}
}

// BenchmarkFarRunner measures a runner far from its broker: a `jetci server`
// on this side of a veth pair, one `jetci runner` with one slot in a network
// namespace on the other side, and delay on the link (farNet: netem, or the
// delaying proxy where the kernel has no netem) giving round trips of 0, 50
// and 150 ms in turn (each with a runner of its own). After a
// warm-up job (the slot's first checkout), 20 no-op jobs (`true`, one
// commit) are queued at once and timed from the queueing until the last
// result is stored. It reports, per round trip, the time per job, jobs per
// second per slot, the runner connection's messages per job (server side,
// /connz; one runner is connected at a time) and the round trips per job the delay shows:
// (time per job − time per job at 0 ms) / round trip.
//
// The runner fetches the commit from the repository URL (here a path, as a
// clone from a forge in its region would be), never through the broker.
//
// It needs root and ip (iproute2; tc for netem); elsewhere it is skipped
// (JETCI_REQUIRE_NETNS=1: fails instead).
//
//	go test -run '^$' -bench FarRunner -benchtime 1x ./cmd/jetci
func BenchmarkFarRunner(b *testing.B) {
	const jobs = 20
	bin := jetciBinary(b)
	fn := newFarNet(b)
	for range b.N {
		repo := newGitRepo(b)
		commit := repo.Commit("no-op", map[string]string{"a.txt": "a\n"})
		dir := b.TempDir()
		addr := reserveAddr(b) // loopback: netem delays the veth pair, so the server listens on its host end
		if fn.netem {
			l, err := net.Listen("tcp", fn.hostIP+":0")
			if err != nil {
				b.Fatal(err)
			}
			addr = l.Addr().String()
			l.Close()
		}
		far := fn.front(b, addr) // what the runner dials
		b.Logf("delay by netem: %v", fn.netem)
		monitor := reserveAddr(b)
		server := startChild(b, "server", bin, "server", "--listen", addr, "--store", dir+"/nats", "--monitor", monitor, "--log-format", "json")
		_ = server
		var js jetstream.JetStream
		brokertest.CheckFor(b, 30*time.Second, 20*time.Millisecond, func() error {
			nc, j, err := events.Connect("nats://"+addr, events.ConnectOptions{Name: "bench", Log: zerolog.Nop()})
			if err != nil {
				return err
			}
			b.Cleanup(nc.Close)
			js = j
			return nil
		})
		ctx := context.Background()
		if err := events.DefaultSetup().Ensure(ctx, js); err != nil {
			b.Fatal(err)
		}
		rst, err := js.Stream(ctx, events.StreamResults)
		if err != nil {
			b.Fatal(err)
		}
		perJob := map[time.Duration]time.Duration{}
		for _, rtt := range []time.Duration{0, 50 * time.Millisecond, 150 * time.Millisecond} {
			fn.delay(b, rtt/2)
			ms := strconv.FormatInt(rtt.Milliseconds(), 10)
			id := "far-" + ms
			runner := startChild(b, id, "ip", "netns", "exec", fn.ns, bin, "runner", "--nats", "nats://"+far, "--arch", "amd64",
				"--slots", "1", "--id", id, "--work", filepath.Join(dir, id), "--exec", "host", "--log-format", "json")
			brokertest.CheckFor(b, 60*time.Second, 20*time.Millisecond, func() error {
				if !strings.Contains(runner.logs.String(), "runner ready") {
					return fmt.Errorf("runner %s not ready", id)
				}
				return nil
			})
			branch := "rtt" + ms
			queue := func(n int, prefix string) {
				for i := 0; i < n; i++ {
					j := &events.JobQueued{JobRef: events.JobRef{Repo: "proj", Branch: branch, Commit: commit, Job: prefix + strconv.Itoa(i), Arch: "amd64"},
						RepoURL: repo.Dir, Pool: "default", Class: events.ClassUser, Steps: []string{"true"}, TimeoutMs: 60000}
					j.JobID = events.JobID(j.Repo, j.Branch, j.Commit, j.Job, j.Arch)
					data, _ := events.Encode(j)
					if _, err := js.Publish(ctx, events.JobSubject("default", "amd64", events.ClassUser, "proj", branch), data); err != nil {
						b.Fatal(err)
					}
				}
			}
			subject := events.ResultSubject("proj", branch, events.KindFinished)
			waitResults := func(n uint64) {
				brokertest.CheckFor(b, 5*time.Minute, 5*time.Millisecond, func() error {
					info, err := rst.Info(ctx, jetstream.WithSubjectFilter(subject))
					if err != nil {
						return err
					}
					if got := info.State.Subjects[subject]; got < n {
						return fmt.Errorf("%d of %d results at %s", got, n, rtt)
					}
					return nil
				})
			}
			queue(1, "warm")
			waitResults(1)
			in0, out0 := connMsgs(b, monitor, "jetci-runner")
			t0 := time.Now()
			queue(jobs, "j")
			waitResults(1 + jobs)
			took := time.Since(t0)
			in1, out1 := connMsgs(b, monitor, "jetci-runner")
			runner.kill(syscall.SIGKILL)
			perJob[rtt] = took / jobs
			b.ReportMetric(float64(perJob[rtt].Microseconds())/1000, "rtt"+ms+"_ms/job")
			b.ReportMetric(float64(jobs)/took.Seconds(), "rtt"+ms+"_jobs/s/slot")
			b.ReportMetric(float64(in1-in0)/jobs, "rtt"+ms+"_runner_msgs_in/job")
			b.ReportMetric(float64(out1-out0)/jobs, "rtt"+ms+"_runner_msgs_out/job")
			if rtt > 0 {
				b.ReportMetric(float64(perJob[rtt]-perJob[0])/float64(rtt), "rtt"+ms+"_round_trips/job")
			}
		}
	}
}

// startChild starts a process whose output is kept, killed when the test ends.
func startChild(tb testing.TB, name, bin string, args ...string) *child {
	tb.Helper()
	c := &child{cmd: exec.Command(bin, args...), logs: &syncBuffer{}}
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		c.kill(syscall.SIGKILL)
		if tb.Failed() {
			tb.Logf("%s log (tail):\n%s", name, tail(c.logs.String(), 3000))
		}
	})
	return c
}

// connMsgs is the messages the server received from and sent to the
// connection whose name holds name (its /connz).
func connMsgs(tb testing.TB, monitor, name string) (in, out int64) {
	tb.Helper()
	resp, err := http.Get("http://" + monitor + "/connz?limit=1024")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Connections []struct {
			Name    string `json:"name"`
			InMsgs  int64  `json:"in_msgs"`
			OutMsgs int64  `json:"out_msgs"`
		} `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		tb.Fatal(err)
	}
	for _, c := range v.Connections {
		if strings.Contains(c.Name, name) {
			in += c.InMsgs
			out += c.OutMsgs
		}
	}
	return in, out
}
