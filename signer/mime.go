package signer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// bareLFs counts the LFs of b without a CR before them.
func bareLFs(b []byte) int {
	bare := 0
	for i := bytes.IndexByte(b, '\n'); i >= 0; {
		if i == 0 || b[i-1] != '\r' {
			bare++
		}
		j := bytes.IndexByte(b[i+1:], '\n')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return bare
}

// toCRLF returns b with every bare LF turned into CRLF (RFC 8551 §3.1.1,
// RFC 5322 §2.1: canonical line ends); existing CRLF pairs are left alone.
// b itself is returned when there is nothing to change.
func toCRLF(b []byte) []byte {
	bare := bareLFs(b)
	if bare == 0 {
		return b
	}
	out := make([]byte, 0, len(b)+bare)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return append(out, b...)
		}
		out = append(out, b[:i]...)
		// At i == 0 the octet before is the LF just copied (or nothing).
		if i == 0 || b[i-1] != '\r' {
			out = append(out, '\r')
		}
		out = append(out, '\n')
		b = b[i+1:]
	}
	return out
}

// boundaryPrefix starts every boundary we write; with 32 hex digits the
// boundary is 44 characters, within the 70 of RFC 2046 §5.1.1.
const boundaryPrefix = "----=_pecgw_"

// chooseBoundary derives a boundary from seed (a SHA-256 of the content),
// so that signing the same content twice gives the same bytes. It re-hashes
// until the candidate does not occur in the content (RFC 2046 §5.1.1: the
// boundary must not appear in the encapsulated material).
func chooseBoundary(seed [sha256.Size]byte, inContent func(string) bool) string {
	for {
		b := boundaryPrefix + hex.EncodeToString(seed[:16])
		if !inContent(b) {
			return b
		}
		seed = sha256.Sum256(seed[:])
	}
}

// headerField is one unfolded header field.
type headerField struct {
	name, value string
}

// splitHeader splits an entity at its first empty line (RFC 5322 §2.1),
// accepting CRLF or bare LF line ends. Without an empty line, all of b is
// header.
func splitHeader(b []byte) (header, body []byte) {
	for i := 0; i < len(b); {
		// i is the start of a line: is it empty?
		switch {
		case b[i] == '\n':
			return b[:i], b[i+1:]
		case b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n':
			return b[:i], b[i+2:]
		}
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		i += j + 1
	}
	return b, nil
}

// parseHeader unfolds a header section (RFC 5322 §2.2.3), CRLF or LF. Lines
// that are not fields, such as an mbox "From " line, are skipped.
func parseHeader(h []byte) []headerField {
	var (
		fields []headerField
		cur    strings.Builder
		open   bool
	)
	flush := func() {
		if open {
			line := cur.String()
			if name, value, ok := strings.Cut(line, ":"); ok {
				name = strings.TrimRight(name, " \t") // obsolete "Name :" (RFC 5322 §4.5)
				if validFieldName(name) {
					fields = append(fields, headerField{name: name, value: strings.TrimSpace(value)})
				}
			}
		}
		cur.Reset()
		open = false
	}
	for len(h) > 0 {
		line := h
		if i := bytes.IndexByte(h, '\n'); i >= 0 {
			line, h = h[:i], h[i+1:]
		} else {
			h = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') && open {
			cur.Write(line)
			continue
		}
		flush()
		cur.Write(line)
		open = true
	}
	flush()
	return fields
}

// validFieldName reports whether s is a field name: printable US-ASCII but
// colon (RFC 5322 §3.6.8).
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// fieldValues returns the values of every field called name.
func fieldValues(fields []headerField, name string) []string {
	var vs []string
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			vs = append(vs, f.value)
		}
	}
	return vs
}

// delimiter is one boundary delimiter line found in a multipart body.
type delimiter struct {
	start int  // index of the leading "--"
	next  int  // index just after the line's line end, or len(body)
	close bool // close delimiter ("--" boundary "--")
}

// nextDelimiter finds the first delimiter line for boundary at or after
// from. RFC 2046 §5.1.1: a delimiter is "--" boundary at the start of a
// line, optionally "--" for the close delimiter, then optional linear white
// space, then the line end (CRLF, or LF as stored on Unix, or the end of
// the body); a line that merely begins with the delimiter text is content.
func nextDelimiter(body []byte, boundary string, from int) (delimiter, bool) {
	dash := []byte("--" + boundary)
	for from <= len(body) {
		i := bytes.Index(body[from:], dash)
		if i < 0 {
			return delimiter{}, false
		}
		start := from + i
		from = start + 1
		if start > 0 && body[start-1] != '\n' {
			continue
		}
		p := start + len(dash)
		d := delimiter{start: start}
		if bytes.HasPrefix(body[p:], []byte("--")) {
			d.close = true
			p += 2
		}
		for p < len(body) && (body[p] == ' ' || body[p] == '\t') {
			p++
		}
		switch {
		case p == len(body):
			d.next = p
		case body[p] == '\n':
			d.next = p + 1
		case bytes.HasPrefix(body[p:], []byte("\r\n")):
			d.next = p + 2
		default:
			continue
		}
		return d, true
	}
	return delimiter{}, false
}

// partBefore returns the body part that starts at from and ends at the
// delimiter d, whose leading line end belongs to the delimiter (RFC 2046
// §5.1.1), so it is not part of the content.
func partBefore(body []byte, from int, d delimiter) []byte {
	end := d.start
	if end > 0 && body[end-1] == '\n' {
		end--
		if end > 0 && body[end-1] == '\r' {
			end--
		}
	}
	end = max(end, from)
	return body[from:end:end]
}
