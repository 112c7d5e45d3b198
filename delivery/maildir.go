package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pecgw/pecgw/internal/durable"
	"github.com/pecgw/pecgw/internal/safeio"
)

// Folder and file modes: PEC messages are personal data, readable by the
// pecgw user only.
const (
	dirPerm  = 0o700
	filePerm = 0o600
)

// nameRetries bounds retries after a file name turned out to be taken,
// which only happens when two namers share a folder in the same
// microsecond.
const nameRetries = 3

// Maildir delivers into one maildir folder (maildir specification by
// D. J. Bernstein, cr.yp.to/proto/maildir.html). Each message becomes one
// file whatever the number of recipients; the file begins with
// Return-Path and one Delivered-To line per forward-path, as Postfix's
// local delivery writes them, followed by the message byte for byte.
type Maildir struct {
	root  string
	names *namer
	w     safeio.Writer // test seam: failure injection
	ids   *sync.Map     // HasMessage: file path -> Message-ID, of the files read (nil: none kept)
}

// NewMaildir returns a Target that delivers into the maildir at root. The
// folders root/tmp, root/new and root/cur are created, durably, at the
// first delivery, so that a missing folder is reported by Deliver.
func NewMaildir(root string) *Maildir {
	return &Maildir{root: root, names: newNamer(), w: safeio.Writer{Point: durable.Maildir}, ids: &sync.Map{}}
}

// Deliver writes m into new/. It returns nil only after the file is
// written, fsync'd, linked into new/ and new/ is fsync'd.
func (md *Maildir) Deliver(ctx context.Context, m *Message) error {
	if err := m.check(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delivery: maildir %s: %w", md.root, err)
	}
	return md.deliver(m, m.ForwardPaths)
}

func (md *Maildir) deliver(m *Message, deliveredTo []string) error {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := safeio.MkdirAllSync(filepath.Join(md.root, sub), dirPerm); err != nil {
			return fmt.Errorf("delivery: maildir %s: %w", md.root, err)
		}
	}
	// The trace lines, then the message as it is: no copy of the message
	// (limits.message_memory counts on it).
	parts := [][]byte{maildirTrace(m, deliveredTo), m.Data}
	for attempt := 0; ; attempt++ {
		// Maildir specification: write tmp/<unique>, then link it to
		// new/<unique>. link, unlike rename, refuses to replace a file
		// already there, so even a name collision (two namers in one
		// microsecond) cannot overwrite a delivered message: it fails with
		// fs.ErrExist and we take the next name.
		name := md.names.next()
		err := md.w.WriteNewParts(filepath.Join(md.root, "tmp", name), filepath.Join(md.root, "new", name), parts, filePerm)
		if err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrExist) || attempt == nameRetries {
			return fmt.Errorf("delivery: maildir %s: %w", md.root, err)
		}
	}
}

// maildirTrace returns what a file holds before the message, which
// follows unchanged: the trace lines a local delivery agent adds (RFC 5321
// §4.4: Return-Path is added at final delivery).
func maildirTrace(m *Message, deliveredTo []string) []byte {
	var b bytes.Buffer
	b.Grow(64 + 64*len(deliveredTo))
	b.WriteString("Return-Path: <" + m.ReversePath + ">\r\n")
	for _, rcpt := range deliveredTo {
		b.WriteString("Delivered-To: " + rcpt + "\r\n")
	}
	return b.Bytes()
}

// namer makes maildir file names unique within the process:
// <seconds>.M<microseconds>P<pid>Q<counter>.<host>, the form the maildir
// specification recommends ("Q" counts the deliveries made by this
// process).
type namer struct {
	host  string
	pid   string
	count atomic.Uint64
}

func newNamer() *namer {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	// Maildir specification: "/" and ":" in the host name become \057 and
	// \072, as ":" separates the info part and "/" a path.
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	return &namer{host: host, pid: strconv.Itoa(os.Getpid())}
}

