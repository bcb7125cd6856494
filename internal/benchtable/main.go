// Command benchtable runs jetci's performance scenarios — each a `go test
// -bench` benchmark that measures jetci and its baseline in the same run — and
// prints one table: the figure, the baseline beside it, the goal and whether
// it was met. BENCHMARKS.md holds its latest output.
//
//	go run ./internal/benchtable              # every scenario, once
//	go run ./internal/benchtable -count 3     # three runs of each
//	go run ./internal/benchtable -only drain  # scenarios whose name matches
//
// Run it from the repository root on a quiet machine: the scenarios start real
// servers and processes, and another load on the machine shows in the figures.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// scenario is one benchmark and how to read its metrics.
type scenario struct {
	name    string
	pkg     string
	bench   string // -bench regexp
	figure  string // what is measured, for the table
	value   func(m metrics) string
	base    func(m metrics) string
	goal    string
	met     func(m metrics) bool
	context string // e.g. the reference system's figure
}

// metrics are one run's reported values by unit.
type metrics map[string]float64

func ms(v float64) string { return fmt.Sprintf("%.0f ms", v) }
func sec(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2f s", v)
	}
	return fmt.Sprintf("%.1f s", v)
}

var scenarios = []scenario{
	{
		name: "push-started", pkg: "./cmd/jetci", bench: "PushHookToStarted",
		figure: "push hook → job started, p50 (15 pushes)",
		value:  func(m metrics) string { return ms(m["started_p50_ms"]) },
		base:   func(m metrics) string { return "test alone " + ms(m["test_p50_ms"]) },
		goal:   "≤ 50 ms",
		met:    func(m metrics) bool { return m["started_p50_ms"] <= 50 },
	},
	{
		name: "push-result", pkg: "./cmd/jetci", bench: "PushHookToStarted",
		figure: "push hook → result, p50",
		value:  func(m metrics) string { return ms(m["result_p50_ms"]) },
		base:   func(m metrics) string { return "test alone " + ms(m["test_p50_ms"]) },
		goal:   "≤ 100 ms + the test",
		met:    func(m metrics) bool { return m["result_p50_ms"] <= 100+m["test_p50_ms"] },
	},
	{
		name: "commit-result", pkg: "./cmd/jetci", bench: "CommitToResult",
		figure:  "commit → result with 200 ms polling, p50",
		value:   func(m metrics) string { return ms(m["p50_ms"]) },
		base:    func(m metrics) string { return "checkout + test by hand " + ms(m["bare_p50_ms"]) },
		goal:    "≤ 300 ms",
		met:     func(m metrics) bool { return m["p50_ms"] <= 300 },
		context: "500-lines CI: p50 3.1 s",
	},
	{
		name: "idle-polling", pkg: "./observer", bench: "IdlePolling100x10",
		figure: "idle polling, 100 repos × 10 branches at 1 s: CPU / RSS",
		value: func(m metrics) string {
			return fmt.Sprintf("%.1f %% of a core, %.0f MB", m["cpu_pct_of_core"], m["rss_MB"])
		},
		base: func(m metrics) string { return "—" },
		goal: "≤ 5 %, ≤ 200 MB",
		met:  func(m metrics) bool { return m["cpu_pct_of_core"] <= 5 && m["rss_MB"] <= 200 },
	},
	{
		name: "checkout", pkg: "./runner", bench: "Checkout$",
		figure: "checkout of 50 commits, 10,000-file repo (40 near, 10 far)",
		value: func(m metrics) string {
			return fmt.Sprintf("near %.0f ms, far %.0f ms", m["jetci_near_ms"], m["jetci_far_ms"])
		},
		base: func(m metrics) string {
			return fmt.Sprintf("git: near %.0f ms, far %.0f ms; ratio %.2f", m["git_near_ms"], m["git_far_ms"], m["ratio"])
		},
		goal: "ratio ≤ 1.2",
		met:  func(m metrics) bool { return m["ratio"] <= 1.2 },
	},
	{
		name: "push100", pkg: "./cmd/jetci", bench: "Push100",
		figure: "100 commits pushed at once, `jetci up --runners 2`: all results",
		value:  func(m metrics) string { return ms(m["all_ms"]) },
		base: func(m metrics) string {
			return fmt.Sprintf("bare, sequential %s; ratio %.2f", ms(m["bare_seq_ms"]), m["ratio"])
		},
		goal:    "ratio ≤ 0.6",
		met:     func(m metrics) bool { return m["ratio"] <= 0.6 },
		context: "500-lines CI: 1 of 20 commits tested in a burst",
	},
	{
		name: "enqueue", pkg: "./dispatcher", bench: "FullCheckEnqueue15k",
		figure: "full check: 15,000 jobs enqueued by the dispatcher",
		value:  func(m metrics) string { return sec(m["enqueue_s"]) + fmt.Sprintf(", peak RSS %.0f MB", m["rss_MB"]) },
		base:   func(m metrics) string { return "15,000 bare publishes " + sec(m["baseline_s"]) },
		goal:   "≤ 10 s",
		met:    func(m metrics) bool { return m["enqueue_s"] <= 10 },
	},
	{
		name: "drain", pkg: "./cmd/jetci", bench: "FullCheck15k",
		figure: "full check in processes: 15,000 no-op jobs drained by 8 slots",
		value: func(m metrics) string {
			return fmt.Sprintf("%s (queued at %s, records at %s)", sec(m["drain_s"]), sec(m["enqueue_s"]), sec(m["records_s"]))
		},
		base: func(m metrics) string {
			return fmt.Sprintf("the steps alone, 8 at a time %s; 15,000 bare publishes %s", sec(m["base_steps_s"]), sec(m["base_publish_s"]))
		},
		goal: "queued ≤ 2 s, records ≤ 15 s",
		met:  func(m metrics) bool { return m["enqueue_s"] <= 2 && m["records_s"] <= 15 },
	},
	{
		name: "drain-server", pkg: "./cmd/jetci", bench: "FullCheck15k",
		figure: "full check: the server's CPU and messages per job",
		value: func(m metrics) string {
			return fmt.Sprintf("%.0f µs, %.1f messages", m["server_cpu_us/job"], m["server_msgs/job"])
		},
		base: func(m metrics) string { return "—" },
		goal: "measured",
		met:  func(m metrics) bool { return true },
	},
	{
		name: "drain-rss", pkg: "./cmd/jetci", bench: "FullCheck15k",
		figure: "full check: peak RSS per process",
		value: func(m metrics) string {
			var parts []string
			for _, p := range []string{"server", "dispatcher", "reporter", "runner-amd64", "runner-arm64", "runner-riscv64"} {
				parts = append(parts, fmt.Sprintf("%s %.0f MB", p, m[p+"_MB"]))
			}
			return strings.Join(parts, ", ")
		},
		base: func(m metrics) string { return "—" },
		goal: "bounded",
		met: func(m metrics) bool {
			for k, v := range m {
				if strings.HasSuffix(k, "_MB") && v > 1024 {
					return false
				}
			}
			return true
		},
	},
	{
		name: "history-fold", pkg: "./cmd/jetci", bench: "History",
		figure: "history of 100,000 jobs folded into the reporter's read model (SQLite; JETCI_BENCH_DB=postgres, JETCI_BENCH_JOBS=N)",
		value:  func(m metrics) string { return fmt.Sprintf("%.0f jobs/s", m["fold_jobs/s"]) },
		base: func(m metrics) string {
			return fmt.Sprintf("reading the stream alone %.0f jobs/s", m["base_read_jobs/s"])
		},
		goal: "≥ 5,000 jobs/s",
		met:  func(m metrics) bool { return m["fold_jobs/s"] >= 5000 },
	},
	{
		name: "history-rss", pkg: "./cmd/jetci", bench: "History",
		figure: "history: reporter RSS (peak) after the fold and every page",
		value:  func(m metrics) string { return fmt.Sprintf("%.0f MB (peak %.0f MB)", m["rss_MB"], m["rss_peak_MB"]) },
		base:   func(m metrics) string { return "in-memory view before: 770 MB at 100,000 jobs" },
		goal:   "≤ 300 MB",
		met:    func(m metrics) bool { return m["rss_peak_MB"] <= 300 },
	},
	{
		name: "history-pages", pkg: "./cmd/jetci", bench: "History",
		figure: "history: the slowest page or API list at p95, and the biggest",
		value:  func(m metrics) string { return fmt.Sprintf("%s, %.0f KB", ms(m["page_p95_ms"]), m["page_max_KB"]) },
		base:   func(m metrics) string { return "in-memory view before: / 0.78 s, /api/v1/repos 3.6 MB at 100,000 jobs" },
		goal:   "≤ 100 ms, ≤ 500 KB",
		met:    func(m metrics) bool { return m["page_p95_ms"] <= 100 && m["page_max_KB"] <= 500 },
	},
	{
		name: "history-restart", pkg: "./cmd/jetci", bench: "History",
		figure: "history: reporter restart → serving current data; jetci results --repo R --branch B --limit 100",
		value:  func(m metrics) string { return sec(m["restart_s"]) + "; " + ms(m["results_ms"]) },
		base:   func(m metrics) string { return "before: jetci results --branch B 3.8 s at 100,000 jobs" },
		goal:   "≤ 3 s; ≤ 200 ms",
		met:    func(m metrics) bool { return m["restart_s"] <= 3 && m["results_ms"] <= 200 },
	},
	{
		name: "redelivery", pkg: "./cmd/jetci", bench: "KillToRedelivery",
		figure: "runner killed mid-job → job running elsewhere, p50 of 10",
		value:  func(m metrics) string { return ms(m["p50_ms"]) + ", max " + ms(m["max_ms"]) },
		base:   func(m metrics) string { return "lease TTL 3 s" },
		goal:   "≤ 1 s",
		met:    func(m metrics) bool { return m["p50_ms"] <= 1000 },
	},
}

