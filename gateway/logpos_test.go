package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
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

// diskRecord is a record as the log folder holds it, read without the
// log's own reader: the line, its SHA-256 and the record.
type diskRecord struct {
	hash string
	rec  *logstore.Record
}

// onDisk reads every line of every segment file of the log in dir.
func onDisk(t *testing.T, dir string) map[uint64]diskRecord {
	t.Helper()
	out := map[uint64]diskRecord{}
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.SplitAfter(b, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			r, err := logstore.Decode(line)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			sum := sha256.Sum256(bytes.TrimSuffix(line, []byte("\n")))
			out[r.Seq] = diskRecord{hex.EncodeToString(sum[:]), r}
		}
	}
	return out
}

// positionOf verifies a handed-off message and reads the log position
// from its signed part.
func positionOf(t *testing.T, data []byte) (seq uint64, hash string, found bool) {
	t.Helper()
	res, err := signer.Verify(data, testpki.Roots())
	if err != nil {
		t.Fatalf("the message does not verify: %v", err)
	}
	seq, hash, found, err = pec.ReadLogPosition(res.Content)
	if err != nil {
		t.Fatal(err)
	}
	return seq, hash, found
}

// checkPosition: data, a signed receipt or notice, carries the position
// of a record of type typ and PEC identifier id that the log folder dir
// holds, with the hash the receipt says.
func checkPosition(t *testing.T, dir string, data []byte, typ logstore.Event, id string) *logstore.Record {
	t.Helper()
	seq, hash, found := positionOf(t, data)
	if !found {
		t.Fatalf("no %s in the signed part", pec.LogPositionField)
	}
	d, ok := onDisk(t, dir)[seq]
	switch {
	case !ok:
		t.Fatalf("the log has no record seq %d", seq)
	case d.hash != hash:
		t.Fatalf("record seq %d has hash %s, the message says %s", seq, d.hash, hash)
	case d.rec.Type != typ || d.rec.PECID != id:
		t.Fatalf("record seq %d is a %s of %s, want a %s of %s", seq, d.rec.Type, d.rec.PECID, typ, id)
	}
	return d.rec
}

// orderCheck watches the order of the acceptance: when the receipt is
// signed its accettazione record must be in the log folder, when it is
// spooled it must be signed with that record's position, and when the
// envelope is handed off the receipt must be in the spool.
type orderCheck struct {
	Signer
	ReceiptSpool
	delivery.Target
	dir string
	t   *testing.T

	mu       sync.Mutex
	problems []string
	puts     int
}

func (o *orderCheck) problem(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.problems = append(o.problems, s)
}

func (o *orderCheck) Sign(content []byte, at time.Time) ([]byte, error) {
	seq, hash, found, err := pec.ReadLogPosition(content)
	if err != nil {
		o.problem(err.Error())
	}
	if found {
		if d, ok := onDisk(o.t, o.dir)[seq]; !ok || d.hash != hash {
			o.problem("a message was signed with the position of a record the log does not hold yet")
		}
	}
	return o.Signer.Sign(content, at)
}

func (o *orderCheck) Put(e *delivery.SpoolEntry) error {
	o.mu.Lock()
	o.puts++
	o.mu.Unlock()
	if _, _, found := positionOf(o.t, e.Data); !found {
		o.problem("the receipt was spooled without its log position")
	}
	return o.ReceiptSpool.Put(e)
}

func (o *orderCheck) Deliver(ctx context.Context, m *delivery.Message) error {
	if bytes.Contains(m.Data, []byte("X-Trasporto: posta-certificata")) {
		o.mu.Lock()
		puts := o.puts
		o.mu.Unlock()
		if puts == 0 {
			o.problem("the envelope was handed off before the receipt was spooled")
		}
	}
	return o.Target.Deliver(ctx, m)
}

// TestReceiptCarriesItsRecordPosition: the acceptance receipt carries,
// inside its signed part, the seq and the hash of its accettazione
// record, as the log folder written by the real Log holds it; it was
// signed after that record was durable and spooled before the envelope
// went out; the envelope carries no position.
func TestReceiptCarriesItsRecordPosition(t *testing.T) {
	f := newFixture(t)
	oc := &orderCheck{Signer: f.a.Signer, ReceiptSpool: f.a.Receipts, Target: f.out, dir: f.dir, t: t}
	f.a.Signer, f.a.Receipts, f.a.Outbound = oc, oc, oc
	o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if len(oc.problems) > 0 {
		t.Fatal(strings.Join(oc.problems, "\n"))
	}
	if len(f.out.got) != 1 || len(f.box.got) != 1 {
		t.Fatalf("handed off %d envelopes and %d receipts", len(f.out.got), len(f.box.got))
	}
	rec := checkPosition(t, f.dir, f.box.got[0].Data, logstore.EventAccettazione, o.ID)
	if rec.State != logstore.TxWrittenAhead || rec.Generated == nil || !bytes.Contains(f.box.got[0].Data, []byte("Message-ID: <"+rec.Generated.Receipt+">")) {
		t.Errorf("the record names another receipt, or is not the write-ahead one: %+v", rec)
	}
	if _, _, found := positionOf(t, f.out.got[0].Data); found {
		t.Error("the envelope carries a log position")
	}
	// The records are what they were: busta-trasporto, accettazione,
	// handed-off, all of the transaction.
	var types []string
	for _, r := range f.records(t) {
		types = append(types, string(r.Type))
	}
	if strings.Join(types, ",") != "busta-trasporto,accettazione,handed-off" {
		t.Errorf("log records %v", types)
	}
}

