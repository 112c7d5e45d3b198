package gateway

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/pec"
)

// docRow is the row of docs/replies.md for r.
func docRow(r replyText) string {
	return fmt.Sprintf("| `%s` | %d %d.%d.%d | %s | %s |", r.key, r.code, r.enh[0], r.enh[1], r.enh[2], r.it, r.en)
}

// TestRepliesDocumented: docs/replies.md has a row for every reply of
// the table, exactly as the code has it, and no row the code lacks.
func TestRepliesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/replies.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(doc), "\n")
	keys := map[string]bool{}
	for _, r := range replyTable() {
		keys[r.key] = true
		if !slices.Contains(lines, docRow(r)) {
			t.Errorf("docs/replies.md lacks the row\n%s", docRow(r))
		}
	}
	row := regexp.MustCompile("^\\| `([a-z0-9-]+)` \\| ")
	for _, l := range lines {
		if m := row.FindStringSubmatch(l); m != nil && !keys[m[1]] {
			t.Errorf("docs/replies.md has a row for %q, which the code does not have:\n%s", m[1], l)
		}
	}
	for _, s := range []string{refusedIt, refusedEn, "; altri 2 motivi nell'avviso di non accettazione", "; 2 more in the non-acceptance notice"} {
		if !strings.Contains(string(doc), strings.TrimSpace(s)) {
			t.Errorf("docs/replies.md does not show %q", s)
		}
	}
}

// TestReplyTable: every code of the formal checks has its refusal, every
// key the code uses is in the table, the texts are ASCII, and a reply
// with its placeholders filled at their longest fits in a line.
func TestReplyTable(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range replyTable() {
		if seen[r.key] {
			t.Errorf("key %q twice", r.key)
		}
		seen[r.key] = true
		for _, s := range []string{r.it, r.en} {
			if s == "" || asciiLine(s) != s {
				t.Errorf("%s: text %q is empty or not printable ASCII", r.key, s)
			}
		}
		if r.code/100 != r.enh[0] {
			t.Errorf("%s: code %d with enhanced code %v", r.key, r.code, r.enh)
		}
	}
	for _, c := range pec.Codes() {
		if r, ok := replyByKey[c]; !ok || !r.refusal || r.lead != "id" || r.code/100 != 5 {
			t.Errorf("formal check %q has no refusal in the table (%+v)", c, r)
		}
	}
	// Keys used in the package's code: reply("key" and lookupReply("key".
	files, _ := filepath.Glob("*.go")
	use := regexp.MustCompile(`(?:reply|lookupReply)\("([a-z0-9-]+)"`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range use.FindAllStringSubmatch(string(src), -1) {
			if !seen[m[1]] {
				t.Errorf("%s uses reply %q, which is not in the table", f, m[1])
			}
		}
	}
	for _, k := range []string{"too-big", "no-storage", "busy-memory", "data-stalled", "line-too-long-smtp", "connections-address"} {
		if !seen[k] {
			t.Errorf("no %q", k)
		}
	}
	// Placeholders at their longest: every value maxArg octets.
	long := strings.Repeat("x", 300)
	id := "20261202172700.duyt634h7c2suq3mtwvzth3wai@" + strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + ".example.it"
	for _, r := range replyTable() {
		var args []string
		for _, m := range regexp.MustCompile(`\{([a-z]+)\}`).FindAllStringSubmatch(r.it+r.en, -1) {
			args = append(args, m[1], long)
		}
		for _, l := range []Language{Italian, English, ItalianAndEnglish} {
			var got string
			if r.refusal {
				v := pec.Violation{Code: r.key, Args: map[string]string{}}
				for i := 0; i < len(args); i += 2 {
					v.Args[args[i]] = args[i+1]
				}
				got = RefusedReply(l, &Outcome{ID: id, Violations: []pec.Violation{v, v, v}}).Message
			} else {
				got = l.reply(r.key, id, args...).Message
			}
			checkReplyLine(t, r.key+"/"+string(l), r.code, got)
			if r.lead != "" && !strings.HasPrefix(got, id+" ") {
				t.Errorf("%s/%s: %q does not start with the whole lead", r.key, l, got)
			}
		}
	}
}

// checkReplyLine: a reply's line is ASCII and at most 512 octets with its
// code and CRLF (RFC 5321 §4.5.3.1.5).
func checkReplyLine(t *testing.T, what string, code int, text string) {
	t.Helper()
	line := fmt.Sprintf("%d 5.7.11 %s\r\n", code, text)
	if len(line) > 512 {
		t.Errorf("%s: line of %d octets: %q", what, len(line), line)
	}
	for _, c := range []byte(text) {
		if c < 0x20 || c >= 0x7f {
			t.Errorf("%s: octet %#x in %q", what, c, text)
			break
		}
	}
}