func main() {
	count := flag.Int("count", 1, "runs of each benchmark")
	only := flag.String("only", "", "run only the scenarios whose name matches this regexp")
	verbose := flag.Bool("v", false, "show the benchmarks' own output")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: go run ./internal/benchtable [-count N] [-only REGEXP] [-v]\n\n"+
			"Runs jetci's performance scenarios with their baselines and prints one table.\nScenarios:\n")
		for _, s := range scenarios {
			fmt.Fprintf(os.Stderr, "  %-13s %s\n", s.name, s.figure)
		}
		fmt.Fprintln(os.Stderr)
		flag.PrintDefaults()
	}
	flag.Parse()
	var re *regexp.Regexp
	if *only != "" {
		var err error
		if re, err = regexp.Compile(*only); err != nil {
			fmt.Fprintf(os.Stderr, "benchtable: -only: %v\n", err)
			os.Exit(2)
		}
	}
	// One `go test` per benchmark, shared by the scenarios that read it.
	runs := map[string][]metrics{}
	var order []string
	for _, s := range scenarios {
		if re != nil && !re.MatchString(s.name) {
			continue
		}
		key := s.pkg + " " + s.bench
		if _, ok := runs[key]; ok {
			continue
		}
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "running %s -bench %s -count %d ...", s.pkg, s.bench, *count)
		ms, err := run(s.pkg, s.bench, *count, *verbose)
		fmt.Fprintf(os.Stderr, " %s\n", time.Since(t0).Round(time.Second))
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchtable: %s: %v\n", key, err)
		}
		runs[key] = ms
		order = append(order, key)
	}
	if len(order) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no scenario matches")
		os.Exit(2)
	}
	host, _ := os.Hostname()
	fmt.Printf("Machine: %s, %s. %s.\n\n", host, cpuModel(), time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Println("| scenario | run | jetci | baseline, same run | goal | met |")
	fmt.Println("|---|---|---|---|---|---|")
	failed := false
	for _, s := range scenarios {
		if re != nil && !re.MatchString(s.name) {
			continue
		}
		ms := runs[s.pkg+" "+s.bench]
		if len(ms) == 0 {
			fmt.Printf("| %s | — | did not run | | %s | no |\n", s.figure, s.goal)
			failed = true
			continue
		}
		for i, m := range ms {
			ok := "yes"
			if !s.met(m) {
				ok, failed = "**no**", true
			}
			fmt.Printf("| %s | %d | %s | %s | %s | %s |\n", s.figure, i+1, s.value(m), s.base(m), s.goal, ok)
		}
	}
	fmt.Println()
	for _, s := range scenarios {
		if s.context != "" && (re == nil || re.MatchString(s.name)) {
			fmt.Printf("- For reference: %s.\n", s.context)
		}
	}
	if failed {
		os.Exit(1)
	}
}

