package logstore

import (
	"bufio"
	"bytes"
	"encoding/base32"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixtureLog writes a log folder the way the log does, without the log:
// records chained from GenesisPrev, segments sealed by a seal record and
// made read-only, then indexed as the log does after sealing.
type fixtureLog struct {
	t       testing.TB
	dir     string
	seq     uint64
	prev    string
	clock   time.Time
	f       *os.File
	w       *bufio.Writer
	name    string
	noIndex bool // seal without writing the index
}

var fixtureZone = time.FixedZone("CET", 3600)

func newFixtureLog(t testing.TB, dir string) *fixtureLog {
	t.Helper()
	return &fixtureLog{t: t, dir: dir, prev: GenesisPrev, clock: time.Date(2026, 11, 23, 10, 0, 0, 0, fixtureZone)}
}

// add appends r (Seq, Prev and, when empty, Time are set here) to the
// active segment, opening one if needed, and returns the line.
func (l *fixtureLog) add(r *Record) []byte {
	l.t.Helper()
	if l.f == nil {
		l.name = SegmentName(l.seq+1, l.clock)
		f, err := os.OpenFile(filepath.Join(l.dir, l.name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			l.t.Fatal(err)
		}
		l.f, l.w = f, bufio.NewWriterSize(f, 1<<20)
	}
	l.seq++
	r.Seq, r.Prev = l.seq, l.prev
	if r.Time == "" {
		l.clock = l.clock.Add(time.Second)
		r.Time = l.clock.Format(time.RFC3339)
	} else if t, err := time.Parse(time.RFC3339, r.Time); err == nil {
		l.clock = t
	}
	line, err := Encode(r)
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := l.w.Write(line); err != nil {
		l.t.Fatal(err)
	}
	l.prev = Hash(line)
	return line
}

// flush writes what add buffered, so readers see it.
func (l *fixtureLog) flush() {
	l.t.Helper()
	if l.w != nil {
		if err := l.w.Flush(); err != nil {
			l.t.Fatal(err)
		}
	}
}

// seal closes the active segment with a seal record, makes it read-only
// and indexes it; it returns the segment's name.
func (l *fixtureLog) seal() string {
	l.t.Helper()
	l.add(&Record{Type: EventSeal, Head: l.prev, Upto: l.seq, Signed: "test seal", Sig: "c2ln"})
	l.flush()
	if err := l.f.Close(); err != nil {
		l.t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(l.dir, l.name), 0o444); err != nil {
		l.t.Fatal(err)
	}
	if !l.noIndex {
		if err := writeIndex(l.dir, l.name); err != nil {
			l.t.Fatal(err)
		}
	}
	name := l.name
	l.f, l.w, l.name = nil, nil, ""
	return name
}

func (l *fixtureLog) close() {
	l.t.Helper()
	if l.f != nil {
		l.flush()
		l.f.Close()
	}
}

// acceptance is an accettazione record of transaction id.
func acceptance(id, msgid, sender string, to ...string) *Record {
	r := &Record{Type: EventAccettazione, PECID: id, MsgID: msgid, Sender: sender, Subject: "prova " + id,
		Generated: &Generated{Envelope: id, Receipt: "ric." + id}, Provider: "Example PEC S.p.A.", User: sender}
	for _, a := range to {
		r.Recipients = append(r.Recipients, Recipient{Addr: a, Tipo: "certificato"})
	}
	return r
}

// seqs returns the seq of each hit.
func seqs(hits []Hit) []uint64 {
	var s []uint64
	for _, h := range hits {
		s = append(s, h.Record.Seq)
	}
	return s
}

func collect(t *testing.T, dir string, f Filter) []Hit {
	t.Helper()
	hits, _ := collectStats(t, dir, f)
	return hits
}

func collectStats(t *testing.T, dir string, f Filter) ([]Hit, *queryStats) {
	t.Helper()
	var hits []Hit
	st := &queryStats{}
	if err := query(dir, f, func(h Hit) error { hits = append(hits, h); return nil }, st); err != nil {
		t.Fatal(err)
	}
	return hits, st
}

func TestIndexRoundTrip(t *testing.T) {
	dir := t.TempDir()
	l := newFixtureLog(t, dir)
	l.add(acceptance("20261123100001.aaa@pec.example.it", "<m1@client>", "Alice@pec.example.it", "bob@pec.altro.it", "carol@example.com"))
	l.add(&Record{Type: EventHandedOff, PECID: "20261123100001.aaa@pec.example.it"})
	l.add(acceptance("20261123100003.bbb@pec.example.it", "<m2@client>", "bob@pec.altro.it", "alice@pec.example.it"))
	name := l.seal()

	data, err := os.ReadFile(filepath.Join(dir, name+indexExt))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(dir, name+indexExt))
	if st.Mode().Perm() != 0o444 {
		t.Errorf("index mode %v, want read-only", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	h, err := parseIndexHeader(data)
	if err != nil {
		t.Fatal(err)
	}
	segData, _ := os.ReadFile(filepath.Join(dir, name))
	segSum, _ := segmentSHA256(filepath.Join(dir, name))
	if h.segment != name || h.segSize != int64(len(segData)) || h.segSHA256 != segSum || h.firstSeq != 1 || h.lastSeq != 4 || h.count != 4 ||
		h.fileLen != int64(len(data)) || h.entries != 12 {
		t.Errorf("header %+v", h)
	}
	if time.Unix(0, h.firstTime).Unix() != time.Date(2026, 11, 23, 10, 0, 1, 0, fixtureZone).Unix() || h.maxTime != h.lastTime || h.minTime != h.firstTime {
		t.Errorf("times %d %d %d %d", h.firstTime, h.lastTime, h.minTime, h.maxTime)
	}
	// The same segment gives the same index, byte for byte.
	again, err := buildIndex(dir, name)
	if err != nil || !bytes.Equal(again, data) {
		t.Errorf("rebuilt index differs (%v)", err)
	}
	// Every key is in the filter and the table, at its record's offset.
	x := openSegmentIndex(dir, SegmentFile{Name: name})
	if x == nil || !x.exact {
		t.Fatal("index not usable")
	}
	defer x.Close()
	lines := bytes.SplitAfter(segData, []byte("\n"))
	var off int64
	for _, line := range lines[:len(lines)-1] {
		r, _ := Decode(line)
		recordKeys(r, func(kind byte, key string) {
			d := keyDigest(kind, key)
			ok, err := x.mayHave(&d)
			offs, _ := x.offsets(&d)
			if err != nil || !ok || !slices.Contains(offs, off) {
				t.Errorf("key %c%s of seq %d: bloom %v, offsets %v", kind, key, r.Seq, ok, offs)
			}
		})
		off += int64(len(line))
	}
	d := keyDigest(keyID, "nothere")
	if offs, _ := x.offsets(&d); len(offs) != 0 {
		t.Errorf("absent key found at %v", offs)
	}

	// A corrupt header makes the index unusable, not wrong.
	bad := slices.Clone(data)
	bad[70] ^= 1
	if _, err := parseIndexHeader(bad); err == nil {
		t.Error("corrupt header accepted")
	}
}

// multiLog writes 3 sealed segments and an active one; alice's
// transactions are spread over all four.
func multiLog(t *testing.T, dir string) *fixtureLog {
	l := newFixtureLog(t, dir)
	for s := 0; s < 4; s++ {
		for i := 0; i < 20; i++ {
			id := fmt.Sprintf("2026112310%02d%02d.s%di%d@pec.example.it", s, i, s, i)
			sender := fmt.Sprintf("user%d@pec.example.it", i%5)
			rcpt := fmt.Sprintf("dest%d@pec.altro.it", i%7)
			if i == 7 {
				rcpt = "ALICE@Pec.Example.IT"
			}
			if i == 13 {
				sender = "alice@pec.example.it"
			}
			l.add(acceptance(id, fmt.Sprintf("<m%d.%d@client>", s, i), sender, rcpt, "other@example.com"))
			l.add(&Record{Type: EventHandedOff, PECID: id})
		}
		if s < 3 {
			l.seal()
		}
	}
	l.flush()
	t.Cleanup(l.close)
	return l
}

func TestLookupAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	multiLog(t, dir)
	segs, _ := ListSegments(dir)
	if len(segs) != 4 || !segs[2].Sealed || segs[3].Sealed {
		t.Fatalf("fixture: %+v", segs)
	}
	// Each segment holds 40 records, the sealed ones a seal too: segment
	// s starts at seq 41*s+1.
	for _, tc := range []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"pec_id in a sealed segment", Filter{PECID: "20261123100105.s1i5@pec.example.it"}, []uint64{52, 53}},
		{"pec_id in brackets", Filter{PECID: "<20261123100105.s1i5@pec.example.it>"}, []uint64{52, 53}},
		{"pec_id in the active segment", Filter{PECID: "20261123100319.s3i19@pec.example.it"}, []uint64{162, 163}},
		{"generated receipt id", Filter{PECID: "ric.20261123100002.s0i2@pec.example.it"}, []uint64{5}},
		{"msgid", Filter{MsgID: "<m2.4@client>"}, []uint64{91}},
		{"msgid without brackets", Filter{MsgID: "m3.0@client"}, []uint64{124}},
		{"mailbox, any case", Filter{Mailbox: "Alice@PEC.example.it"}, []uint64{15, 27, 56, 68, 97, 109, 138, 150}},
		{"mailbox and pec_id", Filter{Mailbox: "alice@pec.example.it", PECID: "20261123100207.s2i7@pec.example.it"}, []uint64{97}},
		{"mailbox and a pec_id of another", Filter{Mailbox: "alice@pec.example.it", PECID: "20261123100208.s2i8@pec.example.it"}, nil},
		{"unknown id", Filter{PECID: "nope@pec.example.it"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits := collect(t, dir, tc.f)
			if got := seqs(hits); !slices.Equal(got, tc.want) {
				t.Errorf("got seqs %v, want %v", got, tc.want)
			}
			for _, h := range hits {
				data, _ := os.ReadFile(filepath.Join(dir, h.Segment))
				if !bytes.Equal(data[h.Offset:h.Offset+int64(len(h.Line))], h.Line) || h.Line[len(h.Line)-1] != '\n' {
					t.Errorf("hit %d: line is not the one stored at %s:%d", h.Record.Seq, h.Segment, h.Offset)
				}
			}
		})
	}
	// Without indexes the answers are the same.
	for _, seg := range segs[:3] {
		if err := os.Remove(filepath.Join(dir, seg.Name+indexExt)); err != nil {
			t.Fatal(err)
		}
	}
	hits, st := collectStats(t, dir, Filter{Mailbox: "alice@pec.example.it"})
	if got := seqs(hits); !slices.Equal(got, []uint64{15, 27, 56, 68, 97, 109, 138, 150}) || len(st.segments) != 4 || st.indexes != 0 {
		t.Errorf("without indexes: %v, %+v", got, st)
	}
	written, err := Reindex(dir)
	if err != nil || len(written) != 3 {
		t.Errorf("Reindex wrote %v, %v", written, err)
	}
	if _, st := collectStats(t, dir, Filter{PECID: "20261123100105.s1i5@pec.example.it"}); st.indexes != 3 || !slices.Equal(st.segments, []string{segs[1].Name, segs[3].Name}) {
		t.Errorf("after Reindex: %+v", st)
	}
}

