package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pecgw/pecgw/config"
	"github.com/pecgw/pecgw/dedup"
	"github.com/pecgw/pecgw/delivery"
	"github.com/pecgw/pecgw/gateway"
	"github.com/pecgw/pecgw/logstore"
	"github.com/pecgw/pecgw/pec"
	"github.com/pecgw/pecgw/signer"
)

// Defaults of pecgw serve --dev on a fresh machine.
const (
	devDomain     = "pec.localhost"
	devProvider   = "pecgw development provider"
	devUser       = "demo@" + devDomain
	shutdownGrace = 30 * time.Second
	// closeGrace is how long sessions closed at the end of shutdownGrace
	// get to finish the transaction they were in before the log closes.
	closeGrace = 10 * time.Second
)

// cmdServe runs the access point until SIGTERM or SIGINT. With --dev and
// no configuration it first creates one (pecgw init) with a demo user.
func cmdServe(args []string, stdout, stderr io.Writer) error {
	fs := quietFlagSet("serve")
	cfgPath := fs.String("config", defaultConfig, "")
	dev := fs.Bool("dev", false, "")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q: pecgw serve [--config FILE] [--dev]", errUsage, pos[0])
	}
	if *dev {
		if err := devSetup(*cfgPath, stdout); err != nil {
			return err
		}
	}
	srv, err := newServer(*cfgPath, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return srv.run(ctx, hup, stdout)
}

// devSetup creates the development setup when the configuration does not
// exist: pecgw init with the defaults and a demo user whose password is
// printed once. It prints only what applies to serve --dev (not init's
// production steps); when the setup exists, how to set a new password
// for the demo user, whose first one is not shown again.
func devSetup(cfgPath string, stdout io.Writer) error {
	self := selfCommand()
	if _, err := os.Stat(cfgPath); err == nil {
		if has, _ := hasUser(cfgPath, devUser); has {
			fmt.Fprintf(stdout, "pecgw: development setup %s; the password of %s was shown when it was created.\n"+
				"  a new one: %s user passwd %s --config %s --generate\n", cfgPath, devUser, self, devUser, cfgPath)
		}
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dir := filepath.Dir(cfgPath)
	if filepath.Base(cfgPath) != "pecgw.toml" {
		return fmt.Errorf("--dev creates <dir>/pecgw.toml; %s does not exist", cfgPath)
	}
	if _, _, err := initDir([]string{"--dir", dir, "--domain", devDomain, "--provider-name", devProvider}); err != nil {
		return err
	}
	pw, err := generatePassword()
	if err != nil {
		return err
	}
	if err := gateway.AddUser(filepath.Join(dir, "users"), devUser, pw); err != nil {
		return err
	}
	fmt.Fprintf(stdout, `pecgw: created the development setup in %s: configuration pecgw.toml, development PKI
  in pki/ (ca.pem verifies what pecgw signs and its TLS certificate), log/, outbound/, mailboxes/.

demo user: %s  password: %s  (shown once; a new one:
  %s user passwd %s --config %s --generate)

`, dir, devUser, pw, self, devUser, cfgPath)
	return nil
}

// hasUser says whether the users file of the configuration at cfgPath
// lists address.
func hasUser(cfgPath, address string) (bool, error) {
	c, err := config.Load(cfgPath)
	if err != nil {
		return false, err
	}
	if c.Users.Backend != "file" {
		return false, nil
	}
	u, err := gateway.LoadUsers(c.Users.File)
	if err != nil {
		return false, err
	}
	return slices.Contains(u.Addresses(), address), nil
}

// selfCommand is how this pecgw can be run again, for the commands it
// suggests: "go run ./cmd/pecgw" when it runs under go run (README's
// first run), else the name it was started with.
func selfCommand() string {
	if exe, err := os.Executable(); err == nil && strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/pecgw"
	}
	if len(os.Args) > 0 && os.Args[0] != "" {
		return os.Args[0]
	}
	return "pecgw"
}

