package logstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The index of a sealed segment, <segment>.idx, lets a lookup of one PEC
// identifier, client Message-ID or mailbox skip the segments that cannot
// hold it without reading them, and read only the matching lines of the
// one that does. It is derived data: it can be deleted at any time and
// rebuilt (Reindex); a missing, corrupt or stale index only makes a query
// scan that segment instead.
//
// Keys. Each record gives the keys
//
//	'i' + pec_id, and each id in generated (envelope, receipt, notice)
//	'm' + msgid (as stored, with angle brackets)
//	'a' + sender and each recipient address, lower-cased
//
// and a key's digest is SHA-256('kind' || key): bytes 0-7 are the key
// hash stored in the table, bytes 8-15 choose the Bloom block, bytes 16-31
// give the eight bits set in it.
//
// Lookup. For each sealed segment: stat the segment, open its index, read
// the header (one pread) and the one 64-byte Bloom block of the key (one
// pread). Only where the filter says "maybe" is the sorted key table
// binary-searched by pread, and only where the table holds the key hash is
// the segment itself read: the candidate lines at their offsets, each
// after the 256 KiB chunk(s) of the segment holding it were hashed and
// found equal to the chunk hashes in the index (so the lines are those
// indexed, without hashing a 256 MiB segment for one line), then decoded
// and matched against the whole filter, so a hash collision or a Bloom
// false positive never yields a wrong hit. If a chunk differs, the index
// is stale and the segment is scanned. The PEC identifier's leading
// yyyymmddhhmmss is not used to skip segments: the events of one
// transaction (an abort after a crash, a duplicate retry) can be logged
// long after the time the identifier names, and the Bloom block costs one
// small read anyway. A time range (Filter.From, To) skips the segments
// whose records all lie outside it, by the header's earliest and latest
// record time.
//
// Trust. The quick check, done for every index, is: well-formed header
// (magic, version, CRC-32C), the segment name, the file length that the
// header implies, and the segment's size and modification time as they
// were when it was indexed. If only the modification time differs (a copy
// or a restore from backup), the SHA-256 of the whole segment is checked
// before the index is used at all. A same-size rewrite that kept the
// modification time is the one change the quick check cannot see in the
// segments the filter rules out: finding tampering is pecgw log verify's
// job, not the query's.
//
// On-disk format, little-endian, version 1:
//
//	off  size
//	0    8    magic "pecgwidx"
//	8    4    version (1)
//	12   4    header length H (the body starts at H)
//	16   8    segment size in octets
//	24   8    segment modification time, Unix nanoseconds
//	32   32   SHA-256 of the segment file
//	64   8    first seq
//	72   8    last seq
//	80   8    record count
//	88   8    time of the first record, Unix nanoseconds
//	96   8    time of the last record
//	104  8    earliest record time
//	112  8    latest record time
//	120  8    Bloom blocks B
//	128  8    table entries E
//	136  32   SHA-256 of the body (chunk hashes, Bloom filter, table)
//	168  8    segment chunk size C (256 KiB)
//	176  8    segment chunks N (the segment size divided by C, rounded up)
//	184  2    length L of the segment name
//	186  L    segment name
//	186+L 4   CRC-32C of octets 0 to 186+L
//	H    32*N SHA-256 of each chunk of C octets of the segment
//	     64*B Bloom filter: B blocks of 512 bits, about 16 bits per key
//	     16*E table: key hash (8), record offset in the segment (8), sorted
//
// The file is written once, atomically (temporary file, fsync, rename,
// fsync of the folder) and left read-only like its segment.
const (
	idxMagic      = "pecgwidx"
	idxVersion    = 1
	idxFixedLen   = 186 // up to the name
	idxChunk      = 256 << 10
	idxBlock      = 64 // octets in a Bloom block
	idxBitsPerKey = 16
	idxEntryLen   = 16
	idxMaxHeader  = 512
)

// Key kinds in the index.
const (
	keyID      byte = 'i'
	keyMsgID   byte = 'm'
	keyMailbox byte = 'a'
)

var idxCRC = crc32.MakeTable(crc32.Castagnoli)

