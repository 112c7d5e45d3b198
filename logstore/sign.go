package logstore

import (
	"encoding/base64"
	"time"

	"github.com/pecgw/pecgw/pec"
)

// Nothing unsigned at rest (docs/logformat.md, "Checkpoints"): the chain
// alone protects a record only against someone without the time to
// recompute the hashes after it; a signed checkpoint protects it against
// anyone without the provider's key (RFC 6109 §2.3: the log is kept
// unmodified). So the writer signs the head of every batch it has made
// durable, in the background, and writes the checkpoint as the first
// record of the next write, or alone when no record comes. Signatures do
// not wait for each other's batches: while one is made (RSA-2048: about
// 1.5 ms of CPU) the writer goes on, and the checkpoint then certifies a
// record a few lines above it; the next one covers those lines. Two
// signatures start at least CheckpointInterval apart, which bounds the
// CPU spent on them under load.

// sigResult is the outcome of a background checkpoint signature.
type sigResult struct {
	gen  uint64 // l.gen when it started
	upto uint64
	head string
	at   time.Time
	text string
	der  []byte
	err  error
}

// signed reports whether records of type e carry a signature of the
// chain head (Head, Upto, Signed, Sig).
func (e Event) signed() bool {
	switch e {
	case EventCheckpoint, EventSeal, EventPurge:
		return true
	}
	return false
}

// uncovered is the number of records after the last head a signature
// certifies, the signed record itself not counted.
func (l *Log) uncovered() uint64 {
	if l.signedSeq == 0 {
		return l.seq
	}
	return l.seq - l.signedUpto - 1
}

// tailUnsigned reports whether the log does not end with a signed record
// that certifies the record just before it: some records are protected
// by the chain only.
func (l *Log) tailUnsigned() bool {
	return l.seq > 0 && !(l.signedSeq == l.seq && l.signedUpto == l.seq-1)
}

// scheduleSign starts the signature of the durable head when the tail is
// unsigned and none is in flight, at least CheckpointInterval after the
// last one started (at once when CheckpointEvery records wait), or arms
// spacing for when it may.
func (l *Log) scheduleSign(spacing *time.Timer) {
	if l.signing || l.readyCk != nil || l.broken != nil || !l.tailUnsigned() || len(l.buf) > 0 {
		return
	}
	wait := l.o.CheckpointInterval - time.Since(l.lastSign)
	if l.signFailing {
		wait = max(wait, time.Second-time.Since(l.lastSign)) // an HSM down: retry every second, do not spin
	} else if l.uncovered() >= uint64(l.o.CheckpointEvery) {
		wait = 0
	}
	if wait > 0 {
		spacing.Reset(wait)
		return
	}
	l.signing, l.lastSign = true, time.Now()
	upto, head, gen := l.seq, l.head, l.gen
	at := pec.At(l.o.Now()).Time()
	text := CheckpointText(EventCheckpoint, upto, head, at)
	go func() {
		der, err := l.o.Signer.SignDetached([]byte(text), at)
		l.sigDone <- sigResult{gen: gen, upto: upto, head: head, at: at, text: text, der: der, err: err}
	}()
}

// takeSignature turns a finished signature into the checkpoint of the
// next write, unless a seal, a purge or a heal came in between (they
// certify a later head) or it failed (tried again later).
func (l *Log) takeSignature(res sigResult) {
	l.signing = false
	if res.err != nil {
		if !l.signFailing {
			l.warn("log: checkpoint of seq %d not written: signing failed: %v (retried; records stay protected by the chain only until it works)", res.upto, res.err)
		}
		l.signFailing = true
		return
	}
	if l.signFailing {
		l.warn("log: checkpoint signing works again (seq %d)", res.upto)
		l.signFailing = false
	}
	if res.gen != l.gen || res.upto <= l.signedUpto || l.broken != nil {
		return
	}
	l.readyCk = &Record{Type: EventCheckpoint, Time: res.at.Format(time.RFC3339), Provider: l.o.Provider,
		Head: res.head, Upto: res.upto, Signed: res.text, Sig: base64.StdEncoding.EncodeToString(res.der),
		Detail: l.startNote}
}

// addCheckpoint appends a checkpoint signed in the background: it
// certifies a record of the active segment at or before the head (a
// checkpoint may go beyond MaxSegmentSize, like a seal).
func (l *Log) addCheckpoint(ck *Record) error {
	ck.Seq, ck.Prev, ck.V = l.seq+1, l.head, FormatVersion
	if err := l.addSignedLine(ck); err != nil {
		return err
	}
	l.startNote = ""
	return nil
}

// finish is the writer's last act at Close: the signature in flight is
// awaited, and a log whose tail is still unsigned gets a checkpoint made
// here, so that a log stopped cleanly ends signed; then the witnesses
// are brought up to date.
func (l *Log) finish() {
	if l.signing {
		l.takeSignature(<-l.sigDone)
	}
	if l.broken == nil && (l.readyCk != nil || l.tailUnsigned()) {
		if ck := l.readyCk; ck != nil {
			l.readyCk = nil
			if err := l.addCheckpoint(ck); err != nil {
				l.breakLog(err)
			}
		}
		if l.broken == nil && l.tailUnsigned() && l.f != nil {
			tmpl := &Record{Detail: l.startNote}
			if _, err := l.addSigned(EventCheckpoint, l.o.Now(), tmpl); err != nil {
				l.breakLog(err)
			}
		}
		if l.broken == nil {
			if err := l.flush(); err != nil {
				l.breakLog(err)
			}
		}
	}
	l.witness.flush()
}
