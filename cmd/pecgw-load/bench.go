package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BenchConfig is a benchmark: the same load against a bare go-smtp sink,
// a bare durable MTA and pecgw, each a process of its own started from a
// fresh data folder, in rounds run in turn (sink, durable, pecgw, sink,
// ...), so that each server's figures and the ratios between them come
// from the same minutes of the same machine.
type BenchConfig struct {
	Load     Config // the load of each round; Addr, User, Password, TLSConfig are set here
	PecgwBin string // the pecgw binary
	BaseBin  string // another pecgw binary run side by side (the code before a change); none when empty
	KeyType  string // pecgw init --key-type: "rsa" or "p256"
	Dir      string // where the three keep their data; a temporary folder when empty
	Keep     bool   // keep Dir at the end
	Rounds   int
	Round    time.Duration
	Self     string // this executable, for the two bare servers
	Log      io.Writer
}

// BenchRow is one server's figures over all its rounds.
type BenchRow struct {
	Server     string    `json:"server"`
	Rounds     []float64 `json:"messages_per_s_by_round"`
	Rate       float64   `json:"messages_per_s"` // median of the rounds
	Sent       int       `json:"sent"`
	Failed     int       `json:"errors"`
	Message    Latency   `json:"message"`            // over the samples of all its rounds
	CPUPerMsg  float64   `json:"cpu_ms_per_message"` // the server process's user+system CPU ÷ messages sent
	PeakRSS    int64     `json:"peak_rss_bytes"`     // VmHWM at the end
	ErrorCodes []string  `json:"error_codes,omitempty"`
}

// BenchResult is a benchmark's table.
type BenchResult struct {
	Clients int        `json:"clients"`
	Mode    string     `json:"mode"`
	Size    int        `json:"size"`
	TLS     string     `json:"tls"`
	KeyType string     `json:"key_type"`
	Rounds  int        `json:"rounds"`
	Round   string     `json:"round"`
	Rows    []BenchRow `json:"rows"` // sink, durable, pecgw
	// Ratios of pecgw's messages/s to each baseline's, per round (the
	// rounds of one cycle ran one after the other), with their median.
	VsSink          []float64 `json:"pecgw_vs_sink"`
	VsDurable       []float64 `json:"pecgw_vs_durable"`
	VsSinkMedian    float64   `json:"pecgw_vs_sink_median"`
	VsDurableMedian float64   `json:"pecgw_vs_durable_median"`
	// With a base pecgw (BaseBin): pecgw's msg/s over the base's, per
	// cycle, and their median: a change measured side by side.
	VsBase       []float64 `json:"pecgw_vs_base,omitempty"`
	VsBaseMedian float64   `json:"pecgw_vs_base_median,omitempty"`
	Interrupted  bool      `json:"interrupted"`
}

const (
	benchSink    = "sink"
	benchDurable = "durable"
	benchPecgw   = "pecgw"
	benchBase    = "base"
)

func (bc *BenchConfig) validate() error {
	switch {
	case bc.PecgwBin == "":
		return usagef("--pecgw-bin is required (go build -o pecgw ./cmd/pecgw)")
	case bc.KeyType != "rsa" && bc.KeyType != "p256":
		return usagef("--key-type must be rsa or p256, got %q", bc.KeyType)
	case bc.Rounds < 1:
		return usagef("--rounds must be at least 1, got %d", bc.Rounds)
	case bc.Load.Messages == 0 && bc.Round <= 0:
		return usagef("--round must be positive, got %v", bc.Round)
	case bc.Load.Clients > 190:
		return usagef("--clients at most 190 (pecgw's limits.max_connections is 200), got %d", bc.Load.Clients)
	}
	if _, err := os.Stat(bc.PecgwBin); err != nil {
		return fmt.Errorf("--pecgw-bin: %w", err)
	}
	if bc.BaseBin != "" {
		if _, err := os.Stat(bc.BaseBin); err != nil {
			return fmt.Errorf("--base-bin: %w", err)
		}
	}
	return nil
}