// indexHeader is the header of an index file.
type indexHeader struct {
	segment     string
	segSize     int64
	segMTime    int64
	segSHA256   [32]byte
	firstSeq    uint64
	lastSeq     uint64
	count       uint64
	firstTime   int64
	lastTime    int64
	minTime     int64
	maxTime     int64
	bloomBlocks uint64
	entries     uint64
	bodySHA256  [32]byte
	headerLen   int64 // H
	fileLen     int64 // H + 64B + 16E
	chunkSize   int64
	chunks      uint64
	chunkOffset int64
	bloomOffset int64
	tableOffset int64
}

// keyDigest is the digest of one index key.
func keyDigest(kind byte, key string) [32]byte {
	b := make([]byte, 0, 1+len(key))
	b = append(b, kind)
	b = append(b, key...)
	return sha256.Sum256(b)
}

// recordKeys calls fn for each index key of r (possibly twice for one key).
func recordKeys(r *Record, fn func(kind byte, key string)) {
	if r.PECID != "" {
		fn(keyID, r.PECID)
	}
	if g := r.Generated; g != nil {
		for _, id := range []string{g.Envelope, g.Receipt, g.Notice} {
			if id != "" && id != r.PECID {
				fn(keyID, id)
			}
		}
	}
	if r.MsgID != "" {
		fn(keyMsgID, r.MsgID)
	}
	if r.Sender != "" {
		fn(keyMailbox, strings.ToLower(r.Sender))
	}
	for _, rc := range r.Recipients {
		if rc.Addr != "" {
			fn(keyMailbox, strings.ToLower(rc.Addr))
		}
	}
}

func bloomBlockOf(d *[32]byte, blocks uint64) uint64 {
	return binary.LittleEndian.Uint64(d[8:16]) % blocks
}

func bloomSet(block []byte, d *[32]byte) {
	for i := 0; i < 8; i++ {
		bit := binary.LittleEndian.Uint16(d[16+2*i:]) & (idxBlock*8 - 1)
		block[bit/8] |= 1 << (bit % 8)
	}
}

func bloomHas(block []byte, d *[32]byte) bool {
	for i := 0; i < 8; i++ {
		bit := binary.LittleEndian.Uint16(d[16+2*i:]) & (idxBlock*8 - 1)
		if block[bit/8]&(1<<(bit%8)) == 0 {
			return false
		}
	}
	return true
}

type indexEntry struct {
	hash uint64
	off  int64
}

// writeIndex writes the index of the sealed segment name in dir. The log
// calls it right after sealing; Reindex calls it for a segment whose index
// is missing or unreadable.
func writeIndex(dir, name string) error {
	data, err := buildIndex(dir, name)
	if err != nil {
		return err
	}
	return writeIndexFile(dir, name+indexExt, data)
}

// buildIndex reads the segment and returns the index file's content.
func buildIndex(dir, name string) ([]byte, error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("indexing: %w", err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("indexing: %w", err)
	}
	h := indexHeader{segment: name, segSize: before.Size(), segMTime: before.ModTime().UnixNano(), chunkSize: idxChunk}
	sum := &chunkHasher{whole: sha256.New(), chunk: sha256.New()}
	var entries []indexEntry
	seen := make(map[[32]byte]bool)
	var digests [][32]byte
	var last *Record
	err = ReadLines(io.TeeReader(f, sum), func(off int64, line []byte, complete bool) error {
		if !complete {
			return fmt.Errorf("offset %d: last line without LF in a sealed segment", off)
		}
		r, err := Decode(line)
		if err != nil {
			return fmt.Errorf("offset %d: %w", off, err)
		}
		t, _ := time.Parse(time.RFC3339, r.Time) // Decode checked it
		ns := t.UnixNano()
		if h.count == 0 {
			h.firstSeq, h.firstTime, h.minTime, h.maxTime = r.Seq, ns, ns, ns
		}
		h.count++
		h.lastSeq, h.lastTime = r.Seq, ns
		h.minTime, h.maxTime = min(h.minTime, ns), max(h.maxTime, ns)
		clear(seen)
		recordKeys(r, func(kind byte, key string) {
			d := keyDigest(kind, key)
			if seen[d] {
				return
			}
			seen[d] = true
			digests = append(digests, d)
			entries = append(entries, indexEntry{hash: binary.LittleEndian.Uint64(d[:8]), off: off})
		})
		last = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing %s: %w", path, err)
	}
	if last == nil {
		return nil, fmt.Errorf("indexing %s: empty segment", path)
	}
	after, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("indexing: %w", err)
	}
	if after.Size() != h.segSize || !after.ModTime().Equal(before.ModTime()) {
		return nil, fmt.Errorf("indexing %s: the segment changed while it was read", path)
	}
	copy(h.segSHA256[:], sum.whole.Sum(nil))
	chunkSums := sum.finish()
	h.chunks = uint64(len(chunkSums) / sha256.Size)

	h.bloomBlocks = max(1, (uint64(len(digests))*idxBitsPerKey+idxBlock*8-1)/(idxBlock*8))
	bloom := make([]byte, h.bloomBlocks*idxBlock)
	for i := range digests {
		b := bloomBlockOf(&digests[i], h.bloomBlocks)
		bloomSet(bloom[b*idxBlock:(b+1)*idxBlock], &digests[i])
	}
	slices.SortFunc(entries, func(a, b indexEntry) int {
		if a.hash != b.hash {
			if a.hash < b.hash {
				return -1
			}
			return 1
		}
		return int(a.off - b.off)
	})
	h.entries = uint64(len(entries))
	table := make([]byte, len(entries)*idxEntryLen)
	for i, e := range entries {
		binary.LittleEndian.PutUint64(table[i*idxEntryLen:], e.hash)
		binary.LittleEndian.PutUint64(table[i*idxEntryLen+8:], uint64(e.off))
	}
	body := sha256.New()
	body.Write(chunkSums)
	body.Write(bloom)
	body.Write(table)
	copy(h.bodySHA256[:], body.Sum(nil))

	out := h.marshal()
	out = append(out, chunkSums...)
	out = append(out, bloom...)
	return append(out, table...), nil
}

