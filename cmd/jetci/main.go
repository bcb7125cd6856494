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
		fmt.Fprint(fs.Output(), envHelp)
	}
	return fs
}

// flagGroup is a heading of a command's help and the flags under it.
type flagGroup struct {
	title string
	flags []string
}

// groupFlags makes a command's help list its flags under headings, in the
// groups' order; a flag in no group is listed last, under "Other".
func groupFlags(fs *flag.FlagSet, usage string, groups []flagGroup) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, strings.TrimSpace(usage)+"\n\nFlags:\n")
		listed := map[string]bool{}
		list := func(title string, names []string) {
			part := flag.NewFlagSet("", flag.ContinueOnError)
			part.SetOutput(w)
			added := 0
			for _, n := range names {
				if f := fs.Lookup(n); f != nil && !listed[n] {
					listed[n] = true
					part.Var(f.Value, f.Name, f.Usage)
					part.Lookup(n).DefValue = f.DefValue
					added++
				}
			}
			if added == 0 {
				return
			}
			fmt.Fprintf(w, "\n%s:\n", title)
			part.PrintDefaults()
		}
		for _, g := range groups {
			list(g.title, g.flags)
		}
		var rest []string
		fs.VisitAll(func(f *flag.Flag) {
			if !listed[f.Name] {
				rest = append(rest, f.Name)
			}
		})
		if len(rest) > 0 {
			list("Other", rest)
		}
		fmt.Fprint(w, envHelp)
	}
}

// The environment rule: every flag may be given as JETCI_<FLAG>.
const envHelp = `
Environment: every flag may also be set as JETCI_<FLAG>, its name in capitals
with _ for -, e.g. JETCI_LOG_LEVEL=debug for --log-level; the command line wins.
Not read this way: the variables a runner gives each job (JETCI_REPO,
JETCI_BRANCH, JETCI_COMMIT, JETCI_ARCH, JETCI_JOB, …), so that a jetci command
run inside a job does not take them for its own flags; --nats-password and
--admin-token, whose variables ($JETCI_<USER>_PASSWORD, $JETCI_NATS_PASSWORD,
$JETCI_ADMIN_TOKEN) come after their -file flags, as their help says.
`

// flagEnv is the environment variable of a flag (the environment rule).
func flagEnv(name string) string {
	return "JETCI_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// jobVars are the variables a runner sets for every job (runner/env.go,
// runner/job.go); the environment rule does not read them.
var jobVars = map[string]bool{"JETCI_REPO": true, "JETCI_BRANCH": true, "JETCI_COMMIT": true, "JETCI_ARCH": true,
	"JETCI_JOB": true, "JETCI_MODULE": true, "JETCI_JOB_ID": true, "JETCI_ATTEMPT": true, "JETCI_RETRY": true, "JETCI_EMULATED": true}

// envOwnOrder are the flags whose variables are read in their own order of
// precedence, after a file flag (see their help), not by the rule.
var envOwnOrder = map[string]bool{"nats-password": true, "admin-token": true}

// applyEnv sets each flag not given on the command line from its JETCI_<FLAG>
// variable, when that is set and not empty.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := flagEnv(f.Name)
		if err != nil || given[f.Name] || envOwnOrder[f.Name] || jobVars[name] {
			return
		}
		if v := os.Getenv(name); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("$%s (for --%s): %v", name, f.Name, e)
			}
		}
	})
	return err
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
	if err := applyEnv(fs); err != nil {
		fmt.Fprintln(fs.Output(), err)
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
	fs.StringVar(&l.level, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.StringVar(&l.format, "log-format", "auto", "log format: auto (human on a terminal, JSON otherwise), console, json")
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