var benchLine = regexp.MustCompile(`^Benchmark\S+\s+\d+\s+(.*)$`)

// run runs one benchmark count times and returns each run's metrics.
func run(pkg, bench string, count int, verbose bool) ([]metrics, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", bench, "-benchtime", "1x", "-count", strconv.Itoa(count), "-timeout", "60m", pkg)
	var out bytes.Buffer
	if verbose {
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, os.Stderr), os.Stderr
	} else {
		cmd.Stdout, cmd.Stderr = &out, &out
	}
	err := cmd.Run()
	var res []metrics
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		mm := benchLine.FindStringSubmatch(sc.Text())
		if mm == nil {
			continue
		}
		res = append(res, parseMetrics(mm[1]))
	}
	if err != nil {
		tail := out.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return res, fmt.Errorf("%v\n%s", err, tail)
	}
	return res, nil
}

// parseMetrics reads "value unit" pairs of a benchmark line.
func parseMetrics(s string) metrics {
	f := strings.Fields(s)
	m := metrics{}
	for i := 0; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err == nil && !math.IsNaN(v) {
			m[f[i+1]] = v
		}
	}
	return m
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	var model string
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			switch strings.TrimSpace(k) {
			case "model name":
				model = strings.TrimSpace(v)
			case "processor":
				n++
			}
		}
	}
	return fmt.Sprintf("%d × %s", n, model)
}
