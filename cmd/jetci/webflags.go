package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/reporter"
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
	var liveLogs sizeFlag
	fs.Var(&liveLogs, "live-logs-max", "space reserved for live job output, JETCI_LOGS (e.g. 64MiB; default 1GiB, or an eighth of the store's free space when the server runs here and that is less) when the stream is created; given, it is applied to an existing stream too")
	return func(s events.Setup) (events.Setup, error) {
		if liveLogs < 0 || liveLogs > 0 && liveLogs < 1<<20 {
			return s, fmt.Errorf("--live-logs-max %d: want at least 1MiB", int64(liveLogs))
		}
		s.LiveLogBytes = int64(liveLogs)
		for name, d := range map[string]time.Duration{"--log-retention": *logs, "--artifact-retention": *arts} {
			if d < 0 || d > 0 && d < time.Minute {
				return s, fmt.Errorf("%s %s: want at least 1m", name, d)
			}
		}
		s.LogRetention, s.ArtifactRetention = *logs, *arts
		return s, nil
	}
}

// notifyFlags registers the notification flags; the returned function builds
// the resolved config: the --notify-config file first, flags over it.
func notifyFlags(fs *flag.FlagSet) func() (reporter.NotifyConfig, error) {
	file := fs.String("notify-config", "", "YAML file with mail and webhook settings (see docs/notifications.md)")
	public := fs.String("public-url", "", "the web UI's address as people reach it, for links in mails and webhooks (default: http://<--http>)")
	smtpAddr := fs.String("smtp", "", "SMTP server host:port; mail is off without it")
	smtpTLS := fs.String("smtp-tls", "", "starttls, tls (implicit, port 465) or none (default: tls on port 465, else starttls)")
	smtpUser := fs.String("smtp-user", "", "SMTP username (PLAIN auth; the password from --smtp-password-file or $JETCI_SMTP_PASSWORD)")
	smtpPass := fs.String("smtp-password-file", "", "file holding the SMTP password")
	from := fs.String("mail-from", "", `sender address, e.g. "jetci <ci@example.com>"`)
	var to, hooks listFlag
	fs.Var(&to, "mail-to", "extra recipients of failures and fixes: REPO[:BRANCH_PATTERN]=addr[,addr…] (repeat; REPO * for all)")
	fs.Var(&hooks, "webhook", "URL to POST finished jobs to, signed with --webhook-secret-file (repeat)")
	hookSecret := fs.String("webhook-secret-file", "", "file holding the webhooks' HMAC secret (or $JETCI_WEBHOOK_SECRET)")
	results := fs.String("mail-results", "", "what authors are mailed: transitions (failed, fixed, still failing; the default) or all (every result, passing too)")
	managers := fs.String("mail-managers", "", "what --mail-to recipients are mailed: transitions (a branch's failure and fix; the default) or all-failures (every failure mail, still failing too)")
	hookEvents := fs.String("webhook-events", "finished", "finished (every finished job) or transitions (failed, fixed, still-failing)")
	return func() (reporter.NotifyConfig, error) {
		var c reporter.NotifyConfig
		if *file != "" {
			var err error
			if c, err = reporter.LoadNotifyConfig(*file); err != nil {
				return c, fmt.Errorf("--notify-config: %w", err)
			}
		}
		if *public != "" {
			c.PublicURL = *public
		}
		m := &c.Mail
		for flagValue, field := range map[string]*string{*smtpAddr: &m.SMTP, *smtpTLS: &m.TLS, *smtpUser: &m.Username, *smtpPass: &m.PasswordFile, *from: &m.From} {
			if flagValue != "" {
				*field = flagValue
			}
		}
		if *results != "" {
			m.Results = *results
		}
		if *managers != "" {
			m.Managers = *managers
		}
		if m.Username != "" && m.Password == "" && m.PasswordFile == "" {
			m.Password = os.Getenv("JETCI_SMTP_PASSWORD")
		}
		for _, s := range to {
			r, err := reporter.ParseRecipientFlag(s)
			if err != nil {
				return c, err
			}
			m.Recipients = append(m.Recipients, r)
		}
		if len(hooks) > 0 {
			secret := os.Getenv("JETCI_WEBHOOK_SECRET")
			if *hookSecret != "" {
				b, err := os.ReadFile(*hookSecret)
				if err != nil {
					return c, fmt.Errorf("--webhook-secret-file: %w", err)
				}
				secret = strings.TrimRight(string(b), "\r\n")
			}
			for _, u := range hooks {
				c.Webhooks = append(c.Webhooks, reporter.WebhookConfig{URL: u, Secret: secret, Events: *hookEvents})
			}
		}
		if err := c.Resolve(); err != nil {
			return c, fmt.Errorf("notifications: %w", err)
		}
		return c, nil
	}
}

// sizeFlag is a byte count with an optional unit: 512, 64KiB, 100MiB, 1GiB,
// 2TiB (KB, MB, GB, TB are powers of 1000), read by events.ParseSize, the
// one size parser (pipeline limits use it too).
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeFlag) Set(v string) error {
	n, err := events.ParseSize(v)
	if err != nil {
		return fmt.Errorf("want a size like 512, 64KiB, 100MiB, 1GiB or 2TiB")
	}
	*s = sizeFlag(n)
	return nil
}

// hookSecretFlag registers --hook-secret-file; the returned function reads the
// secret, from the file or $JETCI_HOOK_SECRET ("" : push hooks off).
func hookSecretFlag(fs *flag.FlagSet) func() (string, error) {
	file := fs.String("hook-secret-file", "", "file holding the secret of push hooks (POST /hooks/git from GitHub, Gitea or GitLab); also $JETCI_HOOK_SECRET. Without one, hooks are off")
	return func() (string, error) {
		s := os.Getenv("JETCI_HOOK_SECRET")
		if *file != "" {
			b, err := os.ReadFile(*file)
			if err != nil {
				return "", fmt.Errorf("--hook-secret-file: %w", err)
			}
			s = strings.TrimRight(string(b), "\r\n")
			if s == "" {
				return "", fmt.Errorf("--hook-secret-file %s is empty", *file)
			}
		}
		return s, nil
	}
}
