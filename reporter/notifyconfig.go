package reporter

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/url"
	"os"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/jetci/jetci/forge"
)

// NotifyConfig says who hears about broken and fixed branches, and how.
type NotifyConfig struct {
	// PublicURL is the reporter's address as people reach it, for links in
	// mails and webhooks (e.g. https://ci.example.com).
	PublicURL string          `yaml:"public_url"`
	Mail      MailConfig      `yaml:"mail"`
	Webhooks  []WebhookConfig `yaml:"webhooks"`
	// Forges are the repos whose commits get statuses on their forge
	// (GitHub, Gitea/Forgejo, GitLab), and whose pull requests are tested.
	Forges []forge.Repo `yaml:"forges"`
}

// MailConfig is the SMTP server and the extra recipients.
type MailConfig struct {
	SMTP         string `yaml:"smtp"` // host:port; empty: no mail
	TLS          string `yaml:"tls"`  // starttls, tls (implicit) or none; default by port: 465 tls, else starttls
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	CAFile       string `yaml:"ca_file"` // extra CA for the server's certificate
	From         string `yaml:"from"`
	// Recipients are extra people (managers) told of every failure and fix
	// of a repo, or of the branches matching a pattern.
	Recipients []RecipientRule `yaml:"recipients"`
	// Results is what a commit's author is mailed: "transitions" (the
	// default: failed, fixed, still failing) or "all" (every final result,
	// passing too).
	Results string `yaml:"results"`
	// Managers is what the Recipients are mailed: "transitions" (the
	// default: a branch's first failure and its fix) or "all-failures"
	// (every failure mail, still failing ones too).
	Managers string `yaml:"managers"`
}

// Mail settings' values.
const (
	MailTransitions = "transitions"
	MailAll         = "all"
	MailAllFailures = "all-failures"
)

// RecipientRule adds recipients for one repo (or "*") and, optionally, the
// branches matching a path.Match pattern such as release/*.
type RecipientRule struct {
	Repo   string   `yaml:"repo"`
	Branch string   `yaml:"branch"`
	To     []string `yaml:"to"`
}

// WebhookConfig is one URL told of finished jobs.
type WebhookConfig struct {
	URL        string `yaml:"url"`
	Secret     string `yaml:"secret"`
	SecretFile string `yaml:"secret_file"`
	// Events is "finished" (every finished job, the default) or
	// "transitions" (only failed, fixed and still-failing).
	Events string `yaml:"events"`
}

