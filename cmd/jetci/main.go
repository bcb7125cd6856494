// Command jetci is the one binary of the jetci CI system: `jetci up` runs
// everything in one process on an embedded NATS server; the other subcommands run
// one service each against a NATS server, or talk to a running jetci.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := NewMain().Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// Main is the program: its subcommands write to Stdout and Stderr.
type Main struct {
	Stdout, Stderr io.Writer
	connState
}

// NewMain returns a Main on the process's standard streams.
func NewMain() *Main { return &Main{Stdout: os.Stdout, Stderr: os.Stderr} }

type command struct {
	name, summary string
	run           func(m *Main, ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{"up", "run everything in one process on an embedded NATS server", (*Main).up},
		{"server", "run the NATS server alone (embedded), for separate services", (*Main).server},
		{"setup", "create jetci's streams and buckets on a NATS server, as the admin", (*Main).setup},
		{"observer", "watch git repositories and publish their new commits", (*Main).observer},
		{"dispatcher", "turn commits into jobs", (*Main).dispatcher},
		{"runner", "run jobs for one CPU architecture and pool", (*Main).runner},
		{"reporter", "keep the results, serve the web UI and JSON API", (*Main).reporter},
		{"results", "print results (a table, or JSON Lines with --json)", (*Main).results},
		{"reindex", "rebuild the reporter's read model from the streams", (*Main).reindex},
		{"trigger", "run a branch head or commit now, at the highest priority", (*Main).trigger},
		{"artifacts", "download the files a job left (its artifacts)", (*Main).artifacts},
		{"notify", "tell the observers a repository changed (for a git post-receive hook)", (*Main).notify},
		{"pool", "run runner processes that follow the load, between --min and --max", (*Main).pool},
		{"recheck", "re-check a broken branch: run its head and, if it passes, release its held commits", (*Main).recheck},
	}
}

const usageHead = `jetci tests every commit on every branch of your git repositories.

Usage:
  jetci <command> [flags]

Commands:
`

const usageTail = `
Start here:
  jetci up --repo /path/to/repo      watch a repo, test every new commit, serve http://127.0.0.1:8080
  jetci results --json               the results so far, one JSON object per line

Run 'jetci <command> --help' for a command's flags.
`

func (m *Main) usage(w io.Writer) {
	fmt.Fprint(w, usageHead)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, usageTail)
}

// errUsage marks a command-line mistake whose message was already printed.
var errUsage = errors.New("usage")

// Run runs one subcommand and returns the process exit code.
func (m *Main) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		m.usage(m.Stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		m.usage(m.Stdout)
		return 0
	case "version", "--version":
		fmt.Fprintln(m.Stdout, "jetci", version())
		return 0
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := m.explain(c.run(m, ctx, args[1:]))
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		}
		fmt.Fprintf(m.Stderr, "jetci %s: %v\n", name, err)
		return 1
	}
	fmt.Fprintf(m.Stderr, "jetci: unknown command %q\n\n", name)
	m.usage(m.Stderr)
	return 2
}

// flagSet makes a command's flag set with its help text.
func (m *Main) flagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("jetci "+name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\nFlags:\n", strings.TrimSpace(usage)+"\n")
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and refuses stray arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// logFlags are the logging flags every long-running command has.
type logFlags struct{ level, format string }

// registerLogFlags adds --log-level and --log-format to a command's flags.
func registerLogFlags(fs *flag.FlagSet) *logFlags {
	l := &logFlags{}
	l.register(fs)
	return l
}

// parseLogged parses a long-running command's flags and makes its logger.
func (m *Main) parseLogged(fs *flag.FlagSet, args []string, l *logFlags) (zerolog.Logger, error) {
	if err := parse(fs, args); err != nil {
		return zerolog.Nop(), err
	}
	return l.logger(m.Stderr)
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", envOr("JETCI_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error (env JETCI_LOG_LEVEL)")
	fs.StringVar(&l.format, "log-format", envOr("JETCI_LOG_FORMAT", "auto"), "log format: auto (human on a terminal, JSON otherwise), console, json")
}

func (l *logFlags) logger(w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(l.level)
	if err != nil || l.level == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", l.level)
	}
	human := false
	switch l.format {
	case "auto":
		human = isTerminal(w)
	case "console":
		human = true
	case "json":
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format %q: want auto, console or json", l.format)
	}
	if human {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// listFlag is a flag that may be repeated, or given as a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// splitList splits comma-separated values and drops empty ones.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
