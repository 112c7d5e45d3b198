// Package dedup remembers which PEC submissions have been accepted, so that a
// client retrying the same submission gets the original PEC identifier
// instead of a second transport envelope (invariant 3 of docs/architecture.md).
//
// The store is behind one interface, Store, with two implementations: Redis
// (shared by several gateway instances) and Embedded (one machine, a
// journal file). The store decides nothing: the gateway reads the State of a
// Claim and chooses the reply.
package dedup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"time"
)

// Key identifies a submission: the authenticated sender, the client's
// Message-ID, the recipients and a SHA-256 of the message body.
type Key struct {
	Sender     string
	MessageID  string
	Recipients []string // any order and case: Fingerprint normalises them
	BodyHash   [32]byte
}

// ID is the store key: a SHA-256 of the lower-cased sender and Message-ID.
// Two submissions with the same ID are the same message, or a client
// reusing a Message-ID.
func (k Key) ID() string {
	h := sha256.New()
	h.Write([]byte(strings.ToLower(k.Sender)))
	h.Write([]byte{0})
	h.Write([]byte(strings.ToLower(k.MessageID)))
	return hex.EncodeToString(h.Sum(nil))
}

// Fingerprint is a SHA-256 of the sorted, lower-cased recipients and the
// body hash: it tells a true duplicate (same ID, same fingerprint) from a
// reuse of the Message-ID for another message.
func (k Key) Fingerprint() string {
	rs := make([]string, len(k.Recipients))
	for i, r := range k.Recipients {
		rs[i] = strings.ToLower(r)
	}
	slices.Sort(rs)
	h := sha256.New()
	for _, r := range rs {
		h.Write([]byte(r))
		h.Write([]byte{0})
	}
	h.Write([]byte{0})
	h.Write(k.BodyHash[:])
	return hex.EncodeToString(h.Sum(nil))
}

// State is the answer of Claim.
type State int

const (
	// New: nothing is known of the key; the caller holds the lease and
	// runs the transaction.
	New State = iota
	// Duplicate: the same submission was committed; Claim.PECID is the
	// original PEC identifier, to be given again.
	Duplicate
	// InFlight: another transaction holds a live lease on the ID; the
	// caller should answer with a temporary failure so the client retries.
	// When that transaction had taken a hold (Prepare), Claim.PECID names
	// it: its envelope may be out, and only its own reconciliation can say.
	InFlight
	// Reused: the Message-ID was committed before with another fingerprint
	// (other recipients or body). The caller holds the lease, proceeds as
	// for New and logs the reuse.
	Reused
)

func (s State) String() string {
	switch s {
	case New:
		return "new"
	case Duplicate:
		return "duplicate"
	case InFlight:
		return "in-flight"
	case Reused:
		return "reused"
	}
	return "unknown"
}

// Trace is the answer of Store.Trace.
type Trace int

const (
	TraceUnknown   Trace = iota // the store cannot say
	TraceNone                   // neither held nor committed
	TraceHeld                   // a hold naming the transaction
	TraceCommitted              // committed with the transaction's PEC identifier
)

// Claim is the result of Store.Claim.
type Claim struct {
	State State
	PECID string // Duplicate: the PEC identifier committed before; InFlight: the hold's, if any
	Token string // New, Reused: the lease owner's token, for Commit or Release
}

// ErrNotOwner is returned by Commit and Release when another caller holds
// the lease on the key. Nothing was changed.
var ErrNotOwner = errors.New("dedup: lease held by another owner")

// ErrUnavailable is wrapped by errors meaning the store could not be
// reached or did not answer in time (timeouts, refused connections, a
// cluster without a master). The gateway answers those with a temporary
// failure; any other error is a bug or a misconfiguration.
var ErrUnavailable = errors.New("dedup: store unavailable")