// chunkHasher hashes what is written to it whole and in chunks of
// idxChunk octets.
type chunkHasher struct {
	whole, chunk hash.Hash
	n            int64 // octets in the current chunk
	sums         []byte
}

func (c *chunkHasher) Write(p []byte) (int, error) {
	c.whole.Write(p)
	total := len(p)
	for len(p) > 0 {
		k := min(int64(len(p)), idxChunk-c.n)
		c.chunk.Write(p[:k])
		c.n += k
		p = p[k:]
		if c.n == idxChunk {
			c.sums = c.chunk.Sum(c.sums)
			c.chunk.Reset()
			c.n = 0
		}
	}
	return total, nil
}

// finish returns the chunk hashes, the last chunk's included.
func (c *chunkHasher) finish() []byte {
	if c.n > 0 {
		c.sums = c.chunk.Sum(c.sums)
		c.n = 0
	}
	return c.sums
}

func (h *indexHeader) marshal() []byte {
	b := make([]byte, idxFixedLen, idxFixedLen+len(h.segment)+4)
	le := binary.LittleEndian
	copy(b, idxMagic)
	le.PutUint32(b[8:], idxVersion)
	le.PutUint32(b[12:], uint32(idxFixedLen+len(h.segment)+4))
	le.PutUint64(b[16:], uint64(h.segSize))
	le.PutUint64(b[24:], uint64(h.segMTime))
	copy(b[32:64], h.segSHA256[:])
	le.PutUint64(b[64:], h.firstSeq)
	le.PutUint64(b[72:], h.lastSeq)
	le.PutUint64(b[80:], h.count)
	le.PutUint64(b[88:], uint64(h.firstTime))
	le.PutUint64(b[96:], uint64(h.lastTime))
	le.PutUint64(b[104:], uint64(h.minTime))
	le.PutUint64(b[112:], uint64(h.maxTime))
	le.PutUint64(b[120:], h.bloomBlocks)
	le.PutUint64(b[128:], h.entries)
	copy(b[136:168], h.bodySHA256[:])
	le.PutUint64(b[168:], uint64(h.chunkSize))
	le.PutUint64(b[176:], h.chunks)
	le.PutUint16(b[184:], uint16(len(h.segment)))
	b = append(b, h.segment...)
	return le.AppendUint32(b, crc32.Checksum(b, idxCRC))
}

