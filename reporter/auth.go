package reporter

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/jetci/jetci/events"
	"github.com/jetci/jetci/metrics"
)

// auth guards the actions. With no token every action is refused and the pages
// are read-only. API clients send "Authorization: Bearer <token>". A browser
// logs in once with the token and gets a session: a random id in an HttpOnly,
// SameSite=Strict cookie, kept (hashed) in the events.BucketSessions bucket
// with its expiry, so every reporter knows it and a logout (which deletes it)
// ends it everywhere. Its forms carry a CSRF field derived from the token and
// the session id. Wrong tokens (logins and bearer tokens) put their client
// into a growing backoff (limiter). All comparisons are constant-time.
type auth struct {
	token    string
	sessions jetstream.KeyValue // nil: no bucket (sessions then never validate)
	limit    *limiter
	metrics  *metrics.Metrics
	log      zerolog.Logger
}

const sessionCookie = "jetci_session"

// SessionTTL is how long a browser session lasts after its login.
const SessionTTL = 12 * time.Hour

func (a *auth) enabled() bool { return a.token != "" }

func (a *auth) derive(purpose string) string {
	m := hmac.New(sha256.New, []byte(a.token))
	m.Write([]byte("jetci " + purpose + " v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// csrf is the CSRF field of a session's forms.
func (a *auth) csrf(sid string) string { return a.derive("csrf " + sid) }

// equal compares two secrets in constant time. Both are hashed first, so the
// time does not depend on their lengths either (ConstantTimeCompare returns
// at once when the lengths differ).
func equal(x, y string) bool {
	hx, hy := sha256.Sum256([]byte(x)), sha256.Sum256([]byte(y))
	return subtle.ConstantTimeCompare(hx[:], hy[:]) == 1
}

// errThrottled refuses a client that is waiting out its backoff.
type errThrottled struct{ wait time.Duration }

func (e errThrottled) Error() string {
	return fmt.Sprintf("too many wrong tokens from this client: try again in %s", e.wait.Round(time.Second))
}

// checkToken checks a token a client presents, through the client's
// backoff: while it waits, not even the right token is looked at.
func (a *auth) checkToken(req *http.Request, tok, how string) (bool, error) {
	if !a.enabled() {
		return false, nil
	}
	client := clientOf(req)
	if wait := a.limit.wait(client); wait > 0 {
		a.metrics.AuthFailure("throttled")
		return false, errThrottled{wait}
	}
	if equal(tok, a.token) {
		a.limit.ok(client)
		return true, nil
	}
	a.metrics.AuthFailure("refused")
	fails, backoff, logNow, held := a.limit.fail(client)
	if logNow {
		a.log.Warn().Str("client", client).Str("via", how).Int("failures", fails).Int("not_logged", held).
			Dur("backoff", backoff).Msg("wrong admin token")
	}
	return false, nil
}

// bearer reports whether the request carries the token itself (and whether
// its client is throttled).
func (a *auth) bearer(req *http.Request) (bool, error) {
	h := req.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || !a.enabled() {
		return false, nil
	}
	return a.checkToken(req, strings.TrimSpace(tok), "bearer")
}

// isBearer is bearer without its error.
func (a *auth) isBearer(req *http.Request) bool { ok, _ := a.bearer(req); return ok }

// session is a browser session, as kept in the bucket.
type session struct {
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

func sessionKey(sid string) string {
	h := sha256.Sum256([]byte("jetci session " + sid))
	return hex.EncodeToString(h[:])
}

// session returns the id of the request's live session, or "".
func (a *auth) session(req *http.Request) string {
	if !a.enabled() || a.sessions == nil {
		return ""
	}
	c, err := req.Cookie(sessionCookie)
	if err != nil || !validSessionID(c.Value) {
		return ""
	}
	ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
	defer cancel()
	e, err := a.sessions.Get(ctx, sessionKey(c.Value))
	if err != nil {
		return ""
	}
	var s session
	if json.Unmarshal(e.Value(), &s) != nil || time.Now().After(s.Expires) {
		return ""
	}
	return c.Value
}

// validSessionID: 64 hex digits.
func validSessionID(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// form reports whether a form post may act: a live session and its CSRF
// field, or the bearer token; and, from a browser, an Origin (or Referer)
// of this site.
func (a *auth) form(req *http.Request) bool {
	if !sameOrigin(req) {
		return false
	}
	if a.isBearer(req) {
		return true
	}
	sid := a.session(req)
	return sid != "" && equal(req.PostFormValue("csrf"), a.csrf(sid))
}

// sameOrigin reports whether a post comes from this site: its Origin header,
// or without one its Referer, names the request's own host. A post with
// neither (not a browser: browsers send Origin on every POST) passes; the
// session cookie is SameSite=Strict and the CSRF field stays required.
func sameOrigin(req *http.Request) bool {
	src := req.Header.Get("Origin")
	if src == "" {
		src = req.Header.Get("Referer")
	}
	if src == "" {
		return true
	}
	u, err := url.Parse(src)
	if err != nil || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, req.Host)
}

// login checks the token and starts a session.
func (a *auth) login(w http.ResponseWriter, req *http.Request, token string) (bool, error) {
	ok, err := a.checkToken(req, token, "login")
	if !ok || err != nil {
		return false, err
	}
	if a.sessions == nil {
		return false, errors.New("no sessions bucket: run 'jetci setup' as the admin")
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	sid := hex.EncodeToString(b)
	now := time.Now().UTC()
	data, _ := json.Marshal(session{Created: now, Expires: now.Add(SessionTTL)})
	if _, err := a.sessions.Create(req.Context(), sessionKey(sid), data); err != nil {
		return false, fmt.Errorf("start a session: %w", err)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sid, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: req.TLS != nil, MaxAge: int(SessionTTL / time.Second)})
	return true, nil
}

// logout ends the request's session everywhere (it leaves the bucket).
func (a *auth) logout(w http.ResponseWriter, req *http.Request) {
	if c, err := req.Cookie(sessionCookie); err == nil && validSessionID(c.Value) && a.sessions != nil {
		if err := a.sessions.Purge(req.Context(), sessionKey(c.Value)); err != nil {
			a.log.Warn().Err(err).Msg("ending a session")
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

// clientOf names the client of a request for the backoff: its address
// (proxies' forwarded headers are not trusted: they are the client's to set).
func clientOf(req *http.Request) string {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		return req.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		// An IPv6 client has a /64 to itself: count the /64.
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return host
}

// limiter keeps, per client, its wrong tokens in a row and the backoff they
// earned: the first freeFails cost nothing, then each doubles the wait from
// baseBackoff up to maxBackoff. A right token clears it. At most maxClients
// are remembered (the oldest are forgotten first).
type limiter struct {
	mu      sync.Mutex
	clients map[string]*clientState
	now     func() time.Time
}

type clientState struct {
	fails  int
	until  time.Time // no token is looked at before
	last   time.Time // last failure
	logged time.Time // last log line
	held   int       // failures not logged since
}

const (
	freeFails   = 3
	baseBackoff = 500 * time.Millisecond
	maxBackoff  = 10 * time.Minute
	maxClients  = 10000
	logEvery    = time.Minute
	forgetAfter = time.Hour
)

func newLimiter() *limiter { return &limiter{clients: map[string]*clientState{}, now: time.Now} }

// wait returns how long the client must still wait.
func (l *limiter) wait(client string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.clients[client]; ok {
		if d := c.until.Sub(l.now()); d > 0 {
			return d
		}
	}
	return 0
}

func (l *limiter) ok(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.clients, client)
}

// fail counts a wrong token; logNow says whether to log it (the first of a
// client, then once a minute with held, the failures not logged since).
func (l *limiter) fail(client string) (fails int, backoff time.Duration, logNow bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	c, ok := l.clients[client]
	if !ok {
		if len(l.clients) >= maxClients {
			l.evict(now)
		}
		c = &clientState{}
		l.clients[client] = c
	}
	c.fails++
	c.last = now
	if c.fails > freeFails {
		backoff = baseBackoff << min(c.fails-freeFails-1, 20)
		backoff = min(backoff, maxBackoff)
		c.until = now.Add(backoff)
	}
	if now.Sub(c.logged) >= logEvery {
		logNow, held = true, c.held
		c.logged, c.held = now, 0
	} else {
		c.held++
	}
	return c.fails, backoff, logNow, held
}

// evict forgets clients idle for forgetAfter, then, if still full, those
// not in a backoff, then any.
func (l *limiter) evict(now time.Time) {
	for _, drop := range []func(*clientState) bool{
		func(c *clientState) bool { return now.Sub(c.last) > forgetAfter },
		func(c *clientState) bool { return !c.until.After(now) },
		func(*clientState) bool { return true },
	} {
		for k, c := range l.clients {
			if len(l.clients) < maxClients/2 {
				return
			}
			if drop(c) {
				delete(l.clients, k)
			}
		}
	}
}

// openSessions opens the sessions bucket.
func openSessions(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, events.BucketSessions)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (run 'jetci setup' as the admin)", events.BucketSessions, err)
	}
	return kv, nil
}
