package pec

import (
	"bytes"
	"strings"
)

// rawField is one header field of a message exactly as it stands, folding
// included: Raw runs from the first octet of the name to the CRLF that
// ends its last line.
type rawField struct {
	Name string // as written
	Off  int    // offset of Raw in the message
	Raw  []byte
}

// splitHeader returns the header fields of msg and the offset of the
// empty line that ends the header, or -1 when the message has no empty
// line and is all header. It is forgiving: Inspect decides what is
// conformant; the builders only need the fields of an accepted message.
func splitHeader(msg []byte) (fields []rawField, blank int) {
	i := 0
	for i < len(msg) {
		end := lineEnd(msg, i)
		line := msg[i:end]
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return fields, i
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			f := &fields[len(fields)-1]
			f.Raw = msg[f.Off:end]
		} else {
			name := line
			if c := bytes.IndexByte(line, ':'); c >= 0 {
				name = line[:c]
			}
			fields = append(fields, rawField{Name: strings.TrimSpace(string(name)), Off: i, Raw: msg[i:end]})
		}
		i = end
	}
	return fields, -1
}

// lineEnd returns the offset just past the LF that ends the line starting
// at i, or len(b).
func lineEnd(b []byte, i int) int {
	if j := bytes.IndexByte(b[i:], '\n'); j >= 0 {
		return i + j + 1
	}
	return len(b)
}

// fieldsNamed returns the fields called name (case-insensitive), in order.
func fieldsNamed(fields []rawField, name string) []rawField {
	var out []rawField
	for _, f := range fields {
		if strings.EqualFold(f.Name, name) {
			out = append(out, f)
		}
	}
	return out
}

// withCRLF returns raw ending in CRLF.
func withCRLF(raw []byte) []byte {
	raw = bytes.TrimRight(raw, "\r\n")
	out := make([]byte, 0, len(raw)+2)
	return append(append(out, raw...), '\r', '\n')
}
