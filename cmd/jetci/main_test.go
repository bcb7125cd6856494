package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := (&Main{Stdout: &out, Stderr: &errb}).Run(context.Background(), args)
	return code, out.String(), errb.String()
}

func TestHelpForEveryCommand(t *testing.T) {
	code, out, _ := run("--help")
	if code != 0 || !strings.Contains(out, "jetci up --repo") {
		t.Fatalf("jetci --help: code %d, output %q", code, out)
	}
	for _, c := range commands() {
		if !strings.Contains(out, c.name) {
			t.Errorf("jetci --help does not list %s", c.name)
		}
		code, _, errOut := run(c.name, "--help")
		if code != 0 {
			t.Errorf("jetci %s --help exited %d", c.name, code)
		}
		if !strings.Contains(errOut, "Usage: jetci "+c.name) || !strings.Contains(errOut, "Flags:") {
			t.Errorf("jetci %s --help says %q", c.name, errOut)
		}
	}
}

func TestCommandLineMistakes(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "Usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"up", "--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"up"}, 1, "--repo is required"},
		{[]string{"up", "--repo", ".", "--arch", "AMD64!"}, 1, "AMD64!"},
		{[]string{"up", "--repo", ".", "--log-level", "loud"}, 1, "--log-level"},
		{[]string{"results", "--nats", "nats://127.0.0.1:1"}, 1, "connect"},
		{[]string{"trigger", "--repo", "x"}, 1, "--branch are required"},
		{[]string{"runner", "--arch", "x86 64"}, 1, "x86 64"},
		{[]string{"results", "stray"}, 2, `unexpected argument "stray"`},
	} {
		code, _, errOut := run(tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.msg) {
			t.Errorf("jetci %v: code %d, stderr %q; want code %d and %q", tt.args, code, errOut, tt.code, tt.msg)
		}
	}
}