// LoadNotifyConfig reads a YAML notification config file.
func LoadNotifyConfig(file string) (NotifyConfig, error) {
	var c NotifyConfig
	b, err := os.ReadFile(file)
	if err != nil {
		return c, err
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

// Resolve reads the secret files and fills defaults; Validate is called too.
func (c *NotifyConfig) Resolve() error {
	m := &c.Mail
	if m.PasswordFile != "" {
		if m.Password != "" {
			return errors.New("mail: give password or password_file, not both")
		}
		b, err := os.ReadFile(m.PasswordFile)
		if err != nil {
			return fmt.Errorf("mail password_file: %w", err)
		}
		m.Password, m.PasswordFile = strings.TrimRight(string(b), "\r\n"), ""
	}
	if m.Results == "" {
		m.Results = MailTransitions
	}
	if m.Managers == "" {
		m.Managers = MailTransitions
	}
	if m.TLS == "" && m.SMTP != "" {
		m.TLS = "starttls"
		if _, port, _ := net.SplitHostPort(m.SMTP); port == "465" {
			m.TLS = "tls"
		}
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if w.SecretFile != "" {
			if w.Secret != "" {
				return fmt.Errorf("webhook %s: give secret or secret_file, not both", w.URL)
			}
			b, err := os.ReadFile(w.SecretFile)
			if err != nil {
				return fmt.Errorf("webhook %s secret_file: %w", w.URL, err)
			}
			w.Secret, w.SecretFile = strings.TrimRight(string(b), "\r\n"), ""
		}
		if w.Events == "" {
			w.Events = "finished"
		}
	}
	for i := range c.Forges {
		if err := c.Forges[i].Resolve(); err != nil {
			return err
		}
	}
	return c.Validate()
}

// Validate reports a bad field.
func (c NotifyConfig) Validate() error {
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("public_url %q: want http(s)://host[:port][/path]", c.PublicURL)
		}
	}
	m := c.Mail
	if m.SMTP != "" {
		if _, _, err := net.SplitHostPort(m.SMTP); err != nil {
			return fmt.Errorf("mail smtp %q: want host:port", m.SMTP)
		}
		switch m.TLS {
		case "starttls", "tls", "none":
		default:
			return fmt.Errorf("mail tls %q: want starttls, tls or none", m.TLS)
		}
		if m.From == "" {
			return errors.New("mail: from is required with smtp (e.g. jetci <ci@example.com>)")
		}
		if _, err := mail.ParseAddress(m.From); err != nil {
			return fmt.Errorf("mail from %q: %w", m.From, err)
		}
		if m.Username != "" && m.Password == "" {
			return errors.New("mail: username without a password (password, password_file or $JETCI_SMTP_PASSWORD)")
		}
	}
	if m.Results != "" && m.Results != MailTransitions && m.Results != MailAll {
		return fmt.Errorf("mail results %q: want transitions or all", m.Results)
	}
	if m.Managers != "" && m.Managers != MailTransitions && m.Managers != MailAllFailures {
		return fmt.Errorf("mail managers %q: want transitions or all-failures", m.Managers)
	}
	for _, r := range m.Recipients {
		if r.Repo == "" {
			return errors.New(`mail recipients: each rule needs a repo ("*" for all)`)
		}
		if _, err := path.Match(r.Branch, ""); err != nil {
			return fmt.Errorf("mail recipients: branch pattern %q: %w", r.Branch, err)
		}
		for _, to := range r.To {
			if _, err := mail.ParseAddress(to); err != nil {
				return fmt.Errorf("mail recipients of %s: %q: %w", r.Repo, to, err)
			}
		}
	}
	for _, w := range c.Webhooks {
		u, err := url.Parse(w.URL)
		if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("webhook url %q: want http(s)://…", w.URL)
		}
		if w.Secret == "" {
			return fmt.Errorf("webhook %s: a secret is required (secret or secret_file): receivers check the signature", w.URL)
		}
		if w.Events != "finished" && w.Events != "transitions" {
			return fmt.Errorf("webhook %s: events %q: want finished or transitions", w.URL, w.Events)
		}
	}
	seen := map[string]bool{}
	for _, f := range c.Forges {
		if err := f.Validate(); err != nil {
			return err
		}
		if seen[f.Repo] {
			return fmt.Errorf("forge of %s: given twice", f.Repo)
		}
		seen[f.Repo] = true
	}
	return nil
}

// Enabled reports whether anything is to be sent.
func (c NotifyConfig) Enabled() bool {
	return c.Mail.SMTP != "" || len(c.Webhooks) > 0 || len(c.Forges) > 0
}

// extra returns the extra recipients of a repo and branch.
func (m MailConfig) extra(repo, branch string) []string {
	var out []string
	for _, r := range m.Recipients {
		if r.Repo != "*" && r.Repo != repo {
			continue
		}
		if r.Branch != "" {
			if ok, _ := path.Match(r.Branch, branch); !ok {
				continue
			}
		}
		out = append(out, r.To...)
	}
	return out
}

// ParseRecipientFlag parses --mail-to REPO[:BRANCH_PATTERN]=a@x,b@y.
func ParseRecipientFlag(s string) (RecipientRule, error) {
	lhs, rhs, ok := strings.Cut(s, "=")
	if !ok || lhs == "" || rhs == "" {
		return RecipientRule{}, fmt.Errorf("--mail-to %q: want REPO[:BRANCH_PATTERN]=addr[,addr…]", s)
	}
	r := RecipientRule{Repo: lhs}
	if repo, branch, ok := strings.Cut(lhs, ":"); ok {
		r.Repo, r.Branch = repo, branch
	}
	for _, a := range strings.Split(rhs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			r.To = append(r.To, a)
		}
	}
	if r.Repo == "" || len(r.To) == 0 {
		return RecipientRule{}, fmt.Errorf("--mail-to %q: want REPO[:BRANCH_PATTERN]=addr[,addr…] with a repo and an address", s)
	}
	return r, nil
}
