package pec

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-message"
)

// maxDatiCert bounds the daticert.xml read from an untrusted message.
const maxDatiCert = 1 << 20

// ParseDatiCert reads daticert.xml (RFC 6109 §4.4). It accepts what real
// providers write, including their indentation, and checks the values
// the DTD fixes (tipo, errore, destinatari tipo).
func ParseDatiCert(data []byte) (DatiCert, error) {
	var x struct {
		XMLName     xml.Name `xml:"postacert"`
		Tipo        string   `xml:"tipo,attr"`
		Errore      string   `xml:"errore,attr"`
		Mittente    string   `xml:"intestazione>mittente"`
		Destinatari []struct {
			Tipo string `xml:"tipo,attr"`
			Addr string `xml:",chardata"`
		} `xml:"intestazione>destinatari"`
		Risposte string `xml:"intestazione>risposte"`
		Oggetto  string `xml:"intestazione>oggetto"`
		Gestore  string `xml:"dati>gestore-emittente"`
		Data     struct {
			Zona   string `xml:"zona,attr"`
			Giorno string `xml:"giorno"`
			Ora    string `xml:"ora"`
		} `xml:"dati>data"`
		Identificativo string `xml:"dati>identificativo"`
		MsgID          string `xml:"dati>msgid"`
		Ricevuta       struct {
			Tipo string `xml:"tipo,attr"`
		} `xml:"dati>ricevuta"`
		Consegna     string   `xml:"dati>consegna"`
		Ricezione    []string `xml:"dati>ricezione"`
		ErroreEsteso string   `xml:"dati>errore-esteso"`
	}
	if err := xml.Unmarshal(data, &x); err != nil {
		return DatiCert{}, fmt.Errorf("daticert.xml: %w", err)
	}
	switch x.Tipo {
	case TipoAccettazione, TipoNonAccettazione, "presa-in-carico", "avvenuta-consegna",
		TipoPostaCertificata, "errore-consegna", "preavviso-errore-consegna", "rilevazione-virus":
	default:
		return DatiCert{}, fmt.Errorf("daticert.xml: unknown postacert tipo %q", x.Tipo)
	}
	switch x.Errore {
	case "":
		x.Errore = ErroreNessuno // the DTD default
	case ErroreNessuno, "no-dest", "no-dominio", ErroreVirus, ErroreAltro:
	default:
		return DatiCert{}, fmt.Errorf("daticert.xml: unknown postacert errore %q", x.Errore)
	}
	d := DatiCert{
		Tipo: x.Tipo, Errore: x.Errore,
		Mittente: strings.TrimSpace(x.Mittente), Risposte: strings.TrimSpace(x.Risposte), Oggetto: x.Oggetto,
		Gestore: strings.TrimSpace(x.Gestore), Identificativo: strings.TrimSpace(x.Identificativo),
		MsgID: strings.TrimSpace(x.MsgID), Ricevuta: x.Ricevuta.Tipo, Consegna: strings.TrimSpace(x.Consegna),
		Ricezione: x.Ricezione, ErroreEsteso: strings.TrimSpace(x.ErroreEsteso),
	}
	for _, r := range x.Destinatari {
		switch r.Tipo {
		case "certificato", "":
			d.Destinatari = append(d.Destinatari, Recipient{Address: strings.TrimSpace(r.Addr), Certified: true})
		case "esterno":
			d.Destinatari = append(d.Destinatari, Recipient{Address: strings.TrimSpace(r.Addr)})
		default:
			return DatiCert{}, fmt.Errorf("daticert.xml: unknown destinatari tipo %q", r.Tipo)
		}
	}
	if len(d.Destinatari) == 0 {
		return DatiCert{}, errors.New("daticert.xml: no destinatari")
	}
	if d.Identificativo == "" {
		return DatiCert{}, errors.New("daticert.xml: no identificativo")
	}
	d.Day, d.Clock, d.ZoneText = strings.TrimSpace(x.Data.Giorno), strings.TrimSpace(x.Data.Ora), strings.TrimSpace(x.Data.Zona)
	return d, nil
}

// FindDatiCert returns the daticert.xml carried by a signed PEC entity
// (the first part of multipart/signed: a multipart/mixed whose parts are
// the text, daticert.xml and possibly postacert.eml; RFC 6109 §4.3). It
// looks for application/xml named daticert.xml, as parsers do.
func FindDatiCert(entity []byte) ([]byte, error) {
	e, err := message.Read(bytes.NewReader(entity))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return nil, fmt.Errorf("reading the signed part: %w", err)
	}
	mr := e.MultipartReader()
	if mr == nil {
		return nil, errors.New("the signed part is not multipart: no daticert.xml")
	}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil, errors.New("no daticert.xml part")
		}
		if err != nil {
			return nil, fmt.Errorf("reading the parts of the signed entity: %w", err)
		}
		mt, params, _ := p.Header.ContentType()
		_, dparams, _ := p.Header.ContentDisposition()
		if (mt == "application/xml" || mt == "text/xml") && (params["name"] == "daticert.xml" || dparams["filename"] == "daticert.xml") {
			b, err := io.ReadAll(io.LimitReader(p.Body, maxDatiCert+1))
			if err != nil {
				return nil, fmt.Errorf("reading daticert.xml: %w", err)
			}
			if len(b) > maxDatiCert {
				return nil, errors.New("daticert.xml larger than 1 MiB")
			}
			return b, nil
		}
	}
}
