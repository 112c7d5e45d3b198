package pec

import (
	"bytes"
	"crypto/rand"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestInstantItalianLegalTime covers both sides of both daylight-saving
// changes of 2026 (RFC 6109 §4.2: Italian legal time at the moment of the
// operation): 29 March 01:00 UTC (02:00 CET → 03:00 CEST) and
// 25 October 01:00 UTC (03:00 CEST → 02:00 CET).
func TestInstantItalianLegalTime(t *testing.T) {
	cases := []struct {
		utc                      time.Time
		header, day, clock, zone string
	}{
		{time.Date(2026, 3, 29, 0, 59, 59, 0, time.UTC), "Sun, 29 Mar 2026 01:59:59 +0100", "29/03/2026", "01:59:59", "+0100"},
		{time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC), "Sun, 29 Mar 2026 03:00:00 +0200", "29/03/2026", "03:00:00", "+0200"},
		{time.Date(2026, 10, 25, 0, 59, 59, 0, time.UTC), "Sun, 25 Oct 2026 02:59:59 +0200", "25/10/2026", "02:59:59", "+0200"},
		{time.Date(2026, 10, 25, 1, 0, 0, 0, time.UTC), "Sun, 25 Oct 2026 02:00:00 +0100", "25/10/2026", "02:00:00", "+0100"},
		// New Year's Eve in UTC is already the next day in Rome.
		{time.Date(2025, 12, 31, 23, 30, 5, 0, time.UTC), "Thu, 1 Jan 2026 00:30:05 +0100", "01/01/2026", "00:30:05", "+0100"},
		// Sub-second precision is dropped: every artefact has second precision.
		{time.Date(2014, 11, 7, 15, 52, 0, 999_999_999, time.UTC), "Fri, 7 Nov 2014 16:52:00 +0100", "07/11/2014", "16:52:00", "+0100"},
	}
	for _, c := range cases {
		i := At(c.utc)
		if got := i.Header(); got != c.header {
			t.Errorf("%v Header = %q, want %q", c.utc, got, c.header)
		}
		if got := i.Day(); got != c.day {
			t.Errorf("%v Day = %q, want %q", c.utc, got, c.day)
		}
		if got := i.Clock(); got != c.clock {
			t.Errorf("%v Clock = %q, want %q", c.utc, got, c.clock)
		}
		if got := i.Zone(); got != c.zone {
			t.Errorf("%v Zone = %q, want %q", c.utc, got, c.zone)
		}
		if !i.Time().Equal(c.utc.Truncate(time.Second)) {
			t.Errorf("%v Time = %v, want the same instant", c.utc, i.Time())
		}
	}
	// A time given in another zone is the same instant.
	ny, _ := time.LoadLocation("America/New_York")
	if got := At(time.Date(2026, 7, 1, 6, 0, 0, 0, ny)).Header(); got != "Wed, 1 Jul 2026 12:00:00 +0200" {
		t.Errorf("New York 06:00 = %q", got)
	}
}

func TestNewID(t *testing.T) {
	at := At(time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC))
	fixed := bytes.Repeat([]byte{0xA5}, 16)
	id, err := NewID(at, bytes.NewReader(fixed), "PEC.Example.IT")
	if err != nil {
		t.Fatal(err)
	}
	if want := "20260329030000.uws2ljnfuws2ljnfuws2ljnfuu@pec.example.it"; id != want {
		t.Errorf("NewID = %q, want %q", id, want)
	}
	// RFC 5322 §3.6.4 msg-id: dot-atom-text "@" dot-atom-text.
	re := regexp.MustCompile(`^[0-9]{14}\.[a-z2-7]{26}@[a-z0-9.-]+$`)
	seen := map[string]bool{}
	for range 10000 {
		id, err := NewID(at, rand.Reader, "pec.example.it")
		if err != nil {
			t.Fatal(err)
		}
		if !re.MatchString(id) {
			t.Fatalf("identifier %q is not of the documented form", id)
		}
		if seen[id] {
			t.Fatalf("identifier %q repeated", id)
		}
		seen[id] = true
	}
	// A provider domain in Unicode goes in as its A-label: the
	// identifier is a Message-ID, ASCII without SMTPUTF8.
	if id, err := NewID(at, rand.Reader, "PEC.Città.it"); err != nil || !re.MatchString(id) || !strings.HasSuffix(id, "@pec.xn--citt-3na.it") {
		t.Errorf("NewID with a Unicode domain = %q, %v", id, err)
	}
	if _, err := NewID(at, bytes.NewReader(make([]byte, 5)), "pec.example.it"); err == nil {
		t.Error("NewID with a short random source succeeded")
	}
	for _, bad := range []string{"", "a@b", "x y", "x>"} {
		if _, err := NewID(at, rand.Reader, bad); err == nil {
			t.Errorf("NewID accepted domain %q", bad)
		}
	}
	if got := DerivedID("20260329030000.abc@pec.example.it", "accettazione"); got != "20260329030000.abc.accettazione@pec.example.it" {
		t.Errorf("DerivedID = %q", got)
	}
	if strings.Contains(DerivedID("x", "y"), "@") {
		t.Error("DerivedID invented a domain")
	}
}
