package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
)

// adminTokenFlags registers --admin-token and --admin-token-file; the returned
// function reads the token, from the flag, the file, or $JETCI_ADMIN_TOKEN.
func adminTokenFlags(fs *flag.FlagSet) func() (string, error) {
	tok := fs.String("admin-token", "", "token that enables the web UI's and API's actions (trigger, re-check, cancel); also $JETCI_ADMIN_TOKEN. Without one, the UI is read-only")
	file := fs.String("admin-token-file", "", "file holding the admin token (keeps it out of the process list)")
	return func() (string, error) {
		t := *tok
		if *file != "" {
			if t != "" {
				return "", fmt.Errorf("give --admin-token or --admin-token-file, not both")
			}
			b, err := os.ReadFile(*file)
			if err != nil {
				return "", fmt.Errorf("--admin-token-file: %w", err)
			}
			t = strings.TrimSpace(string(b))
			if t == "" {
				return "", fmt.Errorf("--admin-token-file %s is empty", *file)
			}
		}
		if t == "" {
			t = os.Getenv("JETCI_ADMIN_TOKEN")
		}
		if t != "" && len(t) < 8 {
			return "", fmt.Errorf("the admin token is too short: use at least 8 characters (e.g. openssl rand -hex 16)")
		}
		return t, nil
	}
}

// retentionFlags registers --log-retention and --artifact-retention and
// applies them to a Setup.
func retentionFlags(fs *flag.FlagSet) func(events.Setup) (events.Setup, error) {
	logs := fs.Duration("log-retention", 0, "how long full job logs are kept (e.g. 720h; default 30 days, or what the bucket has)")
	arts := fs.Duration("artifact-retention", 0, "how long job artifacts are kept (e.g. 168h; default 30 days, or what the bucket has)")
	return func(s events.Setup) (events.Setup, error) {
		for name, d := range map[string]time.Duration{"--log-retention": *logs, "--artifact-retention": *arts} {
			if d < 0 || d > 0 && d < time.Minute {
				return s, fmt.Errorf("%s %s: want at least 1m", name, d)
			}
		}
		s.LogRetention, s.ArtifactRetention = *logs, *arts
		return s, nil
	}
}
