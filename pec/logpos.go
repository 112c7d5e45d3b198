package pec

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
)

// LogPositionField is the header field, in the signed multipart/mixed
// entity of an acceptance receipt or a non-acceptance notice, that gives
// the position in the provider's transaction log of the record of its
// transaction: its seq and the SHA-256 (hex) of its line, what
// logstore.Log.Append returned (docs/formats.md, "The log position").
// Inside the signed part, so that whoever holds the receipt can prove the
// log once held that record (RFC 6109 §2.3: the log is the provider's
// proof), and check with pecgw verify --log that it still does.
//
// It is pecgw's own field: RFC 6109 §4.3 lets a provider add its own
// parts to the signed entity and tells readers to parse only
// daticert.xml, and an X- field of an entity is ignored by every MIME
// reader (RFC 2045 §9); daticert.xml, fixed by its DTD, is not touched.
const LogPositionField = "X-Pecgw-Log-Position"

// SetLogPosition puts the log position of the message's record in its
// signed entity (before Sign): "X-Pecgw-Log-Position: seq=<n>;
// record=<64 hex>", right after the entity's MIME-Version.
func (m *Message) SetLogPosition(seq uint64, hash string) {
	field := LogPositionField + ": seq=" + strconv.FormatUint(seq, 10) + "; record=" + hash + "\r\n"
	const first = "MIME-Version: 1.0\r\n"
	if bytes.HasPrefix(m.Body, []byte(first)) {
		m.Body = append([]byte(first+field), m.Body[len(first):]...)
		return
	}
	m.Body = append([]byte(field), m.Body...)
}

var logPositionRE = regexp.MustCompile(`^seq=([1-9][0-9]{0,19}); record=([0-9a-f]{64})$`)

// ParseLogPosition reads the value of a LogPositionField.
func ParseLogPosition(v string) (seq uint64, hash string, err error) {
	m := logPositionRE.FindStringSubmatch(v)
	if m == nil {
		return 0, "", fmt.Errorf("%s %q is not \"seq=<n>; record=<64 hex>\"", LogPositionField, v)
	}
	seq, err = strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%s %q: %w", LogPositionField, v, err)
	}
	return seq, m[2], nil
}