// TestReplyLanguages: the three forms of submission.reply_language.
func TestReplyLanguages(t *testing.T) {
	o := &Outcome{ID: "20261123103000.abc@pec.example.it", Violations: []pec.Violation{{Code: pec.CodeHiddenBcc}}}
	for l, want := range map[Language]string{
		"":                "20261123103000.abc@pec.example.it Messaggio non accettato: destinatario nascosto (Ccn/Bcc) non ammesso nella PEC / Not accepted: hidden Bcc recipients are not allowed in PEC",
		ItalianAndEnglish: "20261123103000.abc@pec.example.it Messaggio non accettato: destinatario nascosto (Ccn/Bcc) non ammesso nella PEC / Not accepted: hidden Bcc recipients are not allowed in PEC",
		Italian:           "20261123103000.abc@pec.example.it Messaggio non accettato: destinatario nascosto (Ccn/Bcc) non ammesso nella PEC",
		English:           "20261123103000.abc@pec.example.it Not accepted: hidden Bcc recipients are not allowed in PEC",
	} {
		if got := RefusedReply(l, o).Message; got != want {
			t.Errorf("%q: %q, want %q", l, got, want)
		}
	}
	if got := English.reply("auth-required", "").Message; got != "authentication required" {
		t.Errorf("English auth-required: %q", got)
	}
	if _, err := ParseLanguage("fr"); err == nil {
		t.Error("ParseLanguage(fr) accepted")
	}
	// What a reply quotes is made ASCII: accents as Italian servers
	// write them, the rest "?".
	if got := asciiLine("città è però §4 ×\u00a0\t€"); got != "citta' e' pero' section 4 x? ?" {
		t.Errorf("asciiLine: %q", got)
	}
	// Two causes, and their details.
	o.Violations = []pec.Violation{
		{Code: pec.CodeBareLF, Args: map[string]string{"line": "3"}},
		{Code: pec.CodeSizeLimit, Args: map[string]string{"size": "43047925", "n": "3", "max": "100000000"}},
	}
	want := "20261123103000.abc@pec.example.it Messaggio non accettato: la riga 3 termina con LF senza CR: il programma che invia deve terminare ogni riga con CRLF (RFC 5321 sez. 2.3.8); " +
		"dimensione 43047925 byte x 3 destinatari oltre il limite di 100000000 byte / Not accepted: line 3 ends in a bare LF: the sending program must end every line with CRLF (RFC 5321 section 2.3.8); " +
		"size 43047925 octets x 3 recipients exceeds the limit of 100000000"
	if got := RefusedReply("", o); got.Message != want || got.Code != 550 || got.EnhancedCode != [3]int{5, 6, 0} {
		t.Errorf("two causes: %d %v %q\nwant %q", got.Code, got.EnhancedCode, got.Message, want)
	}
}

func TestReplyPECID(t *testing.T) {
	for text, want := range map[string]string{
		"2.0.0 20261123.x@pec.example.it Messaggio accettato": "20261123.x@pec.example.it",
		"20261123.x@pec.example.it Not accepted: …":           "20261123.x@pec.example.it",
		"authentication required":                             "",
		"":                                                    "",
	} {
		if got := ReplyPECID(text); got != want {
			t.Errorf("ReplyPECID(%q) = %q, want %q", text, got, want)
		}
	}
}

func TestReplyPattern(t *testing.T) {
	o := &Outcome{ID: "20261123103000.zqkjmofwmhieigdsouxh7bbq4y@pec.example.it", Violations: []pec.Violation{{Code: pec.CodeBareLF, Args: map[string]string{"line": "3"}}}}
	for _, l := range []Language{Italian, English, ItalianAndEnglish} {
		_, _, re, ok := ReplyPattern(pec.CodeBareLF, l)
		if got := RefusedReply(l, o).Message; !ok || !re.MatchString(got) {
			t.Errorf("%s: %q does not match %v", l, got, re)
		}
		_, _, re, _ = ReplyPattern("connections-address", l)
		if got := l.reply("connections-address", "pec.example.it", "ip", "192.0.2.7").Message; !re.MatchString(got) {
			t.Errorf("%s: %q does not match %v", l, got, re)
		}
	}
	if _, _, re, _ := ReplyPattern(pec.CodeBareLF, ""); re.MatchString(RefusedReply("", &Outcome{ID: o.ID, Violations: []pec.Violation{{Code: pec.CodeBareCR}}}).Message) {
		t.Error("the bare-lf pattern matches a bare-cr reply")
	}
}

// TestTemporaryReplies: the 4xx that need a transaction held inside the
// daemon, over a real session (cmd/pecgw's TestTemporaryRepliesOverTheBinary
// has those that can be brought about from outside): a twin in flight,
// the transaction's deadline, the message memory taken.
func TestTemporaryReplies(t *testing.T) {
	both := []string{"anna@pec.altro.it", "luca@example.com"}
	check := func(t *testing.T, key string, r rawReply) {
		t.Helper()
		code, enh, re, _ := ReplyPattern(key, ItalianAndEnglish)
		if r.err != nil || r.code != code || r.enh != enh || !re.MatchString(r.text) {
			t.Errorf("%s: %v %v, want %d %v matching %v", key, r, r.enh, code, enh, re)
		}
		checkReplyLine(t, key, r.code, r.text)
	}
	t.Run("in-flight", func(t *testing.T) {
		ts := newTestServer(t)
		st := withDedup(t, ts.fixture)
		k := dedup.Key{Sender: mario, MessageID: "<c1@mua>", Recipients: both, BodyHash: sha256.Sum256([]byte(goodMessage))}
		if c, err := st.Claim(context.Background(), k, time.Minute); err != nil || c.State != dedup.New {
			t.Fatalf("claim %+v %v", c, err)
		}
		check(t, "in-flight", newRawAuthed(t, ts, true).transaction(t, mario, both, goodMessage))
		assertNothing(t, ts.fixture)
	})
	t.Run("timeout", func(t *testing.T) {
		ts := newTestServerWith(t, func(b *Backend) { b.TransactionTimeout = time.Nanosecond })
		check(t, "timeout", newRawAuthed(t, ts, true).transaction(t, mario, both, goodMessage))
	})
	t.Run("busy-memory", func(t *testing.T) {
		m, err := NewMessageMemory(16<<20, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		release, err := m.reserve(context.Background(), 16<<20) // every octet of it, elsewhere
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		ts := newTestServerWith(t, func(b *Backend) { b.Memory, b.TransactionTimeout = m, 300*time.Millisecond })
		check(t, "busy-memory", newRawAuthed(t, ts, true).transaction(t, mario, both, goodMessage))
		assertNothing(t, ts.fixture)
	})
}
