package pec

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// LogPositionField is the header field, in the signed multipart/mixed
// entity of an acceptance receipt or a non-acceptance notice, that gives
// the position in the provider's transaction log of the record of its
// transaction: its seq and the hash of its line (hex SHA-256, what
// logstore.Log.Append returned and the next record's prev holds),
// docs/formats.md, "The log position". Its value is
//
//	seq=<decimal, 1 or more>; record=<64 lower-case hex digits>
//
// written folded after the semicolon, so that no line passes 78
// characters (RFC 5322 §2.1.1):
//
//	X-Pecgw-Log-Position: seq=1234;
//	 record=5f0c…
//
// Why: RFC 6109 §2.3 makes the log the provider's proof of every event,
// and a sender who lost his receipt has nothing but that log (DPR
// 68/2005). With the position inside the signature, a receipt also
// proves the log once held its record, whatever becomes of the log, and
// pecgw verify --log checks that it still does.
//
// Where the rules stand: the digest of the PEC rules
// (docs/pec-spec-digest.md) lists the header fields of each
// message on its outer header (§2.2-§2.4) and gives the signed entity's
// own header as MIME-Version (optional) and Content-Type only (§2.1); it
// says nothing of other fields there, for or against. What it does say
// (§2.1, after RFC 6109 §4.3) is that a provider may add parts of its own
// to that entity and that readers parse daticert.xml only: receipts are
// read from the XML, which this field does not touch (daticert.xml stays
// exactly the DTD). MIME then permits the field: a body part may carry
// header fields other than Content-*, and X- fields for private
// purposes, which readers may ignore (RFC 2046 §5.1.1). The same
// paragraph warns that such fields "may be lost at some gateways" and
// "must not be depended on": here a gateway that dropped it would break
// the signature over the entity (RFC 1847 §2.1), so a receipt whose
// signature verifies has the field as pecgw wrote it, and one without it
// was made without it. The name has the X- prefix of the PEC fields
// (X-Ricevuta, X-Trasporto; RFC 6109 App. A) and pecgw's own, so it can
// never be taken for one of the rules'.
const LogPositionField = "X-Pecgw-Log-Position"

// SetLogPosition puts the log position of the message's record in its
// signed entity, before it is signed (docs/formats.md): the field
// LogPositionField right after the entity's MIME-Version. A message
// whose position is never set is byte for byte what it was before pecgw
// wrote the field (the golden files). It refuses a position that
// ParseLogPosition would not read back, and a second position.
func (m *Message) SetLogPosition(seq uint64, hash string) error {
	if seq == 0 || len(hash) != 64 || !isLowerHex(hash) {
		return fmt.Errorf("log position seq %d, record %q: want a seq from 1 and a hex SHA-256", seq, hash)
	}
	if fields, _ := splitHeader(m.Body); len(fieldsNamed(fields, LogPositionField)) > 0 {
		return errors.New("the message carries a log position already")
	}
	field := LogPositionField + ": seq=" + strconv.FormatUint(seq, 10) + ";\r\n record=" + hash + "\r\n"
	const first = "MIME-Version: 1.0\r\n"
	if bytes.HasPrefix(m.Body, []byte(first)) {
		m.Body = append([]byte(first+field), m.Body[len(first):]...)
		return nil
	}
	m.Body = append([]byte(field), m.Body...)
	return nil
}

var logPositionRE = regexp.MustCompile(`^seq=([1-9][0-9]{0,19});[ \t]*record=([0-9a-f]{64})$`)

// ParseLogPosition reads the value of a LogPositionField, unfolded.
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

// ReadLogPosition reads the log position from entity, the signed part of
// a message (signer.Result.Content, after the signature verified: never
// from the outer header, which nobody signed). found is false when the
// entity has no LogPositionField; an entity with two is an error.
func ReadLogPosition(entity []byte) (seq uint64, hash string, found bool, err error) {
	fields, _ := splitHeader(entity)
	fs := fieldsNamed(fields, LogPositionField)
	switch len(fs) {
	case 0:
		return 0, "", false, nil
	case 1:
	default:
		return 0, "", true, fmt.Errorf("the signed part has %d %s fields", len(fs), LogPositionField)
	}
	raw := fs[0].Raw
	v := raw[bytes.IndexByte(raw, ':')+1:]
	// Unfold (RFC 5322 §2.2.3): a line end followed by white space.
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	v = bytes.ReplaceAll(v, []byte("\n"), nil)
	seq, hash, err = ParseLogPosition(strings.Trim(string(v), " \t"))
	return seq, hash, true, err
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
