package pec_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/pecgw/pecgw/pec"
)

// indexLDIF is a realistic extract of the providers' index (RFC 6109 §5.3,
// §5.6): two providers under o=postacert, a folded line, a base64 value,
// comments, CRLF and LF line ends. Certificates are shortened.
var indexLDIF = strings.Join([]string{
	"version: 1",
	"",
	"# Indice dei gestori di posta elettronica certificata",
	"dn: o=postacert",
	"objectClass: top",
	"objectClass: organization",
	"objectClass: LDIFLocationURLObject",
	"o: postacert",
	"LDIFLocationURL: https://indice.example.it/postacert.ldif.p7m",
	"",
	"dn: providerName=Esempio PEC S.p.A.,o=postacert",
	"objectClass: top",
	"objectClass: provider",
	"providerName: Esempio PEC S.p.A.",
	"providerCertificateHash: 3f1c0a6e9b2d4c8f7a1e5d3b9c0f2a4e6d8b1c3a",
	"providerCertificate;binary:: MIIBszCCAVmgAwIBAgIU",
	" Zm9vYmFyYmF6",
	"mailReceipt: posta-certificata@pec.example.it",
	"managedDomains: pec.example.it",
	"managedDomains: PEC.Comune.Example.IT",
	"# a folded value:",
	"managedDomains: legal",
	" mail.example.it",
	"",
	"dn: providerName=Altro Gestore,o=postacert",
	"objectclass: provider",
	"providername: Altro Gestore",
	"mailreceipt: ricevute@pec.altro.it",
	"ManagedDomains:: Y2l0dMOgLml0",
	"managedDomains;x-note: pec.altro.it.",
	"1.3.6.1.4.1.16572.2.2.5: pec.oid.example.it",
	"managedDomains: pec.example.it",
	"description: managedDomains: not.a.value",
	"",
}, "\n")

// mixedEnds gives every other line a CRLF end.
func mixedEnds(s string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		if i%2 == 0 && i < len(lines)-1 {
			lines[i] += "\r"
		}
	}
	return strings.Join(lines, "\n")
}

func TestParseLDIF(t *testing.T) {
	want := []string{
		"pec.example.it",
		"pec.comune.example.it",
		"legalmail.example.it",
		"xn--citt-3na.it",
		"pec.altro.it",
		"pec.oid.example.it",
	}
	for name, data := range map[string]string{
		"LF":    indexLDIF,
		"CRLF":  strings.ReplaceAll(indexLDIF, "\n", "\r\n"),
		"mixed": mixedEnds(indexLDIF),
	} {
		got, err := pec.ParseLDIF([]byte(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
	}
}

func TestParseLDIFErrors(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"no colon", "dn: o=postacert\nmanagedDomains pec.it\n", "ldif line 2: "},
		{"bad base64", "dn: o=postacert\r\nobjectClass: top\r\nmanagedDomains:: !!!\r\n", "ldif line 3: "},
		{"bad domain", "dn: o=postacert\nmanagedDomains: pec.example.it\nmanagedDomains: not a domain\n", "ldif line 3: "},
		{"label with underscore", "dn: o=postacert\nmanagedDomains: pec_1.it\n", "ldif line 2: "},
		{"empty domain", "dn: o=postacert\nmanagedDomains:\n", "ldif line 2: "},
		{"domain from url", "dn: o=postacert\nmanagedDomains:< file:///etc/passwd\n", "ldif line 2: "},
		{"continuation first", " dn: o=postacert\n", "ldif line 1: "},
		{"continuation after blank", "dn: o=postacert\no: postacert\n\n x\n", "ldif line 4: "},
		{"record without dn", "dn: o=postacert\n\nmanagedDomains: pec.it\n", "ldif line 3: "},
		{"bad attribute name", "dn: o=postacert\nmanaged_Domains: pec.it\n", "ldif line 2: "},
		{"CR in a value", "dn: o=postacert\nmanagedDomains: pec\r.it\n", "ldif line 2: "},
		{"invalid UTF-8 domain", "dn: o=postacert\nmanagedDomains: citt\xe0.it\n", "ldif line 2: "},
		{"bad version", "version: 2\n", "ldif line 1: "},
		{"folded error line", "# c\ndn: o=postacert\nmanagedDomains: pec\n .ex ample.it\n", "ldif line 3: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pec.ParseLDIF([]byte(tt.data))
			if err == nil {
				t.Fatalf("no error, domains %q", got)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error %q, want it to start with %q", err, tt.want)
			}
		})
	}
}

