package pec_test

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message"

	"github.com/pecgw/pecgw/internal/testtool"
	"github.com/pecgw/pecgw/pec"
)

// mimeTree lists the entities of a message depth-first as
// "depth:media-type[:name]", not descending into message/rfc822.
func mimeTree(t *testing.T, msg []byte) []string {
	t.Helper()
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(e *message.Entity, depth int)
	walk = func(e *message.Entity, depth int) {
		mt, params, _ := e.Header.ContentType()
		// The protocol name is the one difference we choose: the samples
		// use the legacy x-pkcs7-signature, we the registered name.
		mt = strings.Replace(mt, "application/x-pkcs7-signature", "application/pkcs7-signature", 1)
		node := strings.Repeat(" ", depth) + mt
		if params["name"] != "" {
			node += ":" + params["name"]
		}
		out = append(out, node)
		if mr := e.MultipartReader(); mr != nil {
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				walk(p, depth+1)
			}
		}
	}
	walk(e, 0)
	return out
}

// xmlShape lists the elements and attribute names of a daticert.xml in
// document order, a run of destinatari counting once.
func xmlShape(t *testing.T, data []byte) []string {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(data))
	var out []string
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			s := se.Name.Local
			for _, a := range se.Attr {
				s += " @" + a.Name.Local
			}
			if len(out) > 0 && out[len(out)-1] == s && se.Name.Local == "destinatari" {
				continue // one or many recipients: same shape
			}
			out = append(out, s)
		}
	}
}

// TestStructureMatchesRealSamples compares the golden envelope and
// acceptance receipt with Aruba's real ones: the same MIME tree (signed >
// mixed > text, daticert.xml, [postacert.eml]; signature), the same
// daticert.xml elements and attributes in the same order, and the same
// PEC header fields.
func TestStructureMatchesRealSamples(t *testing.T) {
	dir := testtool.SharedSamples(t)
	for _, c := range []struct{ golden, sample string }{
		{"envelope", "oca_message1.eml"},
		{"acceptance", "oca_aruba_accettazione.eml"},
	} {
		t.Run(c.golden, func(t *testing.T) {
			ours, err := os.ReadFile(filepath.Join("testdata", "golden", c.golden+".eml"))
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := os.ReadFile(filepath.Join(dir, c.sample))
			if err != nil {
				t.Fatal(err)
			}
			a, b := mimeTree(t, ours), mimeTree(t, theirs)
			if strings.Join(a, "\n") != strings.Join(b, "\n") {
				t.Errorf("MIME tree differs from %s:\nours:\n%s\ntheirs:\n%s", c.sample, strings.Join(a, "\n"), strings.Join(b, "\n"))
			}
			ourXML, theirXML := daticertOf(t, ours), daticertOf(t, theirs)
			if x, y := xmlShape(t, ourXML), xmlShape(t, theirXML); strings.Join(x, "|") != strings.Join(y, "|") {
				t.Errorf("daticert.xml shape differs from %s:\nours:   %v\ntheirs: %v", c.sample, x, y)
			}
			// Both parse with the same reader, to the same kind.
			dOurs, err := pec.ParseDatiCert(ourXML)
			if err != nil {
				t.Fatal(err)
			}
			dTheirs, err := pec.ParseDatiCert(theirXML)
			if err != nil {
				t.Fatal(err)
			}
			if dOurs.Tipo != dTheirs.Tipo || dOurs.Errore != dTheirs.Errore {
				t.Errorf("tipo/errore %s/%s, sample %s/%s", dOurs.Tipo, dOurs.Errore, dTheirs.Tipo, dTheirs.Errore)
			}
			hOurs, _ := parse(t, ours)
			hTheirs, _ := parse(t, theirs)
			for _, f := range []string{"X-Trasporto", "X-Ricevuta", "X-Riferimento-Message-ID", "Message-ID", "Date", "From", "To", "Subject", "Reply-To", "X-TipoRicevuta"} {
				if (hOurs.Get(f) == "") != (hTheirs.Get(f) == "") {
					t.Errorf("field %s: ours %q, sample %q", f, hOurs.Get(f), hTheirs.Get(f))
				}
			}
		})
	}
}
