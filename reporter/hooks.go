package reporter

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/forge"
)

// maxHookBody bounds a push hook's body.
const maxHookBody = 5 << 20

// hookSender is who sent a push hook, known from its headers.
type hookSender struct {
	name  string // github, gitea, gitlab
	event string
}

// verifyHook checks a hook's signature (GitHub: X-Hub-Signature-256,
// Gitea: X-Gitea-Signature, both HMAC-SHA256 of the body) or token (GitLab:
// X-Gitlab-Token) in constant time, before anything parses the body.
func verifyHook(secret string, h http.Header, body []byte) (hookSender, error) {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	want := mac.Sum(nil)
	sigOK := func(hexSig string) bool {
		got, err := hex.DecodeString(hexSig)
		return err == nil && hmac.Equal(got, want)
	}
	switch {
	case h.Get("X-Gitlab-Event") != "":
		if !equal(h.Get("X-Gitlab-Token"), secret) {
			return hookSender{}, errors.New("bad or missing X-Gitlab-Token")
		}
		return hookSender{"gitlab", h.Get("X-Gitlab-Event")}, nil
	case h.Get("X-Gitea-Event") != "" || h.Get("X-Gogs-Event") != "":
		sig := h.Get("X-Gitea-Signature")
		if sig == "" {
			sig = h.Get("X-Gogs-Signature")
		}
		if !sigOK(sig) {
			return hookSender{}, errors.New("bad or missing X-Gitea-Signature")
		}
		ev := h.Get("X-Gitea-Event")
		if ev == "" {
			ev = h.Get("X-Gogs-Event")
		}
		return hookSender{"gitea", ev}, nil
	case h.Get("X-GitHub-Event") != "":
		sig, ok := strings.CutPrefix(h.Get("X-Hub-Signature-256"), "sha256=")
		if !ok || !sigOK(sig) {
			return hookSender{}, errors.New("bad or missing X-Hub-Signature-256")
		}
		return hookSender{"github", h.Get("X-GitHub-Event")}, nil
	}
	return hookSender{}, errors.New("not a GitHub, Gitea or GitLab hook (no X-GitHub-Event, X-Gitea-Event or X-Gitlab-Event header)")
}

// hookRepoNames returns the names a push payload gives its repository, most
// specific first: jetci names a repo after its path's base name unless told
// otherwise, so the base names are tried.
func hookRepoNames(body []byte) ([]string, error) {
	var p struct {
		Repository struct {
			Name     string `json:"name"`
			FullName string `json:"full_name"`
		} `json:"repository"`
		Project struct {
			Name              string `json:"name"`
			PathWithNamespace string `json:"path_with_namespace"`
		} `json:"project"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("bad JSON: %w", err)
	}
	var out []string
	for _, n := range []string{p.Repository.Name, path.Base(p.Repository.FullName), path.Base(p.Project.PathWithNamespace), p.Project.Name} {
		if hookRepoName(n) && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the payload names no repository")
	}
	return out, nil
}

// hookRepoName reports whether a name from a payload can name a repo: not
// empty, no path (/, . or ..), printable UTF-8, and of a sane length.
func hookRepoName(n string) bool {
	return n != "" && n != "." && n != ".." && len(n) <= 255 && !strings.Contains(n, "/") && utf8.ValidString(n) &&
		!strings.ContainsFunc(n, unicode.IsControl)
}

// apiHook takes push hooks from GitHub, Gitea and GitLab and has the
// repository's observers poll it at once. Polling stays the safety net.
func (r *Reporter) apiHook(w http.ResponseWriter, req *http.Request) {
	if r.cfg.HookSecret == "" {
		writeError(w, http.StatusNotFound, "push hooks are off: start the reporter with --hook-secret-file")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxHookBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxHookBody))
		return
	}
	sender, err := verifyHook(r.cfg.HookSecret, req.Header, body)
	if err != nil {
		r.log.Warn().Str("remote", req.RemoteAddr).Err(err).Msg("push hook refused")
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	if err := r.rememberDelivery(req.Context(), sender, req.Header, body); err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, errReplayedHook) {
			code = http.StatusConflict
			r.log.Warn().Str("remote", req.RemoteAddr).Str("from", sender.name).Msg("push hook replay refused")
		}
		writeError(w, code, err.Error())
		return
	}
	if forge.IsPullEvent(sender.name, sender.event) {
		r.pullHook(w, req, sender, body)
		return
	}
	switch strings.ToLower(sender.event) {
	case "ping":
		writeJSON(w, http.StatusOK, map[string]string{"ok": "pong"})
		return
	case "push", "push hook", "tag push hook", "create":
	default:
		writeJSON(w, http.StatusAccepted, map[string]string{"ignored": "event " + sender.event})
		return
	}
	names, err := hookRepoNames(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	for _, name := range names {
		err := events.Poke(req.Context(), r.js.Conn(), name)
		ok := !errors.Is(err, events.ErrNoObserver)
		if err != nil && ok {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		if ok {
			r.log.Debug().Str("repo", name).Str("from", sender.name).Msg("push hook: repo polled now")
			writeJSON(w, http.StatusAccepted, map[string]string{"repo": name, "from": sender.name})
			return
		}
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no observer watches a repo named %s", strings.Join(names, " or ")))
}

var errReplayedHook = errors.New("this hook delivery was received before (same delivery id or same body): refused as a replay")

// deliveryID is the id the forge gives a hook delivery ("" if none).
func deliveryID(h http.Header) string {
	for _, k := range []string{"X-GitHub-Delivery", "X-Gitea-Delivery", "X-Gogs-Delivery", "X-Gitlab-Event-UUID"} {
		if v := h.Get(k); v != "" {
			return v
		}
	}
	return ""
}

// rememberDelivery refuses a signed hook seen before, by its delivery id or
// by its body (the delivery id is not signed, so a replay may change it), for
// the lifetime of the deliveries bucket; every reporter shares it.
func (r *Reporter) rememberDelivery(ctx context.Context, sender hookSender, h http.Header, body []byte) error {
	if r.deliveries == nil {
		return nil
	}
	keys := []string{"b." + hashKey(sender.name+"\x00"+string(body))}
	if id := deliveryID(h); id != "" {
		keys = append(keys, "d."+hashKey(sender.name+"\x00"+id))
	}
	for _, k := range keys {
		if _, err := r.deliveries.Create(ctx, k, []byte(time.Now().UTC().Format(time.RFC3339))); errors.Is(err, jetstream.ErrKeyExists) {
			return errReplayedHook
		} else if err != nil {
			return fmt.Errorf("remember the hook delivery: %w", err)
		}
	}
	return nil
}

func hashKey(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:16])
}
