package logstore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgw/pecgw/internal/testpki"
)

// crashDirEnv tells the test binary, re-executed by TestCrash, to run
// TestCrashChild on the log in that folder.
const crashDirEnv = "PECGW_LOGSTORE_CRASH_DIR"

func crashOptions(t testing.TB, dir string) Options {
	return Options{
		Dir: dir, Signer: testpki.Signer(t, "p256"), Provider: testpki.ProviderName,
		CheckpointEvery: 50,       // checkpoints and
		MaxSegmentSize:  64 << 10, // seals are cut by the crashes too
	}
}

// TestCrashChild is the child of TestCrash: it appends from 8 goroutines
// as fast as it can and prints "seq hash" of each record after its Append
// returned, until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestCrash in a child process")
	}
	l, err := Open(crashOptions(t, dir))
	if err != nil {
		fmt.Printf("open failed: %v\n", err)
		os.Exit(3)
	}
	fmt.Println("ready")
	var mu sync.Mutex
	for w := range 8 {
		go func() {
			for i := 0; ; i++ {
				r := sampleAcceptance(w*1_000_000+i, time.Now())
				seq, hash, err := l.Append(context.Background(), r)
				if err != nil {
					fmt.Printf("append failed: %v\n", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Printf("%d %s\n", seq, hash) // one write(2): the line is whole or absent
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestCrash kills a writing process at random instants (SIGKILL, 30
// times in the same folder) and checks that every record whose Append
// returned is in the log with the hash it was given, that Open always
// recovers, and that the log verifies at the end.
func TestCrash(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	const runs = 30
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	acked := map[uint64]string{}
	var records uint64
	for run := range runs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		select {
		case first, ok := <-lines:
			if !ok || first != "ready" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("run %d: child said %q\n%s", run, first, stderr.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("run %d: child did not start\n%s", run, stderr.String())
		}
		kill := time.After(time.Duration(20+rnd.IntN(181)) * time.Millisecond)
		var reported []string
	collect:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					break collect
				}
				reported = append(reported, line)
			case <-kill:
				cmd.Process.Kill() // SIGKILL
				kill = nil
			}
		}
		cmd.Wait()
		for _, line := range reported {
			seqText, hash, ok := strings.Cut(line, " ")
			seq, err := strconv.ParseUint(seqText, 10, 64)
			if !ok || err != nil || len(hash) != 64 {
				t.Fatalf("run %d: child said %q\n%s", run, line, stderr.String())
			}
			acked[seq] = hash
		}

		l, err := Open(crashOptions(t, dir))
		if err != nil {
			t.Fatalf("run %d: Open after the crash: %v", run, err)
		}
		onDisk := seqHashes(t, dir)
		for seq, hash := range acked {
			if onDisk[seq] != hash {
				t.Fatalf("run %d: record %d was acknowledged with hash %s; on disk: %q", run, seq, hash, onDisk[seq])
			}
		}
		records = uint64(len(onDisk))
		closeLog(t, l)
	}
	rep := mustVerify(t, dir)
	lines := readLog(t, dir)
	torn := 0
	for _, dl := range lines {
		if dl.rec.Type == EventTornTail {
			torn++
			t.Logf("torn tail: %s", dl.rec.Detail)
		}
	}
	t.Logf("%d runs: %d records acknowledged, %d in the log (%d segments, %d checkpoints and seals), %d torn tails cut",
		runs, len(acked), records, rep.Segments, rep.Checkpoints, torn)
	if len(acked) < runs {
		t.Errorf("only %d records acknowledged in %d runs: the children did not write", len(acked), runs)
	}
}

// seqHashes returns the hash of each record line by seq, read from the
// seq field without decoding the record (Verify decodes them all at the
// end).
func seqHashes(t *testing.T, dir string) map[uint64]string {
	t.Helper()
	segs, err := ListSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for _, s := range segs {
		b, err := os.ReadFile(filepath.Join(dir, s.Name))
		if err != nil {
			t.Fatal(err)
		}
		for len(b) > 0 {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				t.Fatalf("%s: incomplete last line after Open", s.Name)
			}
			line := b[:i+1]
			b = b[i+1:]
			rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
			j := bytes.IndexByte(rest, ',')
			if !ok || j < 0 {
				t.Fatalf("%s: not a record: %q", s.Name, line)
			}
			seq, err := strconv.ParseUint(string(rest[:j]), 10, 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", s.Name, line, err)
			}
			out[seq] = Hash(line)
		}
	}
	return out
}
