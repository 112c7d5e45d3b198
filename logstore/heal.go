package logstore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A log that heals. After a failed write or fsync (a full disk, an I/O
// error) the writer takes no more records: the file may hold octets that
// are not on disk, and a second fsync may "succeed" over lost pages (the
// PostgreSQL fsync-gate). Instead it heals, the way a start recovers:
// what was written after the last successful fsync is cut (those records
// were never acknowledged), a torn-tail record says what was cut, and
// the files are read again as Open reads them. It tries with a back-off
// (heal delays) until that succeeds; meanwhile Append fails at once, so
// the gateway answers 451 and the client retries. Options.Broken and
// Options.Healed are told once each per failure: healed means a write of
// callers' records succeeded again, not only the torn-tail record.

// Heal delays: the first try, and the most between two.
const (
	healFirst = 100 * time.Millisecond
	healMax   = 30 * time.Second
)

// startHealing is called when the log broke. Broken is told at the
// start of an episode only: a log that healed and broke again before it
// wrote a record of a caller (the room a cut freed was only enough for
// its own torn-tail record) is still the same failure.
func (l *Log) startHealing(t *time.Timer) {
	if !l.failing {
		l.failing = true
		l.failedAt = time.Now()
		l.healDelay = healFirst
		l.notes = nil
		if l.o.Broken != nil {
			l.mu.Lock()
			err := l.broken
			l.mu.Unlock()
			l.o.Broken(err)
		}
	}
	t.Reset(l.healDelay)
}

// tryHeal tries once, and arms t for the next try if it failed.
func (l *Log) tryHeal(t *time.Timer) {
	if l.broken == nil {
		return
	}
	note, err := l.heal()
	if err != nil {
		l.breakLog(err)
		l.healDelay = min(2*l.healDelay, healMax)
		t.Reset(l.healDelay)
		return
	}
	if note != "" {
		l.notes = append(l.notes, note)
	}
	l.healDelay = min(2*l.healDelay, healMax) // should it break again at once
}

// healed is called after a write of callers' records succeeded: the end
// of a failure episode, told once (Options.Healed).
func (l *Log) healed() {
	if !l.failing {
		return
	}
	l.failing = false
	detail := fmt.Sprintf("the log takes records again after %s, at seq %d", time.Since(l.failedAt).Round(time.Millisecond), l.seq)
	if len(l.notes) > 0 {
		detail += "; " + strings.Join(l.notes, "; ")
	}
	if l.o.Healed != nil {
		l.o.Healed(detail)
	}
}

// heal cuts the octets written after the last successful fsync, reads
// the log again as Open does, and notes the cut in a torn-tail record.
// On success the log takes records again.
func (l *Log) heal() (note string, err error) {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	l.buf = l.buf[:0]
	l.readyCk = nil
	l.gen++ // a signature in flight certifies a head that may be cut
	if l.durSeg != "" {
		if note, err = l.cutUndurable(); err != nil {
			return "", err
		}
	}
	l.mu.Lock()
	cause := l.broken
	l.broken = nil
	l.mu.Unlock()
	l.seq, l.head, l.segName, l.segDay, l.segSize, l.segRecords = 0, GenesisPrev, "", "", 0, 0
	l.signedSeq, l.signedUpto, l.signedLine, l.durSeg, l.durOff = 0, 0, nil, "", 0
	restore := func(err error) (string, error) {
		l.mu.Lock()
		if l.broken == nil {
			l.broken = cause
		}
		l.mu.Unlock()
		if l.f != nil {
			l.f.Close()
			l.f = nil
		}
		return "", err
	}
	if err := l.recover(); err != nil {
		return restore(fmt.Errorf("heal: %w", err))
	}
	if note == "" {
		return "", nil
	}
	req := l.getRequest()
	defer l.putRequest(req)
	req.own = &Record{Type: EventTornTail, Detail: note}
	l.commit([]*request{req})
	<-req.done
	if req.err != nil {
		return restore(req.err)
	}
	return note, nil
}

// cutUndurable truncates the segment of the last good fsync to its size
// then, and says what it cut.
func (l *Log) cutUndurable() (string, error) {
	path := filepath.Join(l.o.Dir, l.durSeg)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("heal: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("heal: %w", err)
	}
	n := info.Size() - l.durOff
	if n <= 0 {
		return "", nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, l.durOff, n)); err != nil {
		return "", fmt.Errorf("heal: read %s: %w", l.durSeg, err)
	}
	if err := f.Truncate(l.durOff); err != nil {
		return "", fmt.Errorf("heal: cut %s: %w", l.durSeg, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("heal: fsync %s: %w", l.durSeg, err)
	}
	return fmt.Sprintf("cut %d octets at offset %d of %s, sha256 %s: written after the last successful fsync when a write or fsync failed; none of their records was acknowledged",
		n, l.durOff, l.durSeg, hex.EncodeToString(h.Sum(nil))), nil
}
