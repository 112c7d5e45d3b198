package delivery

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Finder is a Target that can tell whether it holds a message: a local
// maildir can, a next hop over SMTP or LMTP cannot. Reconciliation at
// start uses it to learn whether a transport envelope was handed off
// before a crash.
type Finder interface {
	// HasMessage reports whether a message whose Message-ID is messageID
	// (angle brackets optional) was delivered.
	HasMessage(messageID string) (bool, error)
}

var _ Finder = (*Maildir)(nil)

// MailboxFinder tells whether one recipient's mailbox holds a message:
// the Local mailboxes can, LMTP cannot. The redelivery of a spooled
// receipt after a crash uses it not to deliver a receipt twice.
type MailboxFinder interface {
	HasMessageFor(rcpt, messageID string) (bool, error)
}

var _ MailboxFinder = mailboxes{}

// HasMessageFor implements MailboxFinder: Maildir.HasMessage in rcpt's
// mailbox.
func (mb mailboxes) HasMessageFor(rcpt, messageID string) (bool, error) {
	box, err := mailboxFolder(rcpt)
	if err != nil {
		return false, fmt.Errorf("delivery: mailbox <%s>: %w", rcpt, err)
	}
	md := &Maildir{root: filepath.Join(mb.l.dataDir, "mailboxes", box)}
	return md.HasMessage(messageID)
}

// maxHeaderBytes bounds how much of a file HasMessage reads: the trace
// lines and the message header, never the body.
const maxHeaderBytes = 256 << 10

// HasMessage implements Finder: it scans the files of new/ and cur/ and
// reads each one's header only (up to the blank line that ends it), after
// the Return-Path and Delivered-To lines Deliver writes. The cost is one
// open and a few reads per file in the folder the first time (a delivered
// file never changes, so what it holds is remembered by its name): meant
// for start-up, not for every transaction. A folder that does not exist yet holds nothing.
// Files in tmp/ are not delivered (Deliver links them into new/ last) and
// are not looked at.
func (md *Maildir) HasMessage(messageID string) (bool, error) {
	want := bareID(messageID)
	if want == "" {
		return false, errors.New("delivery: maildir lookup: empty Message-ID")
	}
	for _, sub := range []string{"new", "cur"} {
		dir := filepath.Join(md.root, sub)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("delivery: maildir %s: %w", md.root, err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			path := filepath.Join(dir, e.Name())
			if md.ids != nil {
				if id, ok := md.ids.Load(path); ok {
					if id == want {
						return true, nil
					}
					continue
				}
			}
			id, err := headerMessageID(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue // moved from new/ to cur/ meanwhile by a reader
			}
			if err != nil {
				return false, fmt.Errorf("delivery: maildir %s: %w", md.root, err)
			}
			if md.ids != nil {
				md.ids.Store(path, id)
			}
			if id != "" && id == want {
				return true, nil
			}
		}
	}
	return false, nil
}

// headerMessageID returns the Message-ID of the maildir file at path,
// without angle brackets, or "" when its header has none. Folded header
// lines are unfolded; the trace lines are skipped by name.
func headerMessageID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	r := bufio.NewReader(io.LimitReader(f, maxHeaderBytes))
	var field string // the current field, unfolded
	check := func() string {
		name, value, ok := strings.Cut(field, ":")
		if ok && strings.EqualFold(strings.TrimSpace(name), "Message-ID") {
			return bareID(value)
		}
		return ""
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		text := strings.TrimRight(line, "\r\n")
		switch {
		case text != "" && (text[0] == ' ' || text[0] == '\t'):
			field += text // continuation of a folded field
		default:
			if id := check(); id != "" {
				return id, nil
			}
			field = text
		}
		if text == "" || err != nil {
			// The blank line ends the header; EOF or the read limit ends
			// the file's part worth reading.
			if id := check(); id != "" {
				return id, nil
			}
			return "", nil
		}
	}
}

// bareID returns a Message-ID without spaces and angle brackets.
func bareID(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	return strings.TrimSpace(s)
}
