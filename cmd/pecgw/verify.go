package main

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"strings"

	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// maxVerifySize bounds the message read by pecgw verify.
const maxVerifySize = 200 << 20

// Labels of the message kinds by their daticert tipo (RFC 6109 §3; DM 2
// novembre 2005 art. 6).
var kindLabel = map[string]string{
	"posta-certificata":         "busta di trasporto (transport envelope)",
	"accettazione":              "ricevuta di accettazione (acceptance receipt)",
	"non-accettazione":          "avviso di non accettazione (non-acceptance notice)",
	"presa-in-carico":           "ricevuta di presa in carico (take-charge receipt)",
	"avvenuta-consegna":         "ricevuta di avvenuta consegna (delivery receipt)",
	"errore-consegna":           "avviso di mancata consegna (non-delivery notice)",
	"preavviso-errore-consegna": "avviso di mancata consegna per superamento tempi massimi (delivery timeout notice)",
	"rilevazione-virus":         "avviso di rilevazione virus (virus detection notice)",
}

// cmdVerify checks a signed PEC message: the S/MIME signature (and the
// chain, with --ca), that X-Trasporto / X-Ricevuta agree with
// daticert.xml, that the unsigned outer Subject, From, To, Cc and Date
// agree with what is signed (verifyheader.go: a warning, or with --strict
// a failure), and prints what the message certifies. Exit status 0 only
// when everything checked is valid.
func cmdVerify(args []string, stdout, _ io.Writer) error {
	fs := quietFlagSet("verify")
	caFile := fs.String("ca", "", "PEM file of trusted root certificates; without it only integrity is checked")
	logDir := fs.String("log", "", "the provider's log folder: check that it still holds the record the receipt or notice names")
	strict := fs.Bool("strict", false, "an outer header that differs from what is signed makes the message not valid")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want one message file: pecgw verify FILE.eml [--ca CA.pem] [--log DIR] [--strict]", errUsage)
	}
	file := pos[0]
	roots, err := loadRoots(*caFile)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	msg, err := io.ReadAll(io.LimitReader(f, maxVerifySize+1))
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if len(msg) > maxVerifySize {
		return fmt.Errorf("%s: larger than %d MiB", file, maxVerifySize>>20)
	}

	w := &report{w: stdout}
	w.line("file", file)
	ok := true

	hdr, herr := mail.ReadMessage(bytes.NewReader(msg))
	headerKind := ""
	if herr == nil {
		headerKind = headerTipo(hdr.Header)
	}

	// Integrity first, then (with --ca) trust, so the report can say
	// which of the two failed.
	res, verr := signer.Verify(msg, nil)
	var chainErr error
	if verr == nil && roots != nil {
		var chained *signer.Result
		if chained, chainErr = signer.Verify(msg, roots); chainErr == nil {
			res = chained
		}
	}
	var dc pec.DatiCert
	var dcErr error
	if res != nil {
		var xml []byte
		if xml, dcErr = pec.FindDatiCert(res.Content); dcErr == nil {
			dc, dcErr = pec.ParseDatiCert(xml)
		}
	} else {
		dcErr = errors.New("not read: the signature could not be checked")
	}

	anomaly := headerKind == "errore"
	switch {
	case anomaly:
		// RFC 6109 §3.2.2: the anomaly envelope carries only the received
		// message, no daticert.xml.
		w.line("type", "busta di anomalia (anomaly envelope) [X-Trasporto: errore]")
		dcErr = nil
	case dcErr != nil:
		w.line("type", "unknown: "+dcErr.Error())
		ok = false
	case headerKind != "" && headerKind != dc.Tipo:
		w.line("type", fmt.Sprintf("MISMATCH: the header says %q, daticert.xml says %q", headerKind, dc.Tipo))
		ok = false
	case headerKind == "":
		w.line("type", fmt.Sprintf("%s, but the message has no X-Trasporto or X-Ricevuta header", label(dc.Tipo)))
		ok = false
	default:
		w.line("type", label(dc.Tipo))
	}
	if dcErr == nil && !anomaly {
		if dc.Errore != pec.ErroreNessuno {
			w.line("error", dc.Errore+optional(" - ", dc.ErroreEsteso))
		}
		w.line("identifier", dc.Identificativo)
		if dc.MsgID != "" {
			w.line("client msgid", dc.MsgID)
		}
		w.line("sender", dc.Mittente)
		var rs []string
		for _, r := range dc.Destinatari {
			rs = append(rs, fmt.Sprintf("%s (%s)", r.Address, r.Tipo()))
		}
		w.line("recipients", indent(rs, strings.Repeat(" ", 14)))
		if dc.Consegna != "" {
			w.line("delivered to", dc.Consegna)
		}
		w.line("subject", dc.Oggetto)
		w.line("time", fmt.Sprintf("%s %s (%s)", dc.Day, dc.Clock, dc.ZoneText))
		w.line("provider", dc.Gestore)
	}
	if res != nil {
		w.line("signer", signerName(res.Signer))
		if !res.SigningTime.IsZero() {
			w.line("signed at", res.SigningTime.In(pec.Rome()).Format("02/01/2006 15:04:05 (-0700)"))
		}
		alg := res.Digest
		if res.Legacy {
			alg += ", legacy application/x-pkcs7-signature"
		}
		w.line("algorithm", alg)
	}
	if verr != nil {
		w.line("signature", "INVALID: "+verr.Error())
		ok = false
	} else {
		w.line("signature", "signature valid")
	}
	switch {
	case roots == nil:
		w.line("chain", "not checked (give --ca CA.pem to check it)")
	case verr != nil:
		w.line("chain", "not checked: the signature is invalid")
		ok = false
	case chainErr != nil:
		w.line("chain", "INVALID: "+chainErr.Error())
		ok = false
	case res.ChainVerified:
		w.line("chain", "valid (trusted by "+*caFile+")")
	default:
		w.line("chain", "INVALID: not verified")
		ok = false
	}
	if res != nil {
		for _, warn := range signer.CheckProfile(res.Signer, domainOf(res.Signer)) {
			w.line("profile", "warning: "+warn)
		}
	}
	// What a mail client shows is the outer header, which nobody signs.
	switch {
	case anomaly:
	case herr != nil:
		w.line("header", "not checked: "+herr.Error())
		ok = ok && !*strict
	case verr != nil || dcErr != nil:
		w.line("header", "not checked: nothing signed to compare it with")
	default:
		diffs := outerHeaderDiffs(hdr.Header, dc, res.Signer, res.Content)
		word := "WARNING"
		if *strict {
			word = "MISMATCH"
		}
		for _, d := range diffs {
			w.line("header", word+": "+d)
		}
		if len(diffs) == 0 {
			w.line("header", "Subject, From, To, Cc and Date agree with what is signed")
		} else if *strict {
			ok = false
		} else {
			w.line("header", "the outer header is not signed: a mail client shows it as it is (--strict makes this fail)")
		}
	}
	if *logDir != "" {
		what, good := checkLogPosition(*logDir, res, verr, dc, dcErr)
		w.line("log", what)
		ok = ok && good
	}
	if !ok {
		w.line("result", "NOT VALID")
		return errSilent
	}
	w.line("result", "valid")
	return nil
}

