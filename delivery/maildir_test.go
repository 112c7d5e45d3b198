package delivery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pecgw/pecgw/internal/safeio"
)

var errInjected = errors.New("injected failure")

// failAt returns a safeio.Writer whose step fails for files whose path
// contains pathPart.
func failAt(step safeio.Step, pathPart string) safeio.Writer {
	return safeio.Writer{FailBefore: func(s safeio.Step, path string) error {
		if s == step && strings.Contains(path, pathPart) {
			return errInjected
		}
		return nil
	}}
}

// maildirFiles returns the content of the files in dir/sub by name.
func maildirFiles(t *testing.T, dir, sub string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, sub))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	files := make(map[string]string)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(b)
	}
	return files
}

// onlyFile returns the one file in dir/new, checking that tmp is empty.
func onlyFile(t *testing.T, dir string) (name, content string) {
	t.Helper()
	files := maildirFiles(t, dir, "new")
	if len(files) != 1 {
		t.Fatalf("%s/new holds %d files, want 1", dir, len(files))
	}
	if tmp := maildirFiles(t, dir, "tmp"); len(tmp) != 0 {
		t.Errorf("%s/tmp still holds %d files", dir, len(tmp))
	}
	for name, content = range files {
	}
	return name, content
}

var maildirName = regexp.MustCompile(`^[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\.[^/:]+$`)

func TestMaildirDeliver(t *testing.T) {
	root := filepath.Join(t.TempDir(), "box")
	m := receipt()
	if err := NewMaildir(root).Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	name, content := onlyFile(t, root)
	if !maildirName.MatchString(name) {
		t.Errorf("file name %q is not <seconds>.M<usec>P<pid>Q<n>.<host>", name)
	}
	want := "Return-Path: <posta-certificata@pec.example.it>\r\n" +
		"Delivered-To: alice@pec.example.it\r\n" +
		"Delivered-To: bob@pec.example.it\r\n" +
		"Delivered-To: carol@pec.example.it\r\n" + string(testData)
	if content != want {
		t.Errorf("file =\n%q\nwant\n%q", content, want)
	}
	if fi, err := os.Stat(filepath.Join(root, "cur")); err != nil || !fi.IsDir() {
		t.Errorf("cur/ missing: %v", err)
	}
	fi, err := os.Stat(filepath.Join(root, "new", name))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

func TestMaildirNullReversePath(t *testing.T) {
	root := t.TempDir()
	m := receipt()
	m.ReversePath = ""
	if err := NewMaildir(root).Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if _, content := onlyFile(t, root); !strings.HasPrefix(content, "Return-Path: <>\r\n") {
		t.Errorf("file begins %q", content[:40])
	}
}

func TestMaildirHostNameEscaped(t *testing.T) {
	n := newNamer()
	n.host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace("odd/host:name")
	if name := n.next(); !strings.HasSuffix(name, `.odd\057host\072name`) || strings.ContainsAny(name, "/:") {
		t.Errorf("name %q", name)
	}
}

// TestLocalConcurrent delivers from many goroutines into the outbound
// folder and one mailbox: every message gets its own file.
func TestLocalConcurrent(t *testing.T) {
	data := t.TempDir()
	l := NewLocal(data)
	const workers, each = 16, 10
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m := receipt()
				m.ForwardPaths = []string{"alice@pec.example.it"}
				m.Data = fmt.Appendf(nil, "Subject: %d-%d\r\n\r\n", w, i)
				errs <- l.Outbound().Deliver(context.Background(), m)
				errs <- l.Mailboxes().Deliver(context.Background(), m)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{filepath.Join(data, "outbound"), filepath.Join(data, "mailboxes", "alice@pec.example.it")} {
		files := maildirFiles(t, dir, "new")
		if len(files) != workers*each {
			t.Errorf("%s/new holds %d files, want %d", dir, len(files), workers*each)
		}
		seen := make(map[string]bool)
		for _, c := range files {
			seen[c] = true
		}
		if len(seen) != workers*each {
			t.Errorf("%s: %d distinct messages, want %d", dir, len(seen), workers*each)
		}
	}
}

func TestLocalOutbound(t *testing.T) {
	data := t.TempDir()
	m := testMessage()
	if err := NewLocal(data).Outbound().Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	_, content := onlyFile(t, filepath.Join(data, "outbound"))
	want := "Return-Path: <posta-certificata@pec.example.it>\r\nDelivered-To: bob@pec.other.it\r\nDelivered-To: carol@pec.other.it\r\n" + string(testData)
	if content != want {
		t.Errorf("outbound file = %q, want %q", content, want)
	}
	if entries, _ := os.ReadDir(filepath.Join(data, "mailboxes")); len(entries) != 0 {
		t.Errorf("outbound delivery wrote into mailboxes: %v", entries)
	}
}

func TestLocalMailboxes(t *testing.T) {
	data := t.TempDir()
	m := receipt()
	m.ForwardPaths = []string{"Alice@PEC.Example.IT", "bob@pec.example.it", "alice@pec.example.it"}
	if err := NewLocal(data).Mailboxes().Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(data, "mailboxes"))
	if err != nil {
		t.Fatal(err)
	}
	var boxes []string
	for _, e := range entries {
		boxes = append(boxes, e.Name())
	}
	if want := []string{"alice@pec.example.it", "bob@pec.example.it"}; !slices.Equal(boxes, want) {
		t.Fatalf("mailboxes = %q, want %q", boxes, want)
	}
	for _, box := range boxes {
		_, content := onlyFile(t, filepath.Join(data, "mailboxes", box))
		want := "Return-Path: <posta-certificata@pec.example.it>\r\nDelivered-To: " + box + "\r\n" + string(testData)
		if content != want {
			t.Errorf("%s: file = %q, want %q", box, content, want)
		}
	}
}

