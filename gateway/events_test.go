package gateway

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestOperationalEvents: each submission leaves one entry of the fixed
// vocabulary in the operational log, and no entry holds a password, even
// one typed in the user name field.
func TestOperationalEvents(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel) // AUTH attempts are debug entries
	ts := newTestServerWith(t, func(b *Backend) { b.Log = zap.New(core) })

	c := ts.dial(t, true)
	if err := c.Auth(sasl.NewPlainClient("", "s3cret-typed-as-user", "s3cret")); err == nil {
		t.Fatal("AUTH with the password as user name succeeded")
	}
	c = ts.dial(t, true)
	if err := c.Auth(sasl.NewPlainClient("", "mario@pec.example.it", "s3cret")); err != nil {
		t.Fatal(err)
	}
	if err := sendMail(c, "mario@pec.example.it", []string{"anna@pec.altro.it", "luca@example.com"}, goodMessage); err != nil {
		t.Fatal(err)
	}
	bcc := strings.Replace(goodMessage, "Subject: prova\r\n", "Subject: prova\r\nBcc: x@example.com\r\n", 1)
	if err := sendMail(c, "mario@pec.example.it", []string{"anna@pec.altro.it", "luca@example.com"}, bcc); err == nil {
		t.Fatal("Bcc accepted")
	}

	count := map[string]int{}
	for _, e := range logs.All() {
		fields := e.ContextMap()
		count[fmt.Sprint(fields["event"])]++
		if strings.Contains(fmt.Sprint(fields)+e.Message, "s3cret") {
			t.Errorf("a password in the operational log: %s %v", e.Message, fields)
		}
	}
	if count["smtp.auth"] != 2 || count["pec.accepted"] != 1 || count["pec.refused"] != 1 {
		t.Errorf("events %v", count)
	}
	refused := logs.FilterField(zap.String("event", "pec.refused")).All()
	if len(refused) == 1 && fmt.Sprint(refused[0].ContextMap()["violations"]) != "[bcc-header]" {
		t.Errorf("refused entry %v", refused[0].ContextMap())
	}
}