// server is the running access point: its parts and listeners.
type server struct {
	cfg     *config.Config
	log     *zap.Logger
	txlog   *logstore.Log
	dedup   dedup.Store
	spool   *delivery.Spool
	accept  *gateway.Acceptor
	users   *gateway.Users   // users.backend = "file"
	dovecot *gateway.Dovecot // users.backend = "dovecot"
	// hashWorker checks the users file's passwords in a child process
	// (startHashWorker); nil when they are checked in the daemon.
	hashWorker *gateway.HashWorker
	cert       atomic.Pointer[tls.Certificate]
	servers    []*smtp.Server
	lns        []net.Listener      // what the servers serve
	tracked    []*gateway.Listener // the same, with their connections
	guard      *gateway.Guard
	grace      time.Duration // shutdownGrace; shorter in tests
	healed     chan struct{} // the transaction log took records again (logstore/heal.go)
}

func newServer(cfgPath string, stderr io.Writer) (*server, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, err
	}
	if err := cfg.CheckFiles(); err != nil {
		return nil, err
	}
	logger, err := newLogger(cfg, stderr)
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, log: logger, grace: shutdownGrace}
	if err := s.loadCert(); err != nil {
		return nil, err
	}
	sig, err := signer.LoadFiles(cfg.Signing.Key, cfg.Signing.Cert)
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings() {
		logger.Warn(w, zap.String("event", "config.warning"))
	}
	// RFC 6109 §5.5: receivers check the profile; say what differs.
	for _, w := range signer.CheckProfile(sig.Certificate(), cfg.Provider.Domains[0]) {
		logger.Warn("signing certificate profile", zap.String("event", "config.warning"), zap.String("problem", w))
	}
	dir, err := directory(cfg)
	if err != nil {
		return nil, err
	}
	verifier, err := s.verifier()
	if err != nil {
		return nil, err
	}
	outbound, mailboxes, err := targets(cfg)
	if err != nil {
		return nil, err
	}
	store, err := dedupStore(cfg, logger)
	if err != nil {
		return nil, err
	}
	s.dedup = store
	lo := logOptions(cfg, sig, store)
	lo.Warn = func(msg string) { logger.Warn(msg, zap.String("event", "log.warning")) }
	// One event when the log stops taking records (every submission gets
	// 451 meanwhile) and one when it takes them again (logstore/heal.go).
	lo.Broken = func(err error) {
		logger.Error("transaction log not writable: submissions get 451 until it heals", zap.String("event", "log.broken"), zap.Error(err))
	}
	s.healed = make(chan struct{}, 1)
	lo.Healed = func(detail string) {
		logger.Info(detail, zap.String("event", "log.healed"))
		select { // what failed after a record is redone now, not in a minute
		case s.healed <- struct{}{}:
		default:
		}
	}
	if s.txlog, err = logstore.Open(lo); err != nil {
		s.closeAll()
		return nil, err
	}
	lang, err := gateway.ParseLanguage(cfg.Submission.ReplyLanguage)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("submission.reply_language: %w", err)
	}
	var bareLF gateway.BareLFPolicy
	if cfg.Submission.BareLF == "normalize" {
		if bareLF, err = gateway.ParseBareLFClients(cfg.Submission.BareLFClients); err != nil {
			s.closeAll()
			return nil, fmt.Errorf("submission.bare_lf_clients: %w", err)
		}
	}
	spool, err := delivery.OpenSpool(cfg.Delivery.Spool)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("delivery.spool: %w", err)
	}
	s.spool = spool
	if spool.Torn != "" {
		logger.Warn("the receipt spool's journal ended in a damaged frame (a crash while writing, or damage): what followed it is kept in the named file; receipts whose Put returned are before it unless the file was damaged",
			zap.String("event", "spool.torn"), zap.String("file", spool.Torn))
	}
	acceptor := &gateway.Acceptor{
		Dedup:         store,
		Receipts:      spool,
		Transactions:  gateway.NewTransactions(),
		DedupWindow:   cfg.Dedup.Window,
		DedupLease:    cfg.Dedup.Lease,
		DedupFailOpen: cfg.Dedup.OnError == "accept",
		Provider:      pec.Provider{Name: cfg.Provider.Name, Domain: cfg.Provider.Domains[0]},
		Directory:     dir,
		Limits:        pec.Limits{MaxSizeTimesRecipients: cfg.Limits.MaxSizeTimesRecipients, MaxRecipients: cfg.Limits.MaxRecipients},
		Signer:        sig,
		Log:           s.txlog,
		Outbound:      outbound,
		Mailboxes:     mailboxes,
		Now:           time.Now,
		Rand:          rand.Reader,
		BareLF:        bareLF,
	}
	// Transactions a crash left half done, before any client can retry.
	rep, err := acceptor.Reconcile(context.Background(), gateway.ReconcileInput{LogDir: lo.Dir, Now: time.Now()})
	if err != nil {
		s.closeAll()
		return nil, err
	}
	if rep != (gateway.Report{}) {
		logger.Warn("incomplete transactions reconciled", zap.String("event", "log.reconciled"),
			zap.Int("incomplete", rep.Incomplete), zap.Int("found", rep.Found),
			zap.Int("not_found", rep.NotFound), zap.Int("unknown", rep.Unknown),
			zap.Int("receipts_delivered", rep.Receipts), zap.Int("receipts_dropped", rep.ReceiptsDropped),
			zap.Int("receipts_unconfirmed", rep.ReceiptsUnconfirmed), zap.Int("dedup_unsettled", rep.DedupUnsettled))
	}
	if rep.ReceiptsUnconfirmed > 0 {
		logger.Warn("acceptance receipts kept unconfirmed: check with the next hop whether their envelopes arrived",
			zap.String("event", "delivery.unconfirmed"), zap.String("spool", spool.Dir()))
	}
	if cfg.Delivery.Mode != "smtp" {
		// Files a crash left in the maildirs' tmp/: never delivered.
		if n, err := delivery.NewLocal(cfg.Delivery.Maildir).CleanTmp(delivery.StaleTmp, time.Now()); err != nil {
			logger.Warn("maildir tmp not cleaned", zap.String("event", "delivery.warning"), zap.Error(err))
		} else if n > 0 {
			logger.Info("stale maildir tmp files removed", zap.String("event", "delivery.cleaned"), zap.Int("files", n))
		}
	}
	s.accept = acceptor
	lim := cfg.Limits
	s.guard = gateway.NewGuard(verifier, authPolicy(cfg), logger)
	s.startHashWorker()
	s.statePasswordMemory()
	accounts, err := gateway.LoadAccounts(cfg.Users.Suspended)
	if err != nil {
		s.closeAll()
		return nil, err
	}
	memory, err := gateway.NewMessageMemory(lim.MessageMemory, cfg.Delivery.Incoming)
	if err != nil {
		s.closeAll()
		return nil, err
	}
	s.setMemoryLimit(lim.MessageMemory)
	backend := &gateway.Backend{
		Log:                logger,
		Acceptor:           acceptor,
		Memory:             memory,
		Auth:               s.guard,
		Accounts:           accounts,
		MaxMessageBytes:    lim.MaxMessageBytes,
		TransactionTimeout: lim.DataTimeout,
		CommandTimeout:     lim.CommandTimeout,
		DataTimeout:        lim.DataTimeout,
		Language:           lang,
	}
	gate := gateway.NewConnGate(gateway.ConnLimits{
		Total:          lim.MaxConnections,
		PerAddress:     lim.MaxConnectionsPerIP,
		PerNetwork:     lim.MaxConnectionsPerNetwork,
		PreAuthTimeout: lim.PreAuthTimeout,
		LoginTimeout:   lim.LoginTimeout,
		Language:       lang,
	}, cfg.Listen.Hostname, logger)
	raiseFileLimit(lim.MaxConnections, logger)
	tlsConf := &tls.Config{
		MinVersion:     cfg.TLSMinVersion(),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cert.Load(), nil },
	}
	for _, l := range []struct {
		addr     string
		implicit bool
	}{{cfg.Listen.Submission, false}, {cfg.Listen.SMTPS, true}} {
		if l.addr == "" {
			continue
		}
		tcp, err := net.Listen("tcp", l.addr)
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("listen %s: %w", l.addr, err)
		}
		var implicitTLS *tls.Config
		if l.implicit {
			implicitTLS = tlsConf
		}
		tracked := gateway.NewListener(tcp, gate, implicitTLS)
		s.tracked = append(s.tracked, tracked)
		var ln net.Listener = tracked
		srv := smtp.NewServer(backend)
		srv.Domain = cfg.Listen.Hostname
		srv.TLSConfig = tlsConf
		srv.MaxMessageBytes = cfg.Limits.MaxMessageBytes
		srv.MaxLineLength = gateway.MaxLineLength
		// The recipient limit is announced (EHLO LIMITS RCPTMAX, RFC
		// 9422) and applied at RCPT time with the same number: go-smtp
		// answers the RCPT TO beyond it 452 4.5.3 (RFC 5321
		// §4.5.3.1.10), before the whole message is uploaded. A client
		// that goes on to DATA with the recipients it got (RFC 5321 tells
		// it to) still gets the too-many-recipients refusal and its
		// notice (RFC 6109 §3.1.2): To and Cc name more recipients than
		// the limit, and pec.Inspect counts those too. Chosen over
		// taking every RCPT and refusing after DATA (what pecgw did, with
		// RCPTMAX twice the limit): a client that reads RCPTMAX, or stops
		// at the 452, learns it before the upload. The price: the 452 is
		// go-smtp's own, in English ("Maximum limit of N recipients
		// reached"): v0.25.1 answers it before calling the session and
		// takes its text from nowhere else (docs/replies.md).
		srv.MaxRecipients = cfg.Limits.MaxRecipients
		srv.ReadTimeout = cfg.Limits.CommandTimeout
		srv.WriteTimeout = cfg.Limits.CommandTimeout
		srv.EnableSMTPUTF8 = true
		srv.ErrorLog = zapErrorLog{logger}
		s.servers = append(s.servers, srv)
		s.lns = append(s.lns, ln)
	}
	return s, nil
}