// parseIndexHeader parses the start of an index file (at least the whole
// header; more is ignored).
func parseIndexHeader(b []byte) (*indexHeader, error) {
	le := binary.LittleEndian
	if len(b) < idxFixedLen+4 || string(b[:8]) != idxMagic {
		return nil, errors.New("not an index file")
	}
	if v := le.Uint32(b[8:]); v != idxVersion {
		return nil, fmt.Errorf("index version %d, want %d", v, idxVersion)
	}
	hl := int(le.Uint32(b[12:]))
	nl := int(le.Uint16(b[184:]))
	if hl != idxFixedLen+nl+4 || hl > len(b) {
		return nil, errors.New("bad index header length")
	}
	if crc32.Checksum(b[:hl-4], idxCRC) != le.Uint32(b[hl-4:]) {
		return nil, errors.New("index header checksum mismatch")
	}
	h := &indexHeader{
		segment:     string(b[idxFixedLen : idxFixedLen+nl]),
		segSize:     int64(le.Uint64(b[16:])),
		segMTime:    int64(le.Uint64(b[24:])),
		firstSeq:    le.Uint64(b[64:]),
		lastSeq:     le.Uint64(b[72:]),
		count:       le.Uint64(b[80:]),
		firstTime:   int64(le.Uint64(b[88:])),
		lastTime:    int64(le.Uint64(b[96:])),
		minTime:     int64(le.Uint64(b[104:])),
		maxTime:     int64(le.Uint64(b[112:])),
		bloomBlocks: le.Uint64(b[120:]),
		entries:     le.Uint64(b[128:]),
		chunkSize:   int64(le.Uint64(b[168:])),
		chunks:      le.Uint64(b[176:]),
		headerLen:   int64(hl),
	}
	copy(h.segSHA256[:], b[32:64])
	copy(h.bodySHA256[:], b[136:168])
	const maxCount = 1 << 40 // sanity bound, so the lengths below cannot overflow
	if h.bloomBlocks == 0 || h.bloomBlocks > maxCount || h.entries > maxCount || h.segSize < 0 ||
		h.chunkSize <= 0 || h.chunks != uint64((h.segSize+h.chunkSize-1)/h.chunkSize) {
		return nil, errors.New("bad index header")
	}
	h.chunkOffset = h.headerLen
	h.bloomOffset = h.chunkOffset + int64(h.chunks)*sha256.Size
	h.tableOffset = h.bloomOffset + int64(h.bloomBlocks)*idxBlock
	h.fileLen = h.tableOffset + int64(h.entries)*idxEntryLen
	return h, nil
}