func TestParseLDIFRawUTF8(t *testing.T) {
	got, err := pec.ParseLDIF([]byte("dn: o=postacert\nproviderName: Società PEC\nmanagedDomains: città.it\n"))
	if err != nil || !reflect.DeepEqual(got, []string{"xn--citt-3na.it"}) {
		t.Errorf("got %q, %v; want [xn--citt-3na.it]", got, err)
	}
}

func TestDomainDirectory(t *testing.T) {
	dir := pec.NewDomainDirectory([]string{"pec.example.it"}, []string{"PEC.Altro.IT", "xn--citt-3na.it", "legalmail.example.it."})
	tests := []struct {
		domain string
		want   bool
	}{
		{"pec.example.it", true}, // own domain
		{"PEC.EXAMPLE.IT", true},
		{"pec.example.it.", true},
		{"pec.altro.it", true},
		{"Pec.Altro.It", true},
		{"legalmail.example.it", true},
		{"città.it", true}, // IDNA: U-label matches the listed A-label
		{"CITTÀ.it", true},
		{"xn--citt-3na.it", true},
		{"example.it", false},
		{"sub.pec.example.it", false},
		{"altro.it", false},
		{"", false},
		{"[192.0.2.1]", false},
	}
	for _, tt := range tests {
		if got := dir.IsPEC(tt.domain); got != tt.want {
			t.Errorf("IsPEC(%q) = %v, want %v", tt.domain, got, tt.want)
		}
	}
	var none *pec.DomainDirectory
	if none.IsPEC("pec.example.it") {
		t.Error("nil directory: IsPEC true")
	}
}

func TestOwnDomainsAlwaysPEC(t *testing.T) {
	dir := pec.NewDomainDirectory([]string{"PEC.Example.it", "città.it"}, nil)
	for _, d := range []string{"pec.example.it", "xn--citt-3na.it", "città.it"} {
		if !dir.IsPEC(d) {
			t.Errorf("own domain %q is not PEC", d)
		}
	}
}

func TestClassify(t *testing.T) {
	domains, err := pec.ParseLDIF([]byte(indexLDIF))
	if err != nil {
		t.Fatal(err)
	}
	dir := pec.NewDomainDirectory([]string{"pec.mio.it"}, domains)
	got := pec.Classify(dir, []string{
		"luigi@pec.altro.it",
		"Anna@Example.COM",
		"ufficio@PEC.MIO.IT",
		`"strano@nome"@pec.example.it`,
		"sindaco@città.it",
		"nessun-dominio",
	})
	want := []pec.Recipient{
		{Address: "luigi@pec.altro.it", Certified: true},
		{Address: "Anna@Example.COM"},
		{Address: "ufficio@PEC.MIO.IT", Certified: true},
		{Address: `"strano@nome"@pec.example.it`, Certified: true},
		{Address: "sindaco@città.it", Certified: true},
		{Address: "nessun-dominio"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Classify =\n%+v\nwant\n%+v", got, want)
	}
	var tipi, labels []string
	for _, r := range got[:2] {
		tipi = append(tipi, r.Tipo())
		labels = append(labels, r.Label())
	}
	if want := []string{"certificato", "esterno"}; !reflect.DeepEqual(tipi, want) {
		t.Errorf("Tipo = %q, want %q", tipi, want)
	}
	if want := []string{"posta certificata", "posta ordinaria"}; !reflect.DeepEqual(labels, want) {
		t.Errorf("Label = %q, want %q", labels, want)
	}
	if got := pec.Classify(nil, []string{"a@pec.altro.it"}); got[0].Certified {
		t.Error("nil Directory certified an address")
	}
}