// redeliverEvery is how often spooled receipts are tried again.
const redeliverEvery = time.Minute

func (s *server) loadCert() error {
	c, err := tls.LoadX509KeyPair(s.cfg.TLS.Cert, s.cfg.TLS.Key)
	if err != nil {
		return fmt.Errorf("tls.cert/tls.key: %w", err)
	}
	s.cert.Store(&c)
	return nil
}

// run serves until ctx ends; SIGHUP reloads the users and the TLS
// certificate. On stop, transactions in flight get shutdownGrace.
func (s *server) run(ctx context.Context, hup <-chan os.Signal, stdout io.Writer) error {
	var wg sync.WaitGroup
	for i, srv := range s.servers {
		ln := s.lns[i]
		s.log.Info("listening", zap.String("event", "smtp.listen"), zap.String("addr", ln.Addr().String()))
		fmt.Fprintf(stdout, "pecgw: listening on %s\n", ln.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			// net.ErrClosed: stop closed our listener before Shutdown.
			if err := srv.Serve(ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				s.log.Error("listener stopped", zap.String("event", "smtp.error"), zap.Error(err))
			}
		}()
	}
	// Receipts whose hand-off failed after their envelope went out, and
	// whose client retried elsewhere or gave up (gateway/receipts.go).
	redeliver := time.NewTicker(redeliverEvery)
	defer redeliver.Stop()
	for {
		select {
		case <-redeliver.C:
			s.redeliver(ctx)
		case <-s.healed:
			// Transactions whose records failed while the log was broken
			// wait for the periodic run: run it at once.
			s.redeliver(ctx)
		case <-ctx.Done():
			s.stop()
			wg.Wait()
			if s.dovecot != nil {
				s.dovecot.Close()
			}
			if s.hashWorker != nil {
				s.hashWorker.Close()
			}
			return errors.Join(s.txlog.Close(), s.dedup.Close(), s.spool.Close())
		case <-hup:
			s.reload()
		}
	}
}

