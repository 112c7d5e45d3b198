package logstore

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestQueryFilters(t *testing.T) {
	dir := t.TempDir()
	l := newFixtureLog(t, dir)
	at := func(min int) string {
		return time.Date(2026, 11, 23, 10, min, 0, 0, fixtureZone).Format(time.RFC3339)
	}
	add := func(min int, r *Record) { r.Time = at(min); l.add(r) }
	add(0, acceptance("id1@pec.example.it", "<a@c>", "Mario.Rossi@pec.example.it", "x@pec.altro.it"))           // 1
	add(1, acceptance("id2@pec.example.it", "<b@c>", "x@pec.altro.it", "MARIO.ROSSI@PEC.EXAMPLE.IT", "y@e.it")) // 2
	l.seal()                                                                                                    // 3 at 10:01
	add(2, &Record{Type: EventHandedOff, PECID: "id1@pec.example.it"})                                          // 4
	add(3, acceptance("id3@pec.example.it", "<c@c>", "y@e.it", "z@e.it"))                                       // 5
	add(4, &Record{Type: EventAborted, PECID: "id3@pec.example.it", Detail: "hand-off failed"})                 // 6
	l.flush()
	defer l.close()
	// A record being written: no LF yet.
	f, err := os.OpenFile(filepath.Join(dir, l.name), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":7,"prev":"` + l.prev + `","time":"` + at(5) + `","type":"accettazione","pec_id":"id1@pec.example.it"`)
	f.Close()

	t10 := func(min int) time.Time { return time.Date(2026, 11, 23, 10, min, 0, 0, fixtureZone) }
	for _, tc := range []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"pec_id, all its events, not the partial line", Filter{PECID: "id1@pec.example.it"}, []uint64{1, 4}},
		{"mailbox as sender or recipient, any case", Filter{Mailbox: " mario.rossi@pec.example.IT "}, []uint64{1, 2}},
		{"mailbox AND msgid", Filter{Mailbox: "y@e.it", MsgID: "<c@c>"}, []uint64{5}},
		{"mailbox AND a msgid of another", Filter{Mailbox: "z@e.it", MsgID: "<b@c>"}, nil},
		{"from is inclusive", Filter{From: t10(3)}, []uint64{5, 6}},
		{"to is exclusive", Filter{To: t10(1)}, []uint64{1}},
		{"range", Filter{From: t10(1), To: t10(3)}, []uint64{2, 3, 4}},
		{"range in UTC", Filter{From: t10(1).UTC(), To: t10(3).UTC()}, []uint64{2, 3, 4}},
		{"pec_id AND range", Filter{PECID: "id3@pec.example.it", From: t10(4)}, []uint64{6}},
		{"mailbox AND range", Filter{Mailbox: "y@e.it", To: t10(2)}, []uint64{2}},
		{"nothing in range", Filter{Mailbox: "y@e.it", From: t10(9)}, nil},
		{"no filter: everything", Filter{}, []uint64{1, 2, 3, 4, 5, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := seqs(collect(t, dir, tc.f)); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	// fn stops the query with its error.
	stop := errors.New("enough")
	n := 0
	if err := Query(dir, Filter{}, func(Hit) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("stop: %v after %d hits", err, n)
	}
	// A missing folder names the path.
	if err := Query(filepath.Join(dir, "nope"), Filter{PECID: "x"}, func(Hit) error { return nil }); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing folder: %v", err)
	}
}

// TestQueryDamagedLine: a complete line that is not a record is an error
// that names the segment and offset, not a silently shorter answer.
func TestQueryDamagedLine(t *testing.T) {
	dir := t.TempDir()
	l := newFixtureLog(t, dir)
	l.add(acceptance("id1@pec.example.it", "<a@c>", "a@pec.example.it", "b@e.it"))
	l.flush()
	l.close()
	path := filepath.Join(dir, l.name)
	data, _ := os.ReadFile(path)
	off := len(data)
	data = append(data, "{\"seq\":2,\"damaged\":true}\n"...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Query(dir, Filter{Mailbox: "a@pec.example.it", MsgID: "<a@c>"}, func(Hit) error { return nil })
	if err != nil {
		t.Errorf("the damaged line cannot match and is skipped unread: %v", err)
	}
	err = Query(dir, Filter{}, func(Hit) error { return nil })
	if err == nil || !strings.Contains(err.Error(), l.name) || !strings.Contains(err.Error(), "offset "+strconv.Itoa(off)) {
		t.Errorf("damaged line: %v", err)
	}
}

func TestFilterMatch(t *testing.T) {
	r := acceptance("id@pec.example.it", "<m@c>", "A@x.it", "B@y.it")
	r.Time = "2026-11-23T10:00:00+01:00"
	for _, tc := range []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{PECID: "ric.id@pec.example.it"}, true},
		{Filter{PECID: "ID@pec.example.it"}, false},
		{Filter{MsgID: "m@c"}, true},
		{Filter{Mailbox: "b@Y.IT"}, true},
		{Filter{Mailbox: "c@y.it"}, false},
		{Filter{From: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)}, true},
		{Filter{From: time.Date(2026, 11, 23, 9, 0, 1, 0, time.UTC)}, false},
		{Filter{To: time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)}, false},
		{Filter{To: time.Date(2026, 11, 23, 9, 0, 1, 0, time.UTC)}, true},
	} {
		if got := tc.f.Match(r); got != tc.want {
			t.Errorf("%+v: %v", tc.f, got)
		}
	}
}