// checkLogPosition checks that the log in dir still holds the record
// whose position the receipt or notice carries inside its signed part
// (pec.LogPositionField, docs/formats.md): read from the content the
// signature covers, never from an unsigned header. The record must be
// there, with the hash the receipt says, and be the receipt's: the same
// PEC identifier (daticert identificativo) and the matching type.
func checkLogPosition(dir string, res *signer.Result, verr error, dc pec.DatiCert, dcErr error) (string, bool) {
	if verr != nil || res == nil {
		return "not checked: the signature is invalid, so the log position it would carry is not known", false
	}
	if dcErr != nil {
		return "not checked: " + dcErr.Error(), false
	}
	var want logstore.Event
	noun := "receipt"
	switch {
	case dc.Tipo == pec.TipoAccettazione:
		want = logstore.EventAccettazione
	case dc.Tipo == pec.TipoNonAccettazione && dc.Errore == pec.ErroreVirus:
		want, noun = logstore.EventNonAccettazioneVirus, "notice"
	case dc.Tipo == pec.TipoNonAccettazione:
		want, noun = logstore.EventNonAccettazione, "notice"
	default:
		return fmt.Sprintf("not checked: a %s carries no log position (only acceptance receipts and non-acceptance notices do)", dc.Tipo), false
	}
	seq, hash, found, err := pec.ReadLogPosition(res.Content)
	switch {
	case err != nil:
		return "INVALID: " + err.Error(), false
	case !found:
		return fmt.Sprintf("the %s carries no log position (no %s in its signed part): made by an older pecgw, or not by pecgw", noun, pec.LogPositionField), false
	}
	line, rec, err := logstore.LookupRecord(dir, seq)
	var none *logstore.NoRecordError
	switch {
	case errors.As(err, &none):
		return fmt.Sprintf("MISSING: the %s names record seq %d (hash %s); %v", noun, seq, hash, err), false
	case err != nil && line != nil:
		// A line stands where the record belongs and is no record: its
		// hash cannot be the one signed.
		return fmt.Sprintf("ALTERED: record seq %d has hash %s, the %s says %s: the record was changed or the log rewritten (%v)", seq, logstore.Hash(line), noun, hash, err), false
	case err != nil:
		return "not checked: " + err.Error(), false
	}
	if got := logstore.Hash(line); got != hash {
		return fmt.Sprintf("ALTERED: record seq %d has hash %s, the %s says %s: the record was changed or the log rewritten", seq, got, noun, hash), false
	}
	if rec.Type != want || rec.PECID != dc.Identificativo {
		return fmt.Sprintf("MISMATCH: record seq %d is a %s of %s, the %s a %s of %s: the position names another record", seq, rec.Type, rec.PECID, noun, want, dc.Identificativo), false
	}
	return fmt.Sprintf("record seq %d (%s of %s) is in the log, its hash as the %s says", seq, rec.Type, rec.PECID, noun), true
}