// stop closes the listeners, gives the sessions still open s.grace to
// end, closes those that did not, and gives them closeGrace to finish the
// transaction they were in.
func (s *server) stop() {
	s.log.Info("stopping", zap.String("event", "server.stop"))
	// Our listeners first: go-smtp's Shutdown closes only the listeners
	// its Serve has registered, and a Serve that had not begun when the
	// signal came would begin accepting after it, for ever (seen in the
	// crash test, a SIGTERM right after start).
	for _, ln := range s.lns {
		ln.Close()
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.grace)
	defer cancel()
	late := false
	for _, srv := range s.servers {
		// Only the end of the grace counts: Shutdown's other error is
		// the second close of a listener closed above.
		if err := srv.Shutdown(sctx); errors.Is(err, context.DeadlineExceeded) {
			late = true
		}
	}
	if !late {
		return
	}
	n := 0
	for _, t := range s.tracked {
		n += t.CloseConns()
	}
	s.log.Warn("connections still open at the end of the grace closed", zap.String("event", "server.stop"),
		zap.Int("connections", n), zap.Duration("grace", s.grace))
	cctx, ccancel := context.WithTimeout(context.Background(), closeGrace)
	defer ccancel()
	for _, t := range s.tracked {
		if !t.Wait(cctx) {
			s.log.Error("sessions still running after their connections closed; the log closes under them",
				zap.String("event", "server.stop"), zap.Int("connections", t.Open()))
		}
	}
}

