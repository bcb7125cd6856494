package main

import (
	"strings"
	"testing"
)

// TestUpHelpIsGrouped: jetci up's help lists its flags under the headings of
// upGroups, every flag under one of them (a new flag of up goes in a group).
func TestUpHelpIsGrouped(t *testing.T) {
	code, _, help := run("up", "--help")
	if code != 0 {
		t.Fatalf("jetci up --help exited %d", code)
	}
	last := -1
	for _, g := range upGroups {
		i := strings.Index(help, "\n"+g.title+":\n")
		if i < 0 {
			t.Fatalf("jetci up --help has no heading %q:\n%s", g.title, help)
		}
		if i < last {
			t.Errorf("heading %q out of order", g.title)
		}
		last = i
		section := help[i+len(g.title)+3:]
		if end := strings.Index(section, "\n\n"); end >= 0 {
			section = section[:end]
		}
		for _, f := range g.flags {
			if !strings.Contains(section, "  -"+f+" ") && !strings.HasSuffix(section, "  -"+f) && !strings.Contains(section, "  -"+f+"\n") {
				t.Errorf("--%s is not under %q", f, g.title)
			}
		}
	}
	if strings.Contains(help, "\nOther:\n") {
		t.Errorf("jetci up --help lists flags in no group (add them to upGroups):\n%s", help[strings.Index(help, "\nOther:\n"):])
	}
	if !strings.Contains(help, "JETCI_<FLAG>") {
		t.Errorf("jetci up --help does not state the environment rule")
	}
}

// TestFlagsFromTheEnvironment: every flag reads JETCI_<FLAG> when not given
// on the command line; the command line wins; a bad value names its variable;
// the variables runners give jobs are not read.
func TestFlagsFromTheEnvironment(t *testing.T) {
	t.Setenv("JETCI_RUNNERS", "-1")
	if code, _, errOut := run("up", "--repo", "."); code != 1 || !strings.Contains(errOut, "--runners -1") {
		t.Errorf("JETCI_RUNNERS=-1: code %d, stderr %q; want the --runners error", code, errOut)
	}
	t.Setenv("JETCI_RUNNERS", "many")
	if code, _, errOut := run("up", "--repo", "."); code != 2 || !strings.Contains(errOut, "$JETCI_RUNNERS (for --runners)") {
		t.Errorf("JETCI_RUNNERS=many: code %d, stderr %q; want an error naming the variable", code, errOut)
	}
	// The command line wins over the environment.
	if code, _, errOut := run("up", "--repo", ".", "--runners", "-2"); code != 1 || !strings.Contains(errOut, "--runners -2") {
		t.Errorf("--runners -2 with JETCI_RUNNERS set: code %d, stderr %q", code, errOut)
	}
	t.Setenv("JETCI_RUNNERS", "")
	// A jetci command in a job must not take the job's repo and branch.
	t.Setenv("JETCI_REPO", "proj")
	t.Setenv("JETCI_BRANCH", "main")
	if code, _, errOut := run("trigger"); code != 1 || !strings.Contains(errOut, "--repo") {
		t.Errorf("trigger with the job variables JETCI_REPO, JETCI_BRANCH set: code %d, stderr %q; want --repo required", code, errOut)
	}
	// Sizes: the one parser, TiB included.
	var s sizeFlag
	if err := s.Set("2TiB"); err != nil || s != 2<<40 {
		t.Errorf("sizeFlag 2TiB: %d, %v", s, err)
	}
	if err := s.Set("2 parsecs"); err == nil {
		t.Errorf("sizeFlag took 2 parsecs")
	}
}