// benchProc is a server process of the benchmark.
type benchProc struct {
	name string
	cmd  *exec.Cmd
	out  *os.File
	done chan struct{}
}

// Bench starts the servers (sink, durable, the base pecgw if any, pecgw),
// runs the rounds and stops them.
func Bench(ctx context.Context, bc BenchConfig) (res *BenchResult, err error) {
	if err := bc.validate(); err != nil {
		return nil, err
	}
	dir := bc.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "pecgw-bench-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if !bc.Keep {
		defer os.RemoveAll(dir)
	} else {
		fmt.Fprintf(bc.Log, "bench: data in %s\n", dir)
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	user, password := "bench@pec.bench.test", randomPassword()
	roots := x509.NewCertPool()
	type pecgwSetup struct{ name, bin, cfg, addr string }
	setups := []pecgwSetup{{name: benchPecgw, bin: bc.PecgwBin}}
	if bc.BaseBin != "" {
		setups = append([]pecgwSetup{{name: benchBase, bin: bc.BaseBin}}, setups...)
	}
	for i := range setups {
		su := &setups[i]
		su.cfg, su.addr, err = benchPecgwInit(su.bin, filepath.Join(dir, su.name), bc.KeyType, bc.Load.TLS, bc.Load.Clients, user, password, roots)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", su.name, err)
		}
	}
	// The baselines use the TLS certificate of the pecgw under test.
	pki := filepath.Join(dir, benchPecgw, "pki")

	var procs []*benchProc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	start := func(name, addr string, args ...string) error {
		p, err := startBenchProc(name, filepath.Join(dir, name+".out"), args...)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		return p.waitListening(ctx, addr, 60*time.Second)
	}
	mode := bc.Load.TLS
	bare := []string{"bare", "--tls", mode, "--cert", filepath.Join(pki, "tls.pem"), "--key", filepath.Join(pki, "tls-key.pem"), "--hostname", "pec.bench.test"}
	if err := start(benchSink, ports[0], append([]string{bc.Self}, append(bare, "--addr", ports[0])...)...); err != nil {
		return nil, err
	}
	if err := start(benchDurable, ports[1], append([]string{bc.Self}, append(bare, "--addr", ports[1], "--durable", filepath.Join(dir, "durable"))...)...); err != nil {
		return nil, err
	}
	addrs := map[string]string{benchSink: ports[0], benchDurable: ports[1]}
	order := []string{benchSink, benchDurable}
	for _, su := range setups {
		if err := start(su.name, su.addr, su.bin, "serve", "--config", su.cfg); err != nil {
			return nil, err
		}
		addrs[su.name] = su.addr
		order = append(order, su.name)
	}

	load := bc.Load
	load.User, load.Password, load.Rcpt = user, password, ""
	load.TLSConfig = &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if load.Messages == 0 {
		load.Duration = bc.Round
	}
	res = &BenchResult{Clients: load.Clients, Mode: load.Mode, Size: load.Size, TLS: load.TLS, KeyType: bc.KeyType, Rounds: bc.Rounds, Round: bc.Round.String()}
	if load.Messages > 0 {
		res.Round = fmt.Sprintf("%d messages", load.Messages)
	}
	rows := map[string]*BenchRow{}
	samples := map[string][]time.Duration{}
	cpu := map[string]time.Duration{}
	codes := map[string]map[string]bool{}
	for _, name := range order {
		rows[name] = &BenchRow{Server: name}
		codes[name] = map[string]bool{}
	}
	rows[benchPecgw].Server = "pecgw (" + bc.KeyType + ")"
	if bc.BaseBin != "" {
		rows[benchBase].Server = "base (" + bc.KeyType + ")"
	}
	for r := 0; r < bc.Rounds && ctx.Err() == nil; r++ {
		rates := map[string]float64{}
		for i, name := range order {
			if ctx.Err() != nil {
				break
			}
			p := procs[i]
			load.Addr = addrs[name]
			before, err := procCPU(p.cmd.Process.Pid)
			if err != nil {
				return nil, err
			}
			rr, err := Run(ctx, load)
			if err != nil {
				return nil, err
			}
			after, err := procCPU(p.cmd.Process.Pid)
			if err != nil {
				return nil, fmt.Errorf("%s ended during the round (its output: %s): %w", name, p.out.Name(), err)
			}
			if rr.Interrupted {
				res.Interrupted = true
				break
			}
			row := rows[name]
			row.Rounds = append(row.Rounds, rr.Rate)
			row.Sent += rr.Sent
			row.Failed += rr.Failed
			for c := range rr.Errors {
				codes[name][c] = true
			}
			samples[name] = append(samples[name], rr.messageSamples...)
			cpu[name] += after - before
			rates[name] = rr.Rate
			fmt.Fprintf(bc.Log, "bench: round %d/%d %-8s %8.1f msg/s  p50 %s  p99 %s  errors %d\n",
				r+1, bc.Rounds, name, rr.Rate, fmtMs(rr.Message.P50), fmtMs(rr.Message.P99), rr.Failed)
		}
		if p, ok := rates[benchPecgw]; ok {
			if s := rates[benchSink]; s > 0 {
				res.VsSink = append(res.VsSink, p/s)
			}
			if d := rates[benchDurable]; d > 0 {
				res.VsDurable = append(res.VsDurable, p/d)
			}
			if b := rates[benchBase]; b > 0 {
				res.VsBase = append(res.VsBase, p/b)
			}
		}
	}
	for i, name := range order {
		row := rows[name]
		row.Rate = median0(row.Rounds)
		row.Message = summarize(samples[name])
		if row.Sent > 0 {
			row.CPUPerMsg = float64(cpu[name]) / float64(time.Millisecond) / float64(row.Sent)
		}
		row.PeakRSS, _ = procHWM(procs[i].cmd.Process.Pid)
		for c := range codes[name] {
			row.ErrorCodes = append(row.ErrorCodes, c)
		}
		slices.Sort(row.ErrorCodes)
		res.Rows = append(res.Rows, *row)
	}
	res.VsSinkMedian, res.VsDurableMedian, res.VsBaseMedian = median0(res.VsSink), median0(res.VsDurable), median0(res.VsBase)
	return res, nil
}