// redeliver is the periodic run of the transactions that wait
// (gateway.Acceptor.RedeliverReceipts).
func (s *server) redeliver(ctx context.Context) {
	n, err := s.accept.RedeliverReceipts(ctx)
	if n > 0 {
		s.log.Info("acceptance receipts delivered late", zap.String("event", "delivery.redelivered"), zap.Int("receipts", n))
	}
	if err != nil {
		s.log.Warn("acceptance receipts still not delivered", zap.String("event", "delivery.error"), zap.Error(err))
	}
}

func (s *server) reload() {
	if s.users != nil {
		if u, err := gateway.LoadUsers(s.cfg.Users.File); err != nil {
			s.log.Error("users not reloaded", zap.String("event", "server.reload"), zap.Error(err))
		} else {
			s.users.Replace(u)
		}
	}
	// Verified passwords are forgotten: where the users are elsewhere
	// (Dovecot), nothing else tells that a password changed.
	s.guard.DropCache()
	if err := s.loadCert(); err != nil {
		s.log.Error("TLS certificate not reloaded", zap.String("event", "server.reload"), zap.Error(err))
	}
	s.log.Info("reloaded", zap.String("event", "server.reload"))
}

func (s *server) closeAll() {
	for _, ln := range s.lns {
		ln.Close()
	}
	if s.txlog != nil {
		s.txlog.Close()
	}
	if s.dedup != nil {
		s.dedup.Close()
	}
	if s.spool != nil {
		s.spool.Close()
	}
	if s.hashWorker != nil {
		s.hashWorker.Close()
	}
}

// setMemoryLimit gives Go's collector a soft limit (runtime/debug
// SetMemoryLimit) of the message budget plus 256 MiB for everything else
// (connections, caches), unless GOMEMLIMIT sets one: with GOGC alone, a
// finished message's copies wait for the next collection while the next
// message makes its own, and RSS reaches twice the budget
// (docs/configuration.md, limits.message_memory).
func (s *server) setMemoryLimit(budget int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := budget + 256<<20
	debug.SetMemoryLimit(limit)
	s.log.Info("message memory", zap.String("event", "server.start"), zap.Int64("message_memory", budget), zap.Int64("go_memory_limit", limit))
}

// logOptions are the transaction log's options: [log], with the Redis
// witness of the dedup store when it is Redis (log.witness_redis).
func logOptions(cfg *config.Config, sig logstore.CheckpointSigner, store dedup.Store) logstore.Options {
	lo := cfg.LogOptions(sig)
	if r, ok := store.(*dedup.Redis); ok && cfg.Log.WitnessRedis == "on" {
		lo.Witnesses = append(lo.Witnesses, r.Witness(cfg.LogName()))
	}
	return lo
}

