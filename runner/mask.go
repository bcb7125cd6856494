package runner

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"sort"
	"strings"
)

// maskText replaces a secret's value in job output.
const maskText = "***"

// masker replaces secret values in a stream of output with ***. A value split
// across two writes is still caught: the tail of a write that could be the
// start of a value is held back until the next write (or the flush) says
// whether it is one. Only a tail that matches a value's beginning is held, so
// ordinary output is not delayed.
type masker struct {
	values [][]byte  // longest first, so the longest match wins
	first  [256]bool // the first bytes of the values
	held   []byte
}

// newMasker masks each non-empty value; a multi-line value is also masked
// line by line, as tools often print one line of it.
func newMasker(values []string) *masker {
	seen := map[string]bool{}
	var vals []string
	add := func(v string) {
		if v != "" && !seen[v] {
			seen[v] = true
			vals = append(vals, v)
		}
	}
	for _, v := range values {
		add(v)
		if strings.ContainsAny(v, "\r\n") {
			for _, line := range strings.FieldsFunc(v, func(r rune) bool { return r == '\n' || r == '\r' }) {
				add(strings.TrimSpace(line))
			}
		}
		for _, e := range encodings(v) {
			add(e)
		}
	}
	if len(vals) == 0 {
		return nil
	}
	sort.Slice(vals, func(i, j int) bool { return len(vals[i]) > len(vals[j]) })
	m := &masker{}
	for _, v := range vals {
		m.values = append(m.values, []byte(v))
		m.first[v[0]] = true
	}
	return m
}

// write masks p and returns what may be passed on now.
func (m *masker) write(p []byte) []byte {
	if m == nil {
		return p
	}
	buf := append(m.held, p...)
	out, rest := m.scan(buf, false)
	m.held = append([]byte(nil), rest...)
	return out
}

// flush returns what is held back, masked: the stream ends (or a note of
// jetci's own comes next), so a value can no longer continue.
func (m *masker) flush() []byte {
	if m == nil || len(m.held) == 0 {
		return nil
	}
	out, _ := m.scan(m.held, true)
	m.held = nil
	return out
}

// String masks a whole string (an error message).
func (m *masker) String(s string) string {
	if m == nil {
		return s
	}
	out, _ := m.scan([]byte(s), true)
	return string(out)
}

// scan masks buf: at each place the longest value that starts there is
// replaced. Unless final, it stops where the rest of buf is a proper prefix of
// a value and returns that rest to hold back.
func (m *masker) scan(buf []byte, final bool) (out, rest []byte) {
	out = make([]byte, 0, len(buf))
	next := make([]int, len(m.values)) // where each value next occurs, from pos; -1: nowhere
	for k, v := range m.values {
		next[k] = bytes.Index(buf, v)
	}
	tail := len(buf) - len(m.values[0]) + 1 // only from here can the rest be a value's beginning
	for pos := 0; ; {
		at, n := len(buf), 0 // the next match and its length
		for k, v := range m.values {
			if next[k] >= 0 && next[k] < pos {
				if next[k] = bytes.Index(buf[pos:], v); next[k] >= 0 {
					next[k] += pos
				}
			}
			if next[k] >= 0 && (next[k] < at || next[k] == at && len(v) > n) {
				at, n = next[k], len(v)
			}
		}
		if !final {
			for i := max(pos, tail); i <= at && i < len(buf); i++ {
				if m.couldStart(buf[i:]) {
					return append(out, buf[pos:i]...), buf[i:]
				}
			}
		}
		out = append(out, buf[pos:at]...)
		if n == 0 {
			return out, nil
		}
		out = append(out, maskText...)
		pos = at + n
	}
}

// couldStart reports whether b is a proper prefix of a value: the next write
// could complete it.
func (m *masker) couldStart(b []byte) bool {
	if !m.first[b[0]] {
		return false
	}
	for _, v := range m.values {
		if len(b) < len(v) && bytes.HasPrefix(v, b) {
			return true
		}
	}
	return false
}

// minEncoded is the shortest secret whose encodings are masked too, and the
// shortest encoded form masked: shorter ones would mask ordinary output.
const minEncoded = 6

// encodings returns the common encodings of a secret value that a job might
// print: hex (lower and upper case), URL escaping (query and path), and
// base64 (standard and URL alphabets, padded or not) — for base64 also the
// part that stays the same wherever the value sits inside a longer encoded
// text (its three alignments). docs/security.md ("Jobs and inputs from outside") says
// what this cannot catch.
func encodings(v string) []string {
	if len(v) < minEncoded {
		return nil
	}
	out := []string{hex.EncodeToString([]byte(v)), strings.ToUpper(hex.EncodeToString([]byte(v))),
		url.QueryEscape(v), url.PathEscape(v)}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		out = append(out, enc.EncodeToString([]byte(v)), enc.WithPadding(base64.NoPadding).EncodeToString([]byte(v)))
		raw := enc.WithPadding(base64.NoPadding)
		for k := 0; k < 3; k++ {
			b := append(make([]byte, k), v...)
			e := raw.EncodeToString(b)
			skip := (k*8 + 5) / 6 // characters that hold bits of the k bytes before
			end := len(e)
			if len(b)%3 != 0 {
				end-- // the last character holds bits of what follows
			}
			if end-skip >= minEncoded {
				out = append(out, e[skip:end])
			}
		}
	}
	var keep []string
	for _, e := range out {
		if e != v && len(e) >= minEncoded {
			keep = append(keep, e)
		}
	}
	return keep
}