// TestStaleIndex: an index whose segment changed is not used; the scan
// gives the right answer, and Reindex refuses to paper over the change.
func TestStaleIndex(t *testing.T) {
	dir := t.TempDir()
	multiLog(t, dir)
	segs, _ := ListSegments(dir)
	path := filepath.Join(dir, segs[1].Name)
	data, _ := os.ReadFile(path)

	// Same size, same modification time, another msgid in a record: the
	// quick check passes, the Bloom filter says "maybe" for the old msgid,
	// the segment hash does not match: scanned, and not found.
	st, _ := os.Stat(path)
	changed := bytes.Replace(data, []byte("<m1.4@client>"), []byte("<m1.X@client>"), 1)
	rewrite := func(b []byte) {
		t.Helper()
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	rewrite(changed)
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if hits, qs := collectStats(t, dir, Filter{MsgID: "<m1.4@client>"}); len(hits) != 0 || !slices.Contains(qs.segments, segs[1].Name) {
		t.Errorf("old msgid: %v, %+v", seqs(hits), qs)
	}
	// (The new msgid is not in the filter, so a lookup of it skips the
	// segment: the one change only pecgw log verify sees, index.go.)

	// Another size: the quick check fails, the segment is scanned.
	rewrite(bytes.Replace(data, []byte("<m1.4@client>"), []byte("<m1.new-and-longer@client>"), 1))
	if hits := collect(t, dir, Filter{MsgID: "<m1.new-and-longer@client>"}); !slices.Equal(seqs(hits), []uint64{50}) {
		t.Errorf("changed segment: %v", seqs(hits))
	}
	if hits := collect(t, dir, Filter{MsgID: "<m1.4@client>"}); len(hits) != 0 {
		t.Errorf("changed segment, old msgid: %v", seqs(hits))
	}
	if _, err := Reindex(dir); err == nil || !strings.Contains(err.Error(), segs[1].Name) {
		t.Errorf("Reindex over a changed segment: %v", err)
	}

	// A copy (same content, new modification time) is hashed, then the
	// index is used; Reindex refreshes it.
	rewrite(data)
	if hits := collect(t, dir, Filter{MsgID: "<m1.4@client>"}); !slices.Equal(seqs(hits), []uint64{50}) {
		t.Errorf("copied segment: %v", seqs(hits))
	}
	written, err := Reindex(dir)
	if err != nil || !slices.Equal(written, []string{segs[1].Name + indexExt}) {
		t.Errorf("Reindex after a copy: %v %v", written, err)
	}
	if _, qs := collectStats(t, dir, Filter{PECID: "20261123100005.s0i5@pec.example.it"}); !slices.Equal(qs.segments, []string{segs[0].Name, segs[3].Name}) {
		t.Errorf("after refresh: %+v", qs)
	}

	// A truncated or garbage index is ignored.
	idx := filepath.Join(dir, segs[0].Name+indexExt)
	os.Chmod(idx, 0o644)
	idxData, _ := os.ReadFile(idx)
	for _, b := range [][]byte{idxData[:len(idxData)-1], []byte("garbage")} {
		if err := os.WriteFile(idx, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if hits := collect(t, dir, Filter{PECID: "20261123100005.s0i5@pec.example.it"}); !slices.Equal(seqs(hits), []uint64{11, 12}) {
			t.Errorf("bad index: %v", seqs(hits))
		}
	}
}

// TestLookupReadsOneSegment: over 50 sealed segments a pec_id lookup
// reads the one segment that holds it, plus the active one, and no other
// (a Bloom false positive would cost a table probe, not a segment read,
// unless the 64-bit key hash collides too).
func TestLookupReadsOneSegment(t *testing.T) {
	dir := t.TempDir()
	l := newFixtureLog(t, dir)
	var names []string
	for s := 0; s < 50; s++ {
		for i := 0; i < 40; i++ {
			l.add(acceptance(fmt.Sprintf("20261123%06d.s%di%d@pec.example.it", s*100+i, s, i), fmt.Sprintf("<m%d.%d@c>", s, i),
				fmt.Sprintf("u%d@pec.example.it", i), fmt.Sprintf("d%d@pec.altro.it", s)))
		}
		names = append(names, l.seal())
	}
	l.add(acceptance("20261124000000.active@pec.example.it", "<ma@c>", "u1@pec.example.it", "x@y.it"))
	l.flush()
	defer l.close()
	segs, _ := ListSegments(dir)
	active := segs[len(segs)-1].Name

	for _, s := range []int{0, 17, 49} {
		hits, st := collectStats(t, dir, Filter{PECID: fmt.Sprintf("20261123%06d.s%di%d@pec.example.it", s*100+3, s, 3)})
		if len(hits) != 1 || hits[0].Segment != names[s] {
			t.Errorf("segment %d: hits %v", s, seqs(hits))
		}
		if st.indexes != 50 || !slices.Equal(st.segments, []string{names[s], active}) {
			t.Errorf("segment %d: %d indexes used, segments read %v", s, st.indexes, st.segments)
		}
	}
	// A mailbox in one segment only: that one is read.
	if hits, st := collectStats(t, dir, Filter{Mailbox: "D31@pec.altro.it"}); len(hits) != 40 || !slices.Equal(st.segments, []string{names[31], active}) {
		t.Errorf("mailbox: %d hits, read %v", len(hits), st.segments)
	}
	// A time range skips the segments outside it without reading them.
	from := time.Date(2026, 11, 23, 10, 0, 0, 0, fixtureZone).Add(41 * 20 * time.Second)
	hits, st := collectStats(t, dir, Filter{From: from, To: from.Add(41 * time.Second)})
	if len(hits) != 41 || len(st.segments) > 3 {
		t.Errorf("time range: %d hits, read %v", len(hits), st.segments)
	}
}

func TestBloomFalsePositiveRate(t *testing.T) {
	const keys = 20000
	blocks := uint64(keys*idxBitsPerKey+idxBlock*8-1) / (idxBlock * 8)
	bloom := make([]byte, blocks*idxBlock)
	for i := 0; i < keys; i++ {
		d := keyDigest(keyID, fmt.Sprint("in", i))
		b := bloomBlockOf(&d, blocks)
		bloomSet(bloom[b*idxBlock:(b+1)*idxBlock], &d)
	}
	fp := 0
	const probes = 100000
	for i := 0; i < probes; i++ {
		d := keyDigest(keyID, fmt.Sprint("out", i))
		b := bloomBlockOf(&d, blocks)
		if bloomHas(bloom[b*idxBlock:(b+1)*idxBlock], &d) {
			fp++
		}
	}
	if rate := float64(fp) / probes; rate > 0.005 {
		t.Errorf("false positive rate %.4f", rate)
	} else {
		t.Logf("false positive rate %.5f at %d bits per key", rate, idxBitsPerKey)
	}
}

var (
	lookupRecords = flag.Int("lookup.records", 1_000_000, "records in the synthetic log of BenchmarkLookupPECID")
	lookupSegment = flag.Int("lookup.segment", 10_000, "records per segment in BenchmarkLookupPECID")
	lookupDir     = flag.String("lookup.dir", "", "folder to keep (and reuse) the synthetic log of BenchmarkLookupPECID in")
)

// BenchmarkLookupPECID times the lookup of one PEC identifier in a
// synthetic log of -lookup.records records (default 1,000,000) in sealed
// segments of -lookup.segment records, built once with a fast writer.
func BenchmarkLookupPECID(b *testing.B) {
	n, per := *lookupRecords, *lookupSegment
	dir := *lookupDir
	if dir == "" {
		dir = b.TempDir()
	} else {
		dir = filepath.Join(dir, fmt.Sprintf("lookup-%d-%d", n, per))
	}
	ids, build, err := syntheticLog(dir, n, per, 15*time.Minute)
	if err != nil {
		b.Skip(err)
	}
	var segBytes, idxBytes int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		if strings.HasSuffix(e.Name(), indexExt) {
			idxBytes += info.Size()
		} else {
			segBytes += info.Size()
		}
	}
	b.Logf("%d records in %d segments: %.1f MB of segments, %.1f MB of indexes (%.1f B/record); built in %v",
		n, (n+per-1)/per, float64(segBytes)/1e6, float64(idxBytes)/1e6, float64(idxBytes)/float64(n), build.Round(time.Millisecond))

	rng := rand.New(rand.NewPCG(1, 2))
	reads, i := 0, 0
	b.ResetTimer()
	for b.Loop() {
		id := ids[rng.IntN(len(ids))]
		st := &queryStats{}
		found := 0
		if err := query(dir, Filter{PECID: id}, func(Hit) error { found++; return nil }, st); err != nil {
			b.Fatal(err)
		}
		if found != 1 {
			b.Fatalf("%s: %d hits", id, found)
		}
		reads += len(st.segments)
		i++
	}
	b.ReportMetric(float64(reads)/float64(i), "segments-read/op")
	b.ReportMetric(float64(idxBytes)/float64(n), "index-B/record")
}

// syntheticLog writes (or, when dir already holds it, reuses) a log of n
// records in sealed, indexed segments of per records, and returns a
// sample of its PEC identifiers and how long the build took.
func syntheticLog(dir string, n, per int, limit time.Duration) (ids []string, took time.Duration, err error) {
	start := time.Now()
	done := filepath.Join(dir, "ids.txt")
	if b, err := os.ReadFile(done); err == nil {
		return strings.Fields(string(b)), 0, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, err
	}
	rng := rand.New(rand.NewPCG(uint64(n), uint64(per)))
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, fixtureZone)
	prev := GenesisPrev
	var seq uint64
	toIndex := make(chan string, 4)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range toIndex {
				if err := writeIndex(dir, name); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	var rnd [16]byte
	fail := func(e error) ([]string, time.Duration, error) {
		close(toIndex)
		wg.Wait()
		return nil, 0, e
	}
	for written := 0; written < n; {
		name := SegmentName(seq+1, clock)
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return fail(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		write := func(r *Record) error {
			seq++
			r.Seq, r.Prev = seq, prev
			line, err := Encode(r)
			if err != nil {
				return err
			}
			prev = Hash(line)
			_, err = w.Write(line)
			return err
		}
		for i := 0; i < per-1 && written < n; i++ {
			clock = clock.Add(time.Duration(1+rng.IntN(4)) * time.Second)
			binary.LittleEndian.PutUint64(rnd[:], rng.Uint64())
			binary.LittleEndian.PutUint64(rnd[8:], rng.Uint64())
			id := clock.Format("20060102150405") + "." + strings.ToLower(enc.EncodeToString(rnd[:])) + "@pec.example.it"
			user := fmt.Sprintf("utente%d@pec.example.it", rng.IntN(20000))
			r := &Record{Time: clock.Format(time.RFC3339), Type: EventAccettazione, PECID: id,
				MsgID: fmt.Sprintf("<%x.%d@client.example.com>", rnd[:6], seq), Sender: user,
				Subject:   fmt.Sprintf("Fattura n. %d del %s", rng.IntN(100000), clock.Format("02/01/2006")),
				Generated: &Generated{Envelope: id, Receipt: strings.Replace(id, "@", ".ricevuta@", 1)},
				Provider:  "Example PEC S.p.A.", User: user, ClientIP: "192.0.2.10", TLS: "TLS1.3", Size: int64(2000 + rng.IntN(500000)),
				SHA256: fmt.Sprintf("%x", rnd) + fmt.Sprintf("%x", rnd)}
			for k := 0; k <= rng.IntN(3); k++ {
				r.Recipients = append(r.Recipients, Recipient{Addr: fmt.Sprintf("dest%d@pec.altro%d.it", rng.IntN(50000), k), Tipo: "certificato"})
			}
			if err := write(r); err != nil {
				return fail(err)
			}
			written++
			if rng.IntN(1000) == 0 || len(ids) < 100 && rng.IntN(per) == 0 {
				ids = append(ids, id)
			}
		}
		if err := write(&Record{Time: clock.Format(time.RFC3339), Type: EventSeal, Head: prev, Upto: seq, Signed: "synthetic", Sig: "c2ln"}); err != nil {
			return fail(err)
		}
		written++
		if err := w.Flush(); err != nil {
			return fail(err)
		}
		if err := f.Close(); err != nil {
			return fail(err)
		}
		if err := os.Chmod(filepath.Join(dir, name), 0o444); err != nil {
			return fail(err)
		}
		toIndex <- name
		if time.Since(start) > limit {
			return fail(fmt.Errorf("building the synthetic log takes more than %v", limit))
		}
	}
	close(toIndex)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, 0, err
	default:
	}
	if len(ids) == 0 {
		return nil, 0, fmt.Errorf("no identifiers sampled")
	}
	if err := os.WriteFile(done, []byte(strings.Join(ids, "\n")), 0o644); err != nil {
		return nil, 0, err
	}
	return ids, time.Since(start), nil
}
