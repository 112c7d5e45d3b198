package gateway

import (
	"context"
	"errors"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/pecgw/pecgw/pec"
)

// maxReplyText bounds the text of one reply line (RFC 5321 §4.5.3.1.5:
// 512 octets including the code).
const maxReplyText = 400

// AcceptedReply is the 250 of an accepted submission: it carries the PEC
// identifier, so the client (and its user) can quote it.
func AcceptedReply(o *Outcome) *smtp.SMTPError {
	return &smtp.SMTPError{
		Code:         250,
		EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message:      "accepted as certified mail, PEC id " + o.ID,
	}
}

// RefusedReply is the permanent refusal of a submission that failed the
// formal checks (RFC 6109 §3.1.2). Its enhanced status code is that of
// the first violation (RFC 3463); the text names every rule broken and
// the notice already sent, so a mail client's error dialog tells the user
// what to fix.
func RefusedReply(o *Outcome) *smtp.SMTPError {
	code, enh := 550, smtp.EnhancedCode{5, 6, 0}
	if len(o.Violations) > 0 {
		code, enh = violationStatus(o.Violations[0].Code)
	}
	texts := make([]string, len(o.Violations))
	for i, v := range o.Violations {
		texts[i] = v.English
	}
	tail := "; non-acceptance notice " + o.NoticeID + " sent to the sender"
	msg := "refused by PEC rules: " + strings.Join(texts, "; ")
	if len(msg)+len(tail) > maxReplyText {
		msg = msg[:max(0, maxReplyText-len(tail)-3)] + "..."
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: oneLine(msg + tail)}
}

// violationStatus maps a formal-check code to an SMTP reply (RFC 5321
// §4.2) and enhanced status code (RFC 3463).
func violationStatus(code string) (int, smtp.EnhancedCode) {
	switch code {
	case pec.CodeSizeLimit:
		return 552, smtp.EnhancedCode{5, 3, 4} // message too big for system
	case pec.CodeTooManyRecipients:
		return 550, smtp.EnhancedCode{5, 5, 3} // too many recipients
	case pec.CodeSenderMismatch:
		return 550, smtp.EnhancedCode{5, 7, 1} // sender not authorized
	case pec.CodeBccHeader, pec.CodeHiddenBcc, pec.CodeRecipientMismatch:
		return 550, smtp.EnhancedCode{5, 7, 1} // refused by policy: no hidden recipients
	case pec.CodeNoRecipients:
		return 554, smtp.EnhancedCode{5, 5, 1}
	default:
		return 550, smtp.EnhancedCode{5, 6, 0} // malformed message (RFC 5322)
	}
}

// InternalReply is the answer to any internal failure: temporary, so the
// client retries and nothing is lost, and without internal detail (the
// operator's log has it). A deadline gets 451 4.4.5 as maddy does.
func InternalReply(err error) *smtp.SMTPError {
	if errors.Is(err, ErrInFlight) {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "the same message is still being processed; please retry in a moment"}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 5}, Message: "temporary failure (timeout), please retry later"}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure, please retry later"}
}

// oneLine makes s one ASCII line for a reply; "§" in the rule citations
// becomes "section".
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "§", "section ")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 {
			return ' '
		}
		return r
	}, s)
}
