package reporter

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// auth guards the actions. With no token every action is refused and the pages
// are read-only. API clients send "Authorization: Bearer <token>". A browser
// logs in once with the token and gets a session cookie (HttpOnly,
// SameSite=Strict) derived from it; its forms carry a CSRF field derived from
// the token too, so another site can neither read nor forge them. Changing the
// token ends every session. All comparisons are constant-time.
type auth struct {
	token string
}

const sessionCookie = "jetci_session"

func (a auth) enabled() bool { return a.token != "" }

func (a auth) derive(purpose string) string {
	m := hmac.New(sha256.New, []byte(a.token))
	m.Write([]byte("jetci " + purpose + " v1"))
	return hex.EncodeToString(m.Sum(nil))
}

func (a auth) csrf() string { return a.derive("csrf") }

// equal compares two secrets in constant time. Both are hashed first, so the
// time does not depend on their lengths either (ConstantTimeCompare returns
// at once when the lengths differ).
func equal(x, y string) bool {
	hx, hy := sha256.Sum256([]byte(x)), sha256.Sum256([]byte(y))
	return subtle.ConstantTimeCompare(hx[:], hy[:]) == 1
}

// bearer reports whether the request carries the token itself.
func (a auth) bearer(req *http.Request) bool {
	if !a.enabled() {
		return false
	}
	h := req.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	return ok && equal(strings.TrimSpace(tok), a.token)
}

// session reports whether the request comes from a logged-in browser.
func (a auth) session(req *http.Request) bool {
	if !a.enabled() {
		return false
	}
	c, err := req.Cookie(sessionCookie)
	return err == nil && equal(c.Value, a.derive("session"))
}

// form reports whether a form post may act: a session and the CSRF field, or
// the bearer token.
func (a auth) form(req *http.Request) bool {
	return a.bearer(req) || a.session(req) && equal(req.PostFormValue("csrf"), a.csrf())
}

func (a auth) login(w http.ResponseWriter, req *http.Request, token string) bool {
	if !a.enabled() || !equal(token, a.token) {
		return false
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: a.derive("session"), Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: req.TLS != nil, MaxAge: 30 * 24 * 3600})
	return true
}

func (a auth) logout(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}
