package pec

import "bytes"

// AddMissingDate returns raw with a Date field added when its header has
// none, and whether it added one. RFC 6409 §8.2: a submission server MAY
// add a missing Date field, as it may add a missing Message-ID (§8.3,
// OriginalForEnvelope); mail clients always write one, and the
// applications and scripts that forget it get a message that conforms to
// RFC 5322 §3.6 instead of a refusal. The value is the transaction's time
// reference (DM 2 novembre 2005 art. 9: one instant for the whole
// transaction), in Italian legal time like every Date pecgw writes.
//
// The field goes last in the header, before the empty line that ends it
// (where Postfix's cleanup puts the fields it adds); the rest of the
// message is left byte for byte. A Date that is present but invalid is
// not corrected (RFC 6409 §8.2 would allow it): what the client wrote
// there is refused with invalid-date, and the client says which date it
// meant. An empty message gets nothing: it is refused as empty.
func AddMissingDate(raw []byte, at Instant) ([]byte, bool) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return raw, false
	}
	fields, blank := splitHeader(raw)
	if len(fieldsNamed(fields, "Date")) > 0 {
		return raw, false
	}
	field := "Date: " + at.Header() + "\r\n"
	if blank < 0 {
		// All header and no body.
		return append(withCRLF(raw), field...), true
	}
	out := make([]byte, 0, len(raw)+len(field))
	out = append(out, raw[:blank]...)
	out = append(out, field...)
	return append(out, raw[blank:]...), true
}
