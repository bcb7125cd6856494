package dispatcher

import (
	"bytes"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file keeps a pipeline error's line number and quoted text true to the
// file as YAML reads it.

// maxQuote bounds the quoted line of an error, in bytes.
const maxQuote = 160

// splitLines splits a file where yaml.v3 counts a new line: CR LF, CR, LF, NEL,
// LS and PS. Node lines and the "line N" of syntax errors then index the slice.
func splitLines(data []byte) []string {
	var lines []string
	start := 0
	for i := 0; i < len(data); {
		n := 0
		switch {
		case data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n':
			n = 2
		case data[i] == '\r' || data[i] == '\n':
			n = 1
		case bytes.HasPrefix(data[i:], []byte("\u0085")), bytes.HasPrefix(data[i:], []byte("\u2028")),
			bytes.HasPrefix(data[i:], []byte("\u2029")):
			_, n = utf8.DecodeRune(data[i:])
		}
		if n == 0 {
			i++
			continue
		}
		lines = append(lines, string(data[start:i]))
		i += n
		start = i
	}
	return append(lines, string(data[start:]))
}

// quote makes a line safe to show on a terminal or a web page: invalid UTF-8
// and control characters (but tabs) become U+FFFD, and a long line is cut.
func quote(line string) string {
	line = strings.ToValidUTF8(line, "\uFFFD")
	line = strings.Map(func(r rune) rune {
		if r != '\t' && (unicode.IsControl(r) || r == '\u2028' || r == '\u2029') {
			return '\uFFFD'
		}
		return r
	}, line)
	if len(line) <= maxQuote {
		return line
	}
	cut := maxQuote
	for cut > 0 && !utf8.RuneStart(line[cut]) {
		cut--
	}
	return line[:cut] + " …"
}

var (
	yamlLineRE      = regexp.MustCompile(`\bline (\d+):`)
	unknownAnchorRE = regexp.MustCompile(`unknown anchor '([^']*)' referenced`)
)

// yaml.v3 reports the line of a parser error (as opposed to a scanner error)
// counting from 0, and leaves "line N" out of any error whose line it counts as
// 0. These are its parser errors.
var parserProblems = []string{
	"did not find expected ',' or ']'", "did not find expected ',' or '}'", "did not find expected '-' indicator",
	"did not find expected <document start>", "did not find expected <stream-start>", "did not find expected key",
	"did not find expected node content", "found duplicate %TAG directive", "found duplicate %YAML directive",
	"found incompatible YAML document", "found undefined tag handle",
}

// scannerProblems start yaml.v3's scanner errors, whose lines count from 1.
var scannerProblems = []string{
	"block sequence entries are not allowed", "could not find expected", "did not find URI escaped octet",
	"did not find expected '!'", "did not find expected alphabetic", "did not find expected comment",
	"did not find expected digit", "did not find expected hexdecimal", "did not find expected tag URI",
	"did not find expected version", "did not find expected whitespace", "did not find the expected '>'",
	"exceeded max depth", "found a tab character", "found an incorrect", "found an indentation indicator",
	"found character that cannot start", "found extremely long", "found invalid Unicode", "found unexpected",
	"found unknown", "mapping keys are not allowed", "mapping values are not allowed",
}

func hasPrefix(msg string, prefixes []string) bool {
	return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(msg, p) })
}

// syntaxError turns a yaml.v3 error into a PipelineError on the line yaml.v3
// means: its "line N" is taken as it is for scanner errors, plus one for
// parser errors, and looked for in the file when the message has none.
func (p *parser) syntaxError(data []byte, err error) *PipelineError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line, found := 0, false
	if m := yamlLineRE.FindStringSubmatchIndex(msg); m != nil {
		line, _ = strconv.Atoi(msg[m[2]:m[3]])
		msg = strings.TrimLeft(msg[:m[0]]+msg[m[1]:], ": ")
		found = true
	}
	switch {
	case hasPrefix(msg, parserProblems):
		line++
	case hasPrefix(msg, scannerProblems):
		if !found {
			line = 1
		}
		if strings.HasPrefix(msg, "found a tab character") {
			// The line is where the scalar before the tab began; point at the tab.
			line = p.tabAfter(line)
		}
	case !found:
		line = p.locate(data, msg)
	}
	if line < 0 {
		line = 0
	}
	return p.errAt(line, "invalid YAML: %s", msg)
}

// tabAfter returns the first line from line on whose indentation has a tab, or line.
func (p *parser) tabAfter(line int) int {
	for i := max(line, 1); i <= len(p.lines); i++ {
		l := p.lines[i-1]
		if strings.ContainsRune(l[:len(l)-len(strings.TrimLeft(l, " \t"))], '\t') {
			return i
		}
	}
	return line
}

// locate finds the line of a syntax error whose message has none, or 0.
func (p *parser) locate(data []byte, msg string) int {
	switch {
	case strings.Contains(msg, "UTF-8"):
		return lineOf(data, func(r rune, size int) bool { return r == utf8.RuneError && size == 1 })
	case strings.Contains(msg, "control characters"):
		return lineOf(data, func(r rune, _ int) bool { return !yamlPrintable(r) })
	}
	if m := unknownAnchorRE.FindStringSubmatch(msg); m != nil {
		for i, l := range p.lines {
			if strings.Contains(l, "*"+m[1]) {
				return i + 1
			}
		}
	}
	return 0
}

// lineOf returns the line of the first rune bad reports, or 0.
func lineOf(data []byte, bad func(r rune, size int) bool) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if bad(r, n) {
			return len(splitLines(data[:i]))
		}
		i += n
	}
	return 0
}

// yamlPrintable mirrors yaml.v3's test for characters a stream may hold.
func yamlPrintable(r rune) bool {
	switch {
	case r == 0x9 || r == 0xA || r == 0xD || r == 0x85:
		return true
	case r >= 0x20 && r <= 0x7E:
		return true
	case r >= 0xA0 && r <= 0xD7FF:
		return true
	case r >= 0xE000 && r <= 0xFFFD:
		return true
	}
	return r >= 0x10000 && r <= 0x10FFFF
}