func TestLocalMailboxesRefuseHostileAddresses(t *testing.T) {
	for _, addr := range []string{
		"../../etc/passwd",
		"..",
		".hidden@pec.example.it",
		"a/b@pec.example.it",
		`a\b@pec.example.it`,
		"a\x00b@pec.example.it",
		"a..b@pec.example.it",
		"alice@pec..example.it",
		"a\tb@pec.example.it",
		"a\xffb@pec.example.it",
		strings.Repeat("a", 250) + "@pec.example.it",
	} {
		data := t.TempDir()
		m := receipt()
		// A good address first: nothing at all is written.
		m.ForwardPaths = []string{"alice@pec.example.it", addr}
		err := NewLocal(data).Mailboxes().Deliver(context.Background(), m)
		if err == nil {
			t.Errorf("address %q accepted", addr)
		}
		var pe *PartialError
		if errors.As(err, &pe) {
			t.Errorf("address %q: partial delivery %v", addr, pe)
		}
		if entries, _ := os.ReadDir(data); len(entries) != 0 {
			t.Errorf("address %q: the data folder holds %v", addr, entries)
		}
	}
}

// TestMaildirFailureAtEachStep: whichever durable step fails, Deliver
// returns an error naming it and new/ and tmp/ are left empty.
func TestMaildirFailureAtEachStep(t *testing.T) {
	for _, step := range []safeio.Step{safeio.StepCreate, safeio.StepWrite, safeio.StepSync, safeio.StepClose, safeio.StepLink, safeio.StepSyncDir} {
		t.Run(string(step), func(t *testing.T) {
			data := t.TempDir()
			l := NewLocal(data)
			l.w = failAt(step, "")
			err := l.Outbound().Deliver(context.Background(), testMessage())
			if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), string(step)) {
				t.Fatalf("err = %v, want the injected failure at %s", err, step)
			}
			dir := filepath.Join(data, "outbound")
			if files := maildirFiles(t, dir, "new"); len(files) != 0 {
				t.Errorf("new/ holds %d files after a failed %s", len(files), step)
			}
			if files := maildirFiles(t, dir, "tmp"); len(files) != 0 {
				t.Errorf("tmp/ holds %d files after a failed %s", len(files), step)
			}
		})
	}
}

func TestLocalMailboxesPartial(t *testing.T) {
	data := t.TempDir()
	l := NewLocal(data)
	l.w = failAt(safeio.StepSync, "bob@")
	m := receipt()
	err := l.Mailboxes().Deliver(context.Background(), m)
	var pe *PartialError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a *PartialError", err)
	}
	if want := []string{"alice@pec.example.it", "carol@pec.example.it"}; !slices.Equal(pe.Delivered, want) {
		t.Errorf("Delivered = %q, want %q", pe.Delivered, want)
	}
	if want := []string{"bob@pec.example.it"}; !slices.Equal(pe.Failed, want) {
		t.Errorf("Failed = %q, want %q", pe.Failed, want)
	}
	if !errors.Is(pe.Errs["bob@pec.example.it"], errInjected) || !errors.Is(err, errInjected) {
		t.Errorf("Errs = %v", pe.Errs)
	}
	for _, box := range pe.Delivered {
		onlyFile(t, filepath.Join(data, "mailboxes", box))
	}
	if files := maildirFiles(t, filepath.Join(data, "mailboxes", "bob@pec.example.it"), "new"); len(files) != 0 {
		t.Errorf("bob's new/ holds %d files", len(files))
	}

	// When every mailbox fails, the result is an error, not a PartialError.
	l.w = failAt(safeio.StepLink, "")
	err = l.Mailboxes().Deliver(context.Background(), m)
	if err == nil || errors.As(err, &pe) {
		t.Errorf("err = %v, want a plain error", err)
	}
}

func TestMaildirContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	root := t.TempDir()
	if err := NewMaildir(root).Deliver(ctx, receipt()); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if err := NewLocal(root).Mailboxes().Deliver(ctx, receipt()); !errors.Is(err, context.Canceled) {
		t.Errorf("mailboxes: err = %v, want context.Canceled", err)
	}
}
