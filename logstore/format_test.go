package logstore

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func sampleRecord() *Record {
	return &Record{
		Seq: 7, Prev: GenesisPrev, Time: "2026-11-23T10:00:00+01:00", Type: EventAccettazione,
		PECID: "20261123100000.abc@pec.example.it", MsgID: "<m1@client>", Sender: "a@pec.example.it",
		Recipients: []Recipient{{Addr: "b@pec.altro.it", Tipo: "certificato"}, {Addr: "c@example.com", Tipo: "esterno"}},
		Subject:    "Fattura <n. 42> & \"altro\"\r\nBcc: x", Generated: &Generated{Envelope: "20261123100000.abc@pec.example.it", Receipt: "20261123100000.abc.accettazione@pec.example.it"},
		Provider: "Example PEC S.p.A.", User: "a@pec.example.it", ClientIP: "192.0.2.1", TLS: "TLS1.3", Size: 1234,
		SHA256: strings.Repeat("ab", 32),
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	r := sampleRecord()
	line, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
		t.Fatalf("not one line: %q", line)
	}
	if !bytes.HasPrefix(line, []byte(`{"seq":7,"prev":"0000`)) || !bytes.Contains(line, []byte(`"subject":"Fattura <n. 42> & \"altro\"\r\nBcc: x"`)) {
		t.Errorf("unexpected encoding: %s", line)
	}
	back, err := Decode(line)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Encode(back)
	if !bytes.Equal(again, line) {
		t.Errorf("round trip changed the line:\n%s\n%s", line, again)
	}
	if Hash(line) == Hash(again[:len(again)-2]) {
		t.Error("hash does not depend on the content")
	}
}

func TestDecodeRefuses(t *testing.T) {
	good, _ := Encode(sampleRecord())
	for name, line := range map[string]string{
		"empty":         "",
		"not json":      "hello\n",
		"unknown field": strings.Replace(string(good), `{"seq":7,`, `{"seq":7,"x":1,`, 1),
		"reordered":     strings.Replace(string(good), `{"seq":7,"prev":"`+GenesisPrev+`",`, `{"prev":"`+GenesisPrev+`","seq":7,`, 1),
		"spaces":        strings.Replace(string(good), `"seq":7`, `"seq": 7`, 1),
		"empty field":   strings.Replace(string(good), `"type":"accettazione",`, `"type":"accettazione","user":"",`, 1),
		"bad type":      strings.Replace(string(good), `"accettazione"`, `"consegna"`, 1),
		"seq zero":      strings.Replace(string(good), `"seq":7`, `"seq":0`, 1),
		"bad prev":      strings.Replace(string(good), GenesisPrev, "xyz", 1),
		"bad time":      strings.Replace(string(good), "2026-11-23T10:00:00+01:00", "yesterday", 1),
		"two records":   strings.TrimSuffix(string(good), "\n") + string(good),
		"trailing":      strings.TrimSuffix(string(good), "\n") + " x\n",
	} {
		if _, err := Decode([]byte(line)); err == nil {
			t.Errorf("%s: Decode accepted %q", name, line)
		}
	}
}

func TestSegmentName(t *testing.T) {
	name := SegmentName(42, time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))
	if name != "00000000000000000042-20261123.log" {
		t.Errorf("SegmentName = %q", name)
	}
	first, day, ok := ParseSegmentName(name)
	if !ok || first != 42 || day != "20261123" {
		t.Errorf("ParseSegmentName = %d %q %v", first, day, ok)
	}
	for _, bad := range []string{"42-20261123.log", "00000000000000000000-20261123.log", "00000000000000000042-2026112x.log", "00000000000000000042-20261123.idx"} {
		if _, _, ok := ParseSegmentName(bad); ok {
			t.Errorf("ParseSegmentName accepted %q", bad)
		}
	}
}

func TestReadLines(t *testing.T) {
	in := "a\nbb\nccc"
	var got []string
	err := ReadLines(strings.NewReader(in), func(off int64, line []byte, complete bool) error {
		got = append(got, strings.TrimSpace(string(rune('0'+off)))+":"+string(line)+map[bool]string{true: "+", false: "-"}[complete])
		return nil
	})
	if err != nil || strings.Join(got, "|") != "0:a\n+|2:bb\n+|5:ccc-" {
		t.Errorf("ReadLines = %q, %v", got, err)
	}
	long := strings.Repeat("x", MaxLine+10) + "\n"
	n := 0
	_ = ReadLines(strings.NewReader(long), func(off int64, line []byte, complete bool) error {
		n++
		if complete || len(line) != MaxLine {
			t.Errorf("over-long line: complete=%v len=%d", complete, len(line))
		}
		return nil
	})
	if n != 1 {
		t.Errorf("over-long line reported %d times", n)
	}
}

// FuzzDecode: the record decoder never panics, and what it accepts
// re-encodes to the same line.
func FuzzDecode(f *testing.F) {
	good, _ := Encode(sampleRecord())
	f.Add(good)
	f.Add([]byte(`{"seq":1,"prev":"` + GenesisPrev + `","time":"2026-01-01T00:00:00+01:00","type":"checkpoint","head":"` + GenesisPrev + `","upto":1,"signed":"x","sig":"AA=="}`))
	f.Add([]byte("{}"))
	f.Add([]byte(`{"seq":1e3}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := Decode(line)
		if err != nil {
			return
		}
		again, err := Encode(r)
		if err != nil {
			t.Fatalf("accepted record does not encode: %v", err)
		}
		if !bytes.Equal(bytes.TrimSuffix(again, []byte("\n")), bytes.TrimSuffix(line, []byte("\n"))) {
			t.Fatalf("accepted %q, re-encodes to %q", line, again)
		}
	})
}

// TestInvalidUTF8StaysCanonical: a client can put any octet in a subject
// or an address; the line written for it must decode (the fuzzer of the
// SMTP session found a record with \xec in it that Decode refused).
func TestInvalidUTF8StaysCanonical(t *testing.T) {
	r := sampleRecord()
	r.Subject = "caf\xe9 \xec\x00"
	r.Recipients = []Recipient{{Addr: "\xffx@y", Tipo: "esterno"}}
	r.Violations = []string{"\xc3"}
	line, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(line)
	if err != nil {
		t.Fatalf("Decode refuses what Encode wrote: %v\n%s", err, line)
	}
	if back.Subject != "caf\uFFFD \uFFFD\x00" || back.Recipients[0].Addr != "\uFFFDx@y" {
		t.Errorf("decoded %q %q", back.Subject, back.Recipients[0].Addr)
	}
	if r.Subject != "caf\xe9 \xec\x00" {
		t.Error("Encode changed the caller's record")
	}
}