// dedupStore opens the duplicate-submission store of [dedup]: embedded on
// one machine, Redis for several instances (a warning when Redis may
// evict keys: a lost key would let a retry certify a second message).
func dedupStore(cfg *config.Config, logger *zap.Logger) (dedup.Store, error) {
	d := cfg.Dedup
	if d.Store != "redis" {
		st, err := dedup.OpenEmbedded(d.Dir)
		if err != nil {
			return nil, fmt.Errorf("dedup.dir: %w", err)
		}
		return st, nil
	}
	opts := dedup.RedisOptions{Addrs: d.RedisAddrs, MasterName: d.RedisMasterName, Timeout: d.Timeout}
	if d.RedisPasswordFile != "" {
		pw, err := os.ReadFile(d.RedisPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("dedup.redis_password_file: %w", err)
		}
		opts.Password = strings.TrimRight(string(pw), "\r\n")
	}
	st, err := dedup.NewRedis(opts)
	if err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	warnings, err := st.CheckConfig(ctx)
	if err != nil {
		logger.Warn("redis not reachable at start", zap.String("event", "dedup.unavailable"), zap.Error(err))
	}
	for _, w := range warnings {
		logger.Warn(w, zap.String("event", "config.warning"))
	}
	return st, nil
}

// directory builds the PEC directory: our domains, the listed ones and
// the providers' index (RFC 6109 §5.3).
func directory(cfg *config.Config) (pec.Directory, error) {
	domains := append([]string(nil), cfg.Directory.Domains...)
	if cfg.Directory.LDIF != "" {
		data, err := os.ReadFile(cfg.Directory.LDIF)
		if err != nil {
			return nil, fmt.Errorf("directory.ldif: %w", err)
		}
		more, err := pec.ParseLDIF(data)
		if err != nil {
			return nil, fmt.Errorf("directory.ldif %s: %w", cfg.Directory.LDIF, err)
		}
		domains = append(domains, more...)
	}
	return pec.NewDomainDirectory(cfg.Provider.Domains, domains), nil
}

// targets builds the hand-off targets of [delivery].
func targets(cfg *config.Config) (outbound, mailboxes delivery.Target, err error) {
	if cfg.Delivery.Mode != "smtp" {
		local := delivery.NewLocal(cfg.Delivery.Maildir)
		return local.Outbound(), local.Mailboxes(), nil
	}
	e := cfg.Delivery.Envelopes
	so := delivery.SMTPOptions{Address: e.Address, TLS: e.TLS, ServerName: e.ServerName, Username: e.Username, HelloName: cfg.Listen.Hostname}
	if e.PasswordFile != "" {
		pw, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return nil, nil, fmt.Errorf("delivery.envelopes.password_file: %w", err)
		}
		so.Password = strings.TrimRight(string(pw), "\r\n")
	}
	if err := so.Validate(); err != nil {
		return nil, nil, fmt.Errorf("delivery.envelopes: %w", err)
	}
	r := cfg.Delivery.Receipts
	if r.Protocol == "lmtp" {
		lo := delivery.LMTPOptions{Address: r.Address, HelloName: cfg.Listen.Hostname}
		if err := lo.Validate(); err != nil {
			return nil, nil, fmt.Errorf("delivery.receipts: %w", err)
		}
		return delivery.NewSMTP(so), delivery.NewLMTP(lo), nil
	}
	ro := so
	ro.Address = r.Address
	if err := ro.Validate(); err != nil {
		return nil, nil, fmt.Errorf("delivery.receipts: %w", err)
	}
	return delivery.NewSMTP(so), delivery.NewSMTP(ro), nil
}

// newLogger is the operational log (zap, stderr): console or JSON, no
// sampling, so no transaction event is ever dropped.
func newLogger(cfg *config.Config, stderr io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.Logging.Level)
	if err != nil {
		return nil, fmt.Errorf("logging.level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Logging.Format == "json" {
		enc = zapcore.NewJSONEncoder(ec)
	} else {
		enc = zapcore.NewConsoleEncoder(ec)
	}
	// Lock: entries come from every session's goroutine, and the writer
	// (a bytes.Buffer in tests, a pipe under systemd) is not safe for
	// concurrent writes; without it entries could interleave.
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(stderr)), level)), nil
}

// zapErrorLog routes go-smtp's own error log to zap.
type zapErrorLog struct{ l *zap.Logger }

func (z zapErrorLog) Printf(format string, v ...any) {
	z.l.Warn(fmt.Sprintf(format, v...), zap.String("event", "smtp.error"))
}
func (z zapErrorLog) Println(v ...any) { z.l.Warn(fmt.Sprint(v...), zap.String("event", "smtp.error")) }
