package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/pecgw/pecgw/pec"
)

// What the access point, as a message submission agent, fixes in a
// submission before the formal checks (RFC 6409 §8), and nothing else:
// every rule of RFC 6109 §3.1.1 is then applied to the fixed message,
// which is what postacert.eml carries (docs/formats.md). The dedup key,
// the size the log records and the hash of a refused message stay those
// of the message as the client sent it, so a retry of it is recognised
// whatever was fixed.

// fixed is the message of s as it is inspected and certified: bare LF
// line ends made CRLF for the clients a.BareLF lists, and a Date added
// when there is none (RFC 6409 §8.2), with the transaction's instant.
func (a *Acceptor) fixed(s *Submission, at pec.Instant) []byte {
	raw := s.Raw
	if a.BareLF.Applies(s.User, s.ClientIP) {
		raw = NormalizeBareLF(raw)
	}
	raw, _ = pec.AddMissingDate(raw, at)
	return raw
}

// BareLFPolicy lists the clients whose bare LF line ends are normalised
// (submission.bare_lf = "normalize"): authenticated users, and client
// networks. Everyone else's are refused, as RFC 5321 §2.3.8 requires of
// a server ("MUST NOT recognize" a bare LF as a line end): that refusal
// is also what keeps SMTP smuggling out, since a bare LF is where two
// servers can disagree on where a message ends. The way out is Postfix's
// (smtpd_forbid_bare_newline = normalize, limited by
// smtpd_forbid_bare_newline_exclusions), for a provider's legacy
// applications (curl -T without --crlf, Python's
// sendmail(msg.as_bytes()), scripts): see NormalizeBareLF.
type BareLFPolicy struct {
	Users    []string       // addresses, compared case-insensitively
	Networks []netip.Prefix // client networks (a single address is a /32 or /128)
}

// ParseBareLFClients reads submission.bare_lf_clients: each entry an
// address (a user) or an IP network in CIDR notation (or an IP address).
func ParseBareLFClients(list []string) (BareLFPolicy, error) {
	var p BareLFPolicy
	for i, e := range list {
		e = strings.TrimSpace(e)
		switch {
		case strings.Contains(e, "@"):
			if err := CheckAddress(e); err != nil {
				return BareLFPolicy{}, fmt.Errorf("item %d %q: %w", i+1, e, err)
			}
			p.Users = append(p.Users, strings.ToLower(e))
		case strings.Contains(e, "/"):
			n, err := netip.ParsePrefix(e)
			if err != nil {
				return BareLFPolicy{}, fmt.Errorf("item %d %q: neither an address nor a network: %w", i+1, e, err)
			}
			p.Networks = append(p.Networks, n.Masked())
		default:
			a, err := netip.ParseAddr(e)
			if err != nil {
				return BareLFPolicy{}, fmt.Errorf("item %d %q: neither an address (user@domain) nor an IP network (CIDR)", i+1, e)
			}
			p.Networks = append(p.Networks, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		}
	}
	return p, nil
}

// Applies says whether the bare LF line ends of user, connected from ip,
// are normalised.
func (p BareLFPolicy) Applies(user, ip string) bool {
	for _, u := range p.Users {
		if strings.EqualFold(u, user) {
			return true
		}
	}
	if len(p.Networks) == 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, n := range p.Networks {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// NormalizeBareLF makes every bare LF line end of msg (the message as
// go-smtp's DATA reader returned it) a CRLF, as if the client had sent
// CRLF: Postfix's smtpd_forbid_bare_newline = normalize.
//
// What go-smtp v0.25.1 has done already: DATA ends only at
// <CRLF>.<CRLF> (RFC 5321 §4.1.1.4); LF.LF, CRLF.LF and LF.CRLF are
// content, so a smuggled second transaction stays inside this message
// (and, made CRLF here, is only lines of its body, dot-stuffed again by
// whoever relays it). It removes the transparency dot (RFC 5321 §4.5.2)
// of lines that follow a CRLF only: a line that follows a bare LF still
// has it. So here, a line that follows a bare LF and starts with a dot
// loses that dot, when more follows it on the line, as RFC 5321 §4.5.2
// has the server do: Python's smtplib doubles it (it dot-stuffs after
// every LF), while curl -T without --crlf does not, and loses a leading
// dot of its own (use --crlf). A line of one dot stays one dot: it ends
// DATA only after a CRLF and alone. A bare CR is left alone: it is still
// refused (bare-cr).
func NormalizeBareLF(msg []byte) []byte {
	if !hasBareLF(msg) {
		return msg
	}
	out := make([]byte, 0, len(msg)+len(msg)/32)
	afterBare := false // the line starting at i follows a bare LF
	for i := 0; i < len(msg); {
		j := bytes.IndexByte(msg[i:], '\n')
		end := len(msg)
		if j >= 0 {
			end = i + j + 1
		}
		line := msg[i:end]
		if afterBare && len(line) > 1 && line[0] == '.' && !isLoneDot(line) {
			line = line[1:]
		}
		switch {
		case j < 0:
			out = append(out, line...)
			afterBare = false
		case len(line) >= 2 && line[len(line)-2] == '\r':
			out = append(out, line...)
			afterBare = false
		default:
			out = append(append(out, line[:len(line)-1]...), '\r', '\n')
			afterBare = true
		}
		i = end
	}
	return out
}

// isLoneDot: the line is "." and its line end.
func isLoneDot(line []byte) bool {
	s := string(line)
	return s == "." || s == ".\n" || s == ".\r\n"
}

func hasBareLF(msg []byte) bool {
	for i := 0; ; i++ {
		j := bytes.IndexByte(msg[i:], '\n')
		if j < 0 {
			return false
		}
		if i += j; i == 0 || msg[i-1] != '\r' {
			return true
		}
	}
}
