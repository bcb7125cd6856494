package events

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// kvKeyRE is the key syntax nats.go enforces for KV keys.
var kvKeyRE = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`)

func checkToken(t *testing.T, name string) {
	t.Helper()
	tok := Token(name)
	if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, ". \t\r\n*>$") {
		t.Fatalf("Token(%q) = %q: not one safe subject token", name, tok)
	}
	if !kvKeyRE.MatchString(tok) {
		t.Fatalf("Token(%q) = %q: not a valid KV key", name, tok)
	}
	if len(tok) > MaxTokenLen+1 {
		t.Fatalf("Token(%q) has %d bytes, want <= %d", name, len(tok), MaxTokenLen+1)
	}
	if strings.HasPrefix(tok, "=") {
		return
	}
	got, err := ParseToken(tok)
	if err != nil || got != name {
		t.Fatalf("ParseToken(Token(%q)) = %q, %v", name, got, err)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	names := []string{
		"main", "feature/x.y", "a>b", ">", "*", "fix/ünïcode", "$sys", "v2.0.0-rc.1",
		"release-1.2", "a..b", "with space", "tab\there", "日本語/ブランチ", "-", "_", "=",
		"a.b.c.d.e", "refs/heads/x", strings.Repeat("x", 119), "emoji/🚀", "\x00nul",
	}
	for _, n := range names {
		t.Run(n, func(t *testing.T) { checkToken(t, n) })
	}
}

func TestTokenLongNamesAreHashed(t *testing.T) {
	long := strings.Repeat("very-long-branch/", 30)
	tok := Token(long)
	if !strings.HasPrefix(tok, "=") || len(tok) != 41 {
		t.Fatalf("Token(long) = %q, want = and 40 hex digits", tok)
	}
	if Token(long+"x") == tok {
		t.Fatal("two long names share a token")
	}
	if _, err := ParseToken(tok); err == nil {
		t.Fatal("ParseToken of a hashed token: want an error")
	}
	checkToken(t, long)
}

func FuzzToken(f *testing.F) {
	for _, s := range []string{"main", "a>b", "fix/ünï", "*", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if name == "" || !utf8.ValidString(name) {
			return
		}
		checkToken(t, name)
	})
}

func TestSubjectsAreWellFormed(t *testing.T) {
	for _, s := range []string{
		CommitSubject("repo.git", "a>b"),
		JobSubject("default", "amd64", ClassFirst, "r", "feature/x.y"),
		ResultSubject("r", "*", KindFinished),
		TriggerSubject("my.repo"),
	} {
		for _, tok := range strings.Split(s, ".") {
			if tok == "" || tok == "*" || tok == ">" {
				t.Errorf("subject %q has a bad token %q", s, tok)
			}
		}
	}
	if got, want := len(strings.Split(JobSubject("p", "a", ClassUser, "r", "x.y"), ".")), 7; got != want {
		t.Errorf("job subject has %d tokens, want %d", got, want)
	}
	if !strings.HasPrefix(JobSubject("p", "a", ClassUser, "r", "b"), strings.TrimSuffix(JobFilter("p", "a", ClassUser), ">")) {
		t.Error("a job subject does not match its consumer's filter")
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"amd64", "arm64", "default", "big-box", "x_1"} {
		if err := ValidName("arch", ok); err != nil {
			t.Errorf("ValidName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "AMD64", "a.b", "a b", "*", ">", "-x", strings.Repeat("a", 41)} {
		if err := ValidName("arch", bad); err == nil {
			t.Errorf("ValidName(%q) = nil, want an error", bad)
		}
	}
}

func TestJobIDIsStableAndDistinct(t *testing.T) {
	a := JobID("r", "main", "abc", "test", "amd64")
	if a != JobID("r", "main", "abc", "test", "amd64") {
		t.Fatal("JobID not stable")
	}
	if len(a) != 20 {
		t.Fatalf("JobID length %d, want 20", len(a))
	}
	// Field boundaries matter: "ab"+"c" must differ from "a"+"bc".
	if JobID("r", "ab", "c", "t", "x") == JobID("r", "a", "bc", "t", "x") {
		t.Fatal("JobID ignores field boundaries")
	}
}

// FuzzParseToken decodes arbitrary subject tokens (a subject comes from the
// bus): no panic, and a token that decodes is the one Token makes for its
// name, so two tokens never stand for one name.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{Token("main"), Token("fix/ünï"), "=abc", "", "AB", "AC", "a.b", "bWFpbg", "bWFpbh", "!!"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		name, err := ParseToken(tok)
		if err != nil {
			return
		}
		if back := Token(name); back != tok {
			t.Fatalf("ParseToken(%q) = %q, whose token is %q", tok, name, back)
		}
	})
}