// Store is the duplicate-submission store. Its methods are safe for
// concurrent use.
//
// A lease is held per ID (sender and Message-ID), whatever the
// fingerprint: two transactions for one ID never run at once. A
// transaction's lease goes through two stages:
//
//   - the lease proper, short (30 s in the gateway) and renewed while the
//     transaction builds, signs and logs: if the process dies it expires by
//     itself and the client's retry proceeds;
//   - the hold (Prepare), taken just before the transport envelope is
//     handed off and naming its PEC identifier: from then on the outcome of
//     the hand-off is known only to the transaction, or after a crash to the
//     reconciliation of its own transaction log (Remember or Abandon). A
//     hold lasts the dedup window: a retry meanwhile gets InFlight, never a
//     second envelope (invariant 3 of docs/architecture.md).
type Store interface {
	// Claim atomically looks the key up. A committed entry with the same
	// fingerprint gives Duplicate and its PEC identifier. Else a live lease
	// or hold held by anyone gives InFlight (with the hold's PEC
	// identifier). Else the caller gets a lease of duration lease and State
	// New, or Reused when the ID was committed before with another
	// fingerprint. Claim makes nothing durable: a lease is lost with the
	// Embedded store's process, and expires by itself.
	Claim(ctx context.Context, k Key, lease time.Duration) (Claim, error)

	// Renew extends the caller's lease to lease from now. It is
	// ErrNotOwner when the caller no longer holds it (it expired, or
	// another caller holds it); a hold of the caller is left as it is.
	Renew(ctx context.Context, k Key, token string, lease time.Duration) error

	// Prepare turns the caller's live lease into a hold of duration hold
	// naming pecID, just before the envelope is handed off. It is
	// ErrNotOwner when the caller no longer holds a live lease: the
	// transaction must then stop, as a twin may be running. When Prepare
	// returns nil the hold is as durable as a commit.
	Prepare(ctx context.Context, k Key, token, pecID string, hold time.Duration) error

	// Commit records pecID for the key's ID and fingerprint, to be given by
	// Claim as Duplicate until window has passed; the lease or hold is
	// dropped. Only the owner (token) may commit: if another caller holds
	// the lease the result is ErrNotOwner and nothing changes. An owner
	// whose lease expired may still commit as long as nobody else took it,
	// since its envelope may already be out. When Commit returns nil the
	// record is durable: acknowledged by Redis, fsync'd by Embedded.
	Commit(ctx context.Context, k Key, token, pecID string, window time.Duration) error

	// Release drops the caller's lease or hold, when the transaction failed
	// before any hand-off, so that a retry proceeds as New (or Reused). It
	// is a compare-and-delete: if another caller holds the lease the result
	// is ErrNotOwner and nothing changes; if no lease is held it does
	// nothing.
	Release(ctx context.Context, k Key, token string) error

	// Remember records pecID for the ID and fingerprint given as strings
	// (Key.ID, Key.Fingerprint, as the transaction log keeps them), as
	// Commit does but without a lease: it is for reconciliation, when the
	// transaction that held the lease is gone. A hold naming pecID is
	// dropped; any other lease is left alone. A commit of another PEC id
	// for the same fingerprint is kept (a twin certified meanwhile knew its
	// envelope went out). When Remember returns nil the record is durable,
	// as for Commit.
	Remember(ctx context.Context, id, fingerprint, pecID string, window time.Duration) error

	// Trace tells what the store still knows of transaction pecID after
	// its process died: committed for fingerprint (its envelope and
	// receipt went out), held (it reached its hold: the envelope may be
	// out), none (it never took its hold: the envelope was not handed
	// off), or unknown (the store cannot say: the embedded store's holds
	// die with the process).
	Trace(ctx context.Context, id, fingerprint, pecID string) (Trace, error)

	// Hold puts back a hold naming pecID on id, for a transaction whose
	// envelope's fate is unknown (a next hop that did not answer, a crash
	// before the answer) until the operator confirms or rejects it: a
	// retry meanwhile gets InFlight on every instance, never a second
	// envelope nor a 250 without a receipt. The embedded store forgets
	// holds with its process, so the reconciliation puts them back at
	// every start. Nothing is done when the submission (fingerprint) is
	// committed, or when any lease or hold is on id.
	Hold(ctx context.Context, id, fingerprint, pecID string, hold time.Duration) error

	// Abandon drops a hold on id naming pecID, for reconciliation when the
	// envelope of a transaction cut by a crash was not handed off: a retry
	// then proceeds as new. Any other lease or hold is left alone.
	Abandon(ctx context.Context, id, pecID string) error

	// Close releases the store's resources (connections, file lock).
	Close() error
}

// newToken returns a random lease owner token.
func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// Compile-time checks that both stores implement Store.
var (
	_ Store = (*Redis)(nil)
	_ Store = (*Embedded)(nil)
)

// millis converts d to whole milliseconds, at least 1, as Redis PX wants.
func millis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return ms
}