// TestSpooledReceiptCarriesItsPosition: a receipt whose hand-off failed
// is kept in the spool signed, with its position, and is delivered late
// as it is: never signed again.
func TestSpooledReceiptCarriesItsPosition(t *testing.T) {
	f := newFixture(t)
	f.box.fail = errors.New("mailbox store down")
	if _, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com")); err == nil {
		t.Fatal("a receipt that was not delivered got 250")
	}
	id := f.records(t)[0].PECID
	e, err := f.a.Receipts.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	checkPosition(t, f.dir, e.Data, logstore.EventAccettazione, id)
	f.box.fail = nil
	if n, err := f.a.RedeliverReceipts(context.Background()); n != 1 || err != nil {
		t.Fatalf("RedeliverReceipts: %d %v", n, err)
	}
	if len(f.box.got) != 1 || !bytes.Equal(f.box.got[0].Data, e.Data) {
		t.Fatal("the receipt delivered late is not the spooled one")
	}
}

// TestNoticeCarriesItsRecordPosition: the non-acceptance notice carries
// the position of its non-accettazione record.
func TestNoticeCarriesItsRecordPosition(t *testing.T) {
	f := newFixture(t)
	oc := &orderCheck{Signer: f.a.Signer, dir: f.dir, t: t}
	f.a.Signer = oc
	o, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com", "spy@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if len(oc.problems) > 0 {
		t.Fatal(strings.Join(oc.problems, "\n"))
	}
	if o.Accepted || len(f.box.got) != 1 {
		t.Fatalf("outcome %+v, %d notices", o, len(f.box.got))
	}
	rec := checkPosition(t, f.dir, f.box.got[0].Data, logstore.EventNonAccettazione, o.ID)
	if rec.Generated == nil || rec.Generated.Notice != o.NoticeID || strings.Join(rec.Violations, ",") != "hidden-bcc" {
		t.Errorf("record %+v", rec)
	}
}

// positionRefusingSigner fails to sign what carries a log position: the
// receipt or the notice, signed after their record.
type positionRefusingSigner struct{ Signer }

func (s positionRefusingSigner) Sign(content []byte, at time.Time) ([]byte, error) {
	if _, _, found, _ := pec.ReadLogPosition(content); found {
		return nil, errors.New("HSM unavailable")
	}
	return s.Signer.Sign(content, at)
}

// TestSigningFailsAfterTheRecord: the records are written, the receipt
// or the notice cannot be signed: nothing is handed off, the client gets
// a temporary error, and the log says so.
func TestSigningFailsAfterTheRecord(t *testing.T) {
	t.Run("receipt", func(t *testing.T) {
		f := newFixture(t)
		f.a.Signer = positionRefusingSigner{f.a.Signer}
		_, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com"))
		if err == nil || !strings.Contains(err.Error(), "HSM unavailable") {
			t.Fatalf("err = %v", err)
		}
		if len(f.out.got)+len(f.box.got) != 0 {
			t.Error("handed off without a signed receipt in the spool")
		}
		recs := f.records(t)
		if len(recs) != 3 || recs[2].Type != logstore.EventAborted || recs[2].State != logstore.TxNotHandedOff || recs[2].Cause != logstore.CauseNotPrepared {
			t.Fatalf("log %+v", recs)
		}
		if _, err := f.a.Receipts.Get(recs[0].PECID); err == nil {
			t.Error("a receipt is left in the spool")
		}
	})
	t.Run("notice", func(t *testing.T) {
		f := newFixture(t)
		f.a.Signer = positionRefusingSigner{f.a.Signer}
		_, err := f.a.Process(context.Background(), submission(goodMessage, "anna@pec.altro.it", "luca@example.com", "spy@example.com"))
		if err == nil || !strings.Contains(err.Error(), "HSM unavailable") {
			t.Fatalf("err = %v", err)
		}
		if len(f.box.got) != 0 {
			t.Error("an unsigned notice was delivered")
		}
		recs := f.records(t)
		if len(recs) != 2 || recs[0].Type != logstore.EventNonAccettazione || recs[1].Type != logstore.EventAborted || !strings.Contains(recs[1].Detail, "not signed") {
			t.Fatalf("log %+v", recs)
		}
	})
}