// benchPecgwInit makes a fresh pecgw in dir with bin (pecgw init, the
// limits for the clients, the user) and returns its configuration and
// the address of the port in tlsMode; its CA goes into roots.
func benchPecgwInit(bin, dir, keyType, tlsMode string, clients int, user, password string, roots *x509.CertPool) (cfgPath, addr string, err error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", "", err
	}
	sub, smtps := ports[0], ports[1]
	addr = sub
	if tlsMode == TLSImplicit {
		addr = smtps
	}
	if out, err := exec.Command(bin, "init", "--dir", dir, "--domain", "pec.bench.test",
		"--provider-name", "pecgw-load bench", "--submission-addr", sub, "--smtps-addr", smtps,
		"--key-type", keyType).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("pecgw init: %v\n%s", err, out)
	}
	cfgPath = filepath.Join(dir, "pecgw.toml")
	if err := benchLimits(cfgPath, clients); err != nil {
		return "", "", err
	}
	add := exec.Command(bin, "user", "add", user, "--config", cfgPath, "--password-stdin")
	add.Stdin = strings.NewReader(password + "\n")
	if out, err := add.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("pecgw user add: %v\n%s", err, out)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.pem"))
	if err != nil {
		return "", "", err
	}
	if !roots.AppendCertsFromPEM(caPEM) {
		return "", "", fmt.Errorf("%s: no certificate", filepath.Join(dir, "pki", "ca.pem"))
	}
	return cfgPath, addr, nil
}