// headerTipo is the kind the header declares: X-Trasporto for envelopes,
// X-Ricevuta for receipts and notices (RFC 6109 App. A).
func headerTipo(h mail.Header) string {
	if v := strings.TrimSpace(h.Get("X-Trasporto")); v != "" {
		if strings.EqualFold(v, "posta-certificata") {
			return "posta-certificata"
		}
		return "errore" // busta di anomalia: carries no daticert.xml
	}
	return strings.ToLower(strings.TrimSpace(h.Get("X-Ricevuta")))
}

func label(tipo string) string {
	if l, ok := kindLabel[tipo]; ok {
		return l + " [" + tipo + "]"
	}
	return tipo
}

func optional(sep, s string) string {
	if s == "" {
		return ""
	}
	return sep + s
}

func signerName(c *x509.Certificate) string {
	if c == nil {
		return "unknown"
	}
	s := c.Subject.String()
	if len(c.EmailAddresses) > 0 {
		s += " <" + strings.Join(c.EmailAddresses, ", ") + ">"
	}
	return s
}

// domainOf is the domain of the certificate's posta-certificata@ address,
// to check the RFC 6109 §5.5 profile against.
func domainOf(c *x509.Certificate) string {
	for _, e := range c.EmailAddresses {
		if i := strings.LastIndexByte(e, '@'); i >= 0 {
			return e[i+1:]
		}
	}
	return ""
}

type report struct{ w io.Writer }

func (r *report) line(key, value string) {
	fmt.Fprintf(r.w, "%-13s %s\n", key+":", value)
}

// loadRoots reads the --ca file: nil when none is given.
func loadRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pemData, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading --ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate found", file)
	}
	return roots, nil
}