func (n *namer) next() string {
	now := time.Now()
	q := n.count.Add(1)
	return strconv.FormatInt(now.Unix(), 10) +
		".M" + strconv.Itoa(now.Nanosecond()/1000) +
		"P" + n.pid + "Q" + strconv.FormatUint(q, 10) +
		"." + n.host
}

// Local is pecgw's embedded delivery layout under the data folder: all
// transport envelopes (buste di trasporto) in <data>/outbound/, and
// receipts and notices (ricevute e avvisi) in one maildir per mailbox
// under <data>/mailboxes/<address>/.
type Local struct {
	dataDir string
	names   *namer        // shared, so names are unique across both targets
	w       safeio.Writer // test seam: failure injection
}

// NewLocal returns the embedded delivery layout under dataDir. Folders are
// created at the first delivery into them.
func NewLocal(dataDir string) *Local {
	return &Local{dataDir: dataDir, names: newNamer(), w: safeio.Writer{Point: durable.Maildir}}
}

// Outbound returns the Target for transport envelopes: one file per
// message in the maildir <data>/outbound/, with a Delivered-To line for
// every forward-path, for whatever relays them on to other providers.
func (l *Local) Outbound() Target {
	return &Maildir{root: filepath.Join(l.dataDir, "outbound"), names: l.names, w: l.w, ids: &sync.Map{}}
}

// Mailboxes returns the Target for receipts and notices: one file in the
// maildir <data>/mailboxes/<forward-path, lower-cased>/ per recipient,
// with that mailbox's Delivered-To line. Forward-paths that would name a
// folder outside mailboxes/ are refused before anything is written. When
// some mailboxes take the message and others fail, Deliver returns a
// *PartialError.
func (l *Local) Mailboxes() Target {
	return mailboxes{l}
}

type mailboxes struct{ l *Local }

func (mb mailboxes) Deliver(ctx context.Context, m *Message) error {
	if err := m.check(); err != nil {
		return err
	}
	rcpts := unique(m.ForwardPaths)
	boxes := make(map[string]string, len(rcpts))
	for _, r := range rcpts {
		box, err := mailboxFolder(r)
		if err != nil {
			return fmt.Errorf("delivery: mailbox <%s>: %w", r, err)
		}
		boxes[r] = box
	}
	// Two forward-paths that differ only in case name one mailbox: one
	// file, and both count as delivered.
	done := make(map[string]error)
	errs := make(map[string]error)
	for _, r := range rcpts {
		box := boxes[r]
		err, ok := done[box]
		if !ok {
			if err = ctx.Err(); err == nil {
				md := &Maildir{root: filepath.Join(mb.l.dataDir, "mailboxes", box), names: mb.l.names, w: mb.l.w}
				err = md.deliver(m, []string{box})
			}
			done[box] = err
		}
		if err != nil {
			errs[r] = err
		}
	}
	return outcome("delivery: mailboxes", rcpts, errs)
}

// mailboxFolder returns the folder name of the mailbox addr, the address
// lower-cased, or an error when, used as a folder name, it could escape
// the mailboxes folder or be hidden or ambiguous in it. The check is on
// the whole address, local part and domain.
func mailboxFolder(addr string) (string, error) {
	if !utf8.ValidString(addr) {
		// Lower-casing would turn invalid bytes into U+FFFD and could map
		// two addresses to one folder.
		return "", errors.New("address is not valid UTF-8")
	}
	box := strings.ToLower(addr)
	switch {
	case box == "":
		return "", errors.New("empty address")
	case len(box) > 255:
		return "", errors.New("address longer than a file name may be")
	case strings.ContainsAny(box, "/\\\x00"):
		return "", errors.New("address contains a slash, backslash or NUL")
	case strings.HasPrefix(box, "."):
		return "", errors.New("address begins with a dot")
	case strings.Contains(box, ".."):
		return "", errors.New("address contains \"..\"")
	}
	for _, r := range box {
		if r < 0x20 || r == 0x7f {
			return "", errors.New("address contains a control character")
		}
	}
	return box, nil
}