// benchLimits lets the benchmark's clients in: one address opens them
// all, more than limits.max_connections_per_ip's default 20.
func benchLimits(cfgPath string, clients int) error {
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	n := max(20, clients+4)
	for _, key := range []string{"max_connections_per_ip", "max_connections_per_network"} {
		re := regexp.MustCompile(`(?m)^` + key + ` = \d+$`)
		if !re.Match(data) {
			return fmt.Errorf("%s: no line %q to raise for %d clients", cfgPath, key+" = …", clients)
		}
		if key == "max_connections_per_network" {
			n = max(100, clients+4)
		}
		data = re.ReplaceAll(data, []byte(fmt.Sprintf("%s = %d", key, n)))
	}
	return os.WriteFile(cfgPath, data, 0o600)
}

// median0 is the median, 0 of nothing (JSON has no NaN).
func median0(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return median(xs)
}

func randomPassword() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freePorts returns n loopback addresses with ports free right now.
func freePorts(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

func startBenchProc(name, outPath string, args ...string) (*benchProc, error) {
	out, err := os.Create(outPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &benchProc{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// waitListening waits until addr accepts a connection, or the process
// ends, or d passes.
func (p *benchProc) waitListening(ctx context.Context, addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s ended before listening on %s:\n%s", p.name, addr, tail(p.out.Name()))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %v:\n%s", p.name, addr, d, tail(p.out.Name()))
		}
	}
}

// stop ends the process with SIGTERM, then SIGKILL after 30 s.
func (p *benchProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.out.Close()
}

// tail is the end of a file, for an error.
func tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}

// procCPU is the user and system CPU time pid used so far (proc(5):
// fields 14 and 15 of /proc/pid/stat, in clock ticks of 1/100 s, the
// USER_HZ every Linux reports there).
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// procHWM is the peak resident set of pid (VmHWM of /proc/pid/status).
func procHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if n, _ := fmt.Sscanf(sc.Text(), "VmHWM: %d kB", &kb); n == 1 {
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// printBench prints the table.
func printBench(w io.Writer, r *BenchResult) {
	fmt.Fprintf(w, "load: %d clients, %s, %d-octet messages, %s; %d rounds of %s per server, run in turn\n",
		r.Clients, r.Mode, r.Size, tlsName(r.TLS), r.Rounds, r.Round)
	fmt.Fprintf(w, "\n%-14s %9s %9s %9s %9s %9s %12s %9s %7s\n", "server", "msg/s", "p50", "p90", "p99", "max", "CPU/msg", "peak RSS", "errors")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "%-14s %9.1f %9s %9s %9s %9s %9.3f ms %6d MiB %7d\n", row.Server, row.Rate,
			fmtMs(row.Message.P50), fmtMs(row.Message.P90), fmtMs(row.Message.P99), fmtMs(row.Message.Max),
			row.CPUPerMsg, row.PeakRSS>>20, row.Failed)
		if len(row.ErrorCodes) > 0 {
			fmt.Fprintf(w, "%-14s errors: %s\n", "", strings.Join(row.ErrorCodes, ", "))
		}
	}
	fmt.Fprintf(w, "\npecgw / sink:    %s (median of %s)\n", fmtRatio(r.VsSinkMedian), fmtRatios(r.VsSink))
	fmt.Fprintf(w, "pecgw / durable: %s (median of %s)\n", fmtRatio(r.VsDurableMedian), fmtRatios(r.VsDurable))
	if len(r.VsBase) > 0 {
		fmt.Fprintf(w, "pecgw / base:    %s (median of %s)\n", fmtRatio(r.VsBaseMedian), fmtRatios(r.VsBase))
	}
	fmt.Fprintln(w, "msg/s: median of the rounds; latency: message (see README), over all rounds; CPU: the server process's user+system time ÷ messages it took")
	if r.Interrupted {
		fmt.Fprintln(w, "INTERRUPTED: the figures are those of the rounds finished")
	}
}

func fmtRatios(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmtRatio(x))
	}
	return "[" + strings.Join(s, " ") + "]"
}