// writeIndexFile writes data as dir/name, atomically and read-only.
func writeIndexFile(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing index: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("writing index %s: %w", filepath.Join(dir, name), err)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(0o444); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// openIndex is an index opened for lookups, after the quick check.
type openIndex struct {
	f      *os.File
	h      *indexHeader
	exact  bool // the segment's size and modification time are as indexed
	seg    string
	segLen int64
}

// openSegmentIndex opens the index of the sealed segment seg in dir and
// does the quick check. It returns nil (no error) when there is no usable
// index: the caller scans the segment.
func openSegmentIndex(dir string, seg SegmentFile) *openIndex {
	st, err := os.Stat(filepath.Join(dir, seg.Name))
	if err != nil {
		return nil
	}
	f, err := os.Open(filepath.Join(dir, seg.Name+indexExt))
	if err != nil {
		return nil
	}
	fst, err := f.Stat()
	if err != nil {
		f.Close()
		return nil
	}
	buf := make([]byte, min(fst.Size(), idxMaxHeader))
	if _, err := f.ReadAt(buf, 0); err != nil {
		f.Close()
		return nil
	}
	h, err := parseIndexHeader(buf)
	if err != nil || h.segment != seg.Name || h.fileLen != fst.Size() || h.segSize != st.Size() {
		f.Close()
		return nil
	}
	return &openIndex{f: f, h: h, exact: h.segMTime == st.ModTime().UnixNano(), seg: seg.Name, segLen: st.Size()}
}

func (x *openIndex) Close() error { return x.f.Close() }

// checkChunks reports whether the chunks of the segment seg that hold the
// octets [off, off+n) are those the index was built from. verified
// remembers the chunks already checked.
func (x *openIndex) checkChunks(seg io.ReaderAt, off, n int64, verified map[int64]bool) bool {
	buf := make([]byte, x.h.chunkSize)
	for c := off / x.h.chunkSize; c <= (off+n-1)/x.h.chunkSize; c++ {
		if verified[c] {
			continue
		}
		if uint64(c) >= x.h.chunks {
			return false
		}
		var want [sha256.Size]byte
		if _, err := x.f.ReadAt(want[:], x.h.chunkOffset+c*sha256.Size); err != nil {
			return false
		}
		size := min(x.h.chunkSize, x.h.segSize-c*x.h.chunkSize)
		if _, err := seg.ReadAt(buf[:size], c*x.h.chunkSize); err != nil {
			return false
		}
		if sha256.Sum256(buf[:size]) != want {
			return false
		}
		verified[c] = true
	}
	return true
}

// mayHave reports whether the Bloom filter admits the key digest.
func (x *openIndex) mayHave(d *[32]byte) (bool, error) {
	var block [idxBlock]byte
	off := x.h.bloomOffset + int64(bloomBlockOf(d, x.h.bloomBlocks))*idxBlock
	if _, err := x.f.ReadAt(block[:], off); err != nil {
		return false, err
	}
	return bloomHas(block[:], d), nil
}

// offsets returns the segment offsets the table holds for the key digest,
// ascending, by binary search over the table with one pread per probe.
func (x *openIndex) offsets(d *[32]byte) ([]int64, error) {
	want := binary.LittleEndian.Uint64(d[:8])
	var e [idxEntryLen]byte
	at := func(i int64) (uint64, int64, error) {
		if _, err := x.f.ReadAt(e[:], x.h.tableOffset+i*idxEntryLen); err != nil {
			return 0, 0, err
		}
		return binary.LittleEndian.Uint64(e[:8]), int64(binary.LittleEndian.Uint64(e[8:])), nil
	}
	lo, hi := int64(0), int64(x.h.entries)
	for lo < hi {
		mid := lo + (hi-lo)/2
		k, _, err := at(mid)
		if err != nil {
			return nil, err
		}
		if k < want {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	var offs []int64
	for i := lo; i < int64(x.h.entries); i++ {
		k, off, err := at(i)
		if err != nil {
			return nil, err
		}
		if k != want {
			break
		}
		if off < 0 || off >= x.segLen {
			return nil, fmt.Errorf("index entry offset %d out of the segment", off)
		}
		offs = append(offs, off)
	}
	return offs, nil
}

// segmentSHA256 hashes the file at path.
func segmentSHA256(path string) ([32]byte, error) {
	var out [32]byte
	f, err := os.Open(path)
	if err != nil {
		return out, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return out, err
	}
	copy(out[:], h.Sum(nil))
	return out, nil
}

// checkIndexFile reads a whole index and checks it against its segment:
// the header, the body hash and the segment hash. stale is true for a
// well-formed index whose segment is not the one it was built from;
// refresh is true when only the segment's modification time changed.
func checkIndexFile(dir string, seg SegmentFile) (stale, refresh bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, seg.Name+indexExt))
	if err != nil {
		return false, false, err
	}
	h, err := parseIndexHeader(data[:min(len(data), idxMaxHeader)])
	if err != nil {
		return false, false, err
	}
	if h.segment != seg.Name || h.fileLen != int64(len(data)) {
		return false, false, errors.New("index of another segment, or truncated")
	}
	if sha256.Sum256(data[h.headerLen:]) != h.bodySHA256 {
		return false, false, errors.New("index body checksum mismatch")
	}
	st, err := os.Stat(filepath.Join(dir, seg.Name))
	if err != nil {
		return false, false, err
	}
	sum, err := segmentSHA256(filepath.Join(dir, seg.Name))
	if err != nil {
		return false, false, err
	}
	if sum != h.segSHA256 || st.Size() != h.segSize {
		return true, false, nil
	}
	return false, h.segMTime != st.ModTime().UnixNano(), nil
}

// Reindex writes the index of every sealed segment in dir whose index is
// missing or unreadable, or whose segment was copied (same content, new
// modification time), and returns the names of the indexes written. It
// does not replace an index that is well formed but whose segment no
// longer has the content it was built from: that is evidence that a
// sealed segment changed, for pecgw log verify to look at; such segments
// are named in the error, and the other segments are still indexed.
func Reindex(dir string) (written []string, err error) {
	segs, err := ListSegments(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, seg := range segs {
		if !seg.Sealed {
			continue
		}
		stale, refresh, cerr := checkIndexFile(dir, seg)
		switch {
		case cerr == nil && stale:
			errs = append(errs, fmt.Errorf("%s: the segment is not the one its index was built from (changed after sealing?); run pecgw log verify; delete the index to rebuild it", filepath.Join(dir, seg.Name)))
			continue
		case cerr == nil && !refresh:
			continue
		}
		if err := writeIndex(dir, seg.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		written = append(written, seg.Name+indexExt)
	}
	return written, errors.Join(errs...)
}
