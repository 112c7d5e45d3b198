package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/internal/testpki"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// recordingTarget keeps what it is handed; fail makes it refuse.
type recordingTarget struct {
	mu   sync.Mutex
	got  []*delivery.Message
	fail error
}

func (r *recordingTarget) Deliver(_ context.Context, m *delivery.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.got = append(r.got, m)
	return nil
}

type fixture struct {
	a        *Acceptor
	log      *logstore.Log
	dir      string
	out, box *recordingTarget
}

var fixedNow = time.Date(2026, 11, 23, 9, 30, 0, 0, time.UTC)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	s := testpki.Signer(t, "p256")
	l, err := logstore.Open(logstore.Options{Dir: dir, Signer: s, Provider: testpki.ProviderName, Now: func() time.Time { return fixedNow }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	sp, err := delivery.OpenSpool(filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{log: l, dir: dir, out: &recordingTarget{}, box: &recordingTarget{}}
	f.a = &Acceptor{
		Receipts:     sp,
		Transactions: NewTransactions(),
		Provider:     pec.Provider{Name: testpki.ProviderName, Domain: testpki.Domain},
		Directory:    pec.NewDomainDirectory([]string{testpki.Domain}, []string{"pec.altro.it"}),
		Signer:       s,
		Log:          l,
		Outbound:     f.out,
		Mailboxes:    f.box,
		Now:          func() time.Time { return fixedNow },
		Rand:         rand.Reader,
	}
	return f
}

func (f *fixture) records(t *testing.T) []*logstore.Record {
	t.Helper()
	var out []*logstore.Record
	err := logstore.Query(f.dir, logstore.Filter{From: fixedNow.Add(-time.Hour), To: fixedNow.Add(time.Hour)}, func(h logstore.Hit) error {
		if h.Record.Type != logstore.EventCheckpoint && h.Record.Type != logstore.EventSeal {
			out = append(out, h.Record)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const goodMessage = "Date: Mon, 23 Nov 2026 10:29:00 +0100\r\nFrom: Mario <mario@pec.example.it>\r\n" +
	"To: anna@pec.altro.it\r\nCc: luca@example.com\r\nSubject: prova\r\nMessage-ID: <c1@mua>\r\n\r\nciao\r\n"

func submission(raw string, rcpt ...string) *Submission {
	return &Submission{
		Raw:      []byte(raw),
		Envelope: pec.SMTPEnvelope{From: "mario@pec.example.it", To: rcpt},
		User:     "mario@pec.example.it", ClientIP: "192.0.2.7", TLS: "TLS1.3",
	}
}

func TestAcceptHandsOffAndLogs(t *testing.T) {
	f := newFixture(t)
	o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if !o.Accepted || !strings.HasSuffix(o.ID, "@"+testpki.Domain) {
		t.Fatalf("outcome %+v", o)
	}
	if len(f.out.got) != 1 || len(f.box.got) != 1 {
		t.Fatalf("handed off %d envelopes and %d receipts", len(f.out.got), len(f.box.got))
	}
	env, rcpt := f.out.got[0], f.box.got[0]
	if env.ReversePath != "mario@pec.example.it" || strings.Join(env.ForwardPaths, ",") != "anna@pec.altro.it,luca@example.com" {
		t.Errorf("envelope SMTP paths %q %q", env.ReversePath, env.ForwardPaths)
	}
	if rcpt.ReversePath != "posta-certificata@"+testpki.Domain || strings.Join(rcpt.ForwardPaths, ",") != "mario@pec.example.it" {
		t.Errorf("receipt SMTP paths %q %q", rcpt.ReversePath, rcpt.ForwardPaths)
	}
	for _, m := range []*delivery.Message{env, rcpt} {
		res, err := signer.Verify(m.Data, testpki.Roots())
		if err != nil || !res.SigningTime.Equal(fixedNow) {
			t.Fatalf("handed-off message does not verify at the transaction's instant: %v %+v", err, res)
		}
	}
	if !bytes.Contains(env.Data, []byte("Message-ID: <"+o.ID+">")) || !bytes.Contains(rcpt.Data, []byte("X-Ricevuta: accettazione")) {
		t.Error("the envelope or the receipt is not what was built")
	}
	recs := f.records(t)
	var types []string
	for _, r := range recs {
		types = append(types, string(r.Type))
		if r.PECID != o.ID || r.Time != "2026-11-23T10:30:00+01:00" || r.MsgID != "<c1@mua>" || r.User != "mario@pec.example.it" {
			t.Errorf("record %+v", r)
		}
	}
	if strings.Join(types, ",") != "busta-trasporto,accettazione,handed-off" {
		t.Errorf("log records %v", types)
	}
	if recs[0].SHA256 != sum(env.Data) || recs[0].Generated.Envelope != o.ID || recs[0].Generated.Receipt == "" {
		t.Errorf("envelope record %+v", recs[0])
	}
	if len(recs[0].Recipients) != 2 || recs[0].Recipients[0].Tipo != "certificato" || recs[0].Recipients[1].Tipo != "esterno" {
		t.Errorf("recipients %+v", recs[0].Recipients)
	}
	if r := AcceptedReply("", o); r.Code != 250 || !strings.HasPrefix(r.Message, o.ID+" Messaggio accettato come posta certificata / Accepted as certified mail") {
		t.Errorf("reply %+v", r)
	}
}

func TestRefuseSendsOneNotice(t *testing.T) {
	f := newFixture(t)
	// A forward-path not in To/Cc: a hidden Bcc (RFC 6109 §3.1.1).
	o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com", "spy@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Accepted || len(o.Violations) != 1 || o.Violations[0].Code != pec.CodeHiddenBcc {
		t.Fatalf("outcome %+v", o)
	}
	if len(f.out.got) != 0 || len(f.box.got) != 1 {
		t.Fatalf("handed off %d envelopes and %d notices", len(f.out.got), len(f.box.got))
	}
	notice := f.box.got[0]
	if !bytes.Contains(notice.Data, []byte("X-Ricevuta: non-accettazione")) || notice.ForwardPaths[0] != "mario@pec.example.it" {
		t.Errorf("notice %q to %q", notice.Data[:200], notice.ForwardPaths)
	}
	recs := f.records(t)
	if len(recs) != 1 || recs[0].Type != logstore.EventNonAccettazione || strings.Join(recs[0].Violations, ",") != "hidden-bcc" || recs[0].Generated.Notice != o.NoticeID {
		t.Fatalf("log %+v", recs)
	}
	r := RefusedReply("", o)
	want := o.ID + " Messaggio non accettato: destinatario nascosto (Ccn/Bcc) non ammesso nella PEC / Not accepted: hidden Bcc recipients are not allowed in PEC"
	if r.Code != 550 || r.EnhancedCode != [3]int{5, 7, 1} || r.Message != want {
		t.Errorf("reply %d %v %q, want 550 5.7.1 %q", r.Code, r.EnhancedCode, r.Message, want)
	}
	// The notice names the refused recipient, in its text and in
	// daticert <errore-esteso> (RFC 6109 §4.4: <destinatari> is To ∪ Cc).
	res, err := signer.Verify(notice.Data, testpki.Roots())
	if err != nil {
		t.Fatal(err)
	}
	x, err := pec.FindDatiCert(res.Content)
	if err != nil {
		t.Fatal(err)
	}
	d, err := pec.ParseDatiCert(x)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d.ErroreEsteso, "spy@example.com") {
		t.Errorf("errore-esteso %q does not name the hidden recipient", d.ErroreEsteso)
	}
	for _, r := range d.Destinatari {
		if r.Address == "spy@example.com" {
			t.Errorf("the hidden recipient is among the daticert destinatari %+v", d.Destinatari)
		}
	}
}

func TestHandOffFailuresAreLoggedAndTemporary(t *testing.T) {
	boom := errors.New("next hop down")
	t.Run("envelope", func(t *testing.T) {
		f := newFixture(t)
		f.out.fail = boom
		if _, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); !errors.Is(err, boom) {
			t.Fatalf("err = %v", err)
		}
		if len(f.box.got) != 0 {
			t.Error("a receipt was delivered for an envelope that was not sent")
		}
		recs := f.records(t)
		if len(recs) != 3 || recs[2].Type != logstore.EventAborted || !strings.Contains(recs[2].Detail, "next hop down") {
			t.Fatalf("log %+v", recs)
		}
		if r := InternalReply("", boom); r.Code != 451 || strings.Contains(r.Message, "next hop") || r.Message != "errore temporaneo, riprovare piu' tardi / temporary failure, please retry later" {
			t.Errorf("reply %+v leaks or is not temporary", r)
		}
	})
	t.Run("receipt", func(t *testing.T) {
		f := newFixture(t)
		f.box.fail = boom
		if _, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); !errors.Is(err, boom) {
			t.Fatalf("err = %v", err)
		}
		recs := f.records(t)
		if len(recs) != 3 || recs[2].Type != logstore.EventAborted || !strings.Contains(recs[2].Detail, "receipt not delivered") {
			t.Fatalf("log %+v", recs)
		}
	})
	t.Run("log", func(t *testing.T) {
		f := newFixture(t)
		f.log.Close()
		if _, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); err == nil {
			t.Fatal("accepted without a log")
		}
		if len(f.out.got)+len(f.box.got) != 0 {
			t.Error("handed off without a durable log record (invariant 2)")
		}
	})
}

func TestRefusedReplyIsBounded(t *testing.T) {
	id := "20261202172700.duyt634h7c2suq3mtwvzth3wai@" + strings.Repeat("pec.", 40) + "example.it"
	o := &Outcome{ID: id, NoticeID: "n@pec.example.it"}
	for i := range 50 {
		o.Violations = append(o.Violations, pec.Violation{Code: pec.CodeDuplicateField,
			Args: map[string]string{"field": strings.Repeat("è", 60), "count": strconv.Itoa(i)}})
	}
	for _, l := range []Language{Italian, English, ItalianAndEnglish} {
		r := RefusedReply(l, o)
		// "550 5.6.0 " + text + CRLF within RFC 5321 §4.5.3.1.5's 512.
		if len("550 5.6.0 ")+len(r.Message)+2 > 512 || !strings.HasPrefix(r.Message, id+" ") || r.EnhancedCode != [3]int{5, 6, 0} {
			t.Errorf("%s: reply %d %q", l, len(r.Message), r.Message)
		}
		for _, c := range r.Message {
			if c >= 0x80 || c < 0x20 {
				t.Fatalf("%s: non-ASCII or control character in reply %q", l, r.Message)
			}
		}
	}
	// Fifty causes: those that fit, and the others counted.
	o.ID = "20261202172700.duyt634h7c2suq3mtwvzth3wai@pec.example.it"
	if r := RefusedReply("", o); !strings.Contains(r.Message, "motivi nell'avviso di non accettazione") || !strings.Contains(r.Message, "more in the non-acceptance notice") {
		t.Errorf("reply %q does not count the causes left out", r.Message)
	}
}

// TestIsASCII: the eight-at-a-time scan says what an octet-by-octet one
// says, wherever the first octet above 0x7F is.
func TestIsASCII(t *testing.T) {
	slow := func(b []byte) bool {
		for _, c := range b {
			if c >= 0x80 {
				return false
			}
		}
		return true
	}
	for n := range 40 {
		b := bytes.Repeat([]byte{'a'}, n)
		if !isASCII(b) || !isASCII(string(b)) {
			t.Errorf("%d ASCII octets: not ASCII", n)
		}
		for i := range n {
			for _, c := range []byte{0x80, 0xC3, 0xFF} {
				b := bytes.Repeat([]byte{'a'}, n)
				b[i] = c
				if isASCII(b) != slow(b) || isASCII(string(b)) != slow(b) {
					t.Errorf("%d octets, %#x at %d: %v", n, c, i, isASCII(b))
				}
			}
		}
	}
}
