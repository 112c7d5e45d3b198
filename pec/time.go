package pec

import (
	"fmt"
	"time"
	_ "time/tzdata" // Italian legal time must not depend on the host's zoneinfo
)

// Instant is the single time reference (riferimento temporale) of one
// transaction. DM 2 novembre 2005 art. 9 c. 1: "a ciascuna trasmissione è
// apposto un unico riferimento temporale"; RFC 6109 §4.1: every artefact
// of the transaction carries the same value. It has second precision,
// because daticert.xml, the text part, the Date: field and the CMS
// signingTime all have second precision, and they must agree.
type Instant struct {
	t time.Time // in Europe/Rome, truncated to the second
}

// rome is set once at start and never changed.
var rome = loadRome()

func loadRome() *time.Location {
	loc, err := time.LoadLocation("Europe/Rome")
	if err != nil {
		// Unreachable: time/tzdata is linked in.
		panic(fmt.Sprintf("pec: Europe/Rome not available: %v", err))
	}
	return loc
}

// Rome returns Europe/Rome, the zone of Italian legal time (RFC 6109 §4.2).
// It comes from the embedded time/tzdata, so it exists on any host.
func Rome() *time.Location { return rome }

// At returns the Instant of t (truncated to the second).
func At(t time.Time) Instant {
	return Instant{t: t.Truncate(time.Second).In(Rome())}
}

// Time returns the instant as a time.Time in Europe/Rome.
func (i Instant) Time() time.Time { return i.t }

// IsZero reports whether the instant is unset.
func (i Instant) IsZero() bool { return i.t.IsZero() }

// Header renders the instant for the Date: field (RFC 5322 §3.3), in
// Italian legal time as real providers do: "Fri, 7 Nov 2014 16:52:00 +0100".
func (i Instant) Header() string { return i.t.Format("Mon, 2 Jan 2006 15:04:05 -0700") }

// Day renders the day as dd/mm/yyyy (RFC 6109 §4.2; daticert <giorno>).
func (i Instant) Day() string { return i.t.Format("02/01/2006") }

// Clock renders the time of day as hh:mm:ss (RFC 6109 §4.2; daticert <ora>).
func (i Instant) Clock() string { return i.t.Format("15:04:05") }

// Zone renders the offset from UTC as +0100 or +0200, the form of
// daticert's zona attribute and, in parentheses, of the text part. The
// RFC 6109 §4.2 ABNF has a colon (+01:00); no provider writes it, so we
// follow the providers (digest §3.2).
func (i Instant) Zone() string { return i.t.Format("-0700") }

// Stamp renders yyyymmddhhmmss in Italian legal time, as providers put it
// in their identifiers.
func (i Instant) Stamp() string { return i.t.Format("20060102150405") }
