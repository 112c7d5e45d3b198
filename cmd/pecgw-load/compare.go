package main

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// CompareConfig is a comparison: rounds of the same load against pecgw
// and against a bare go-smtp server, alternated.
type CompareConfig struct {
	Load      Config // the load of each round; Addr is set per round
	Pecgw     string // host:port of pecgw
	Bare      string // host:port of the bare server
	Rounds    int    // pairs of rounds: pecgw, bare, pecgw, bare, ...
	Round     time.Duration
	MaxErrors int // a round with more errors fails the comparison
}

// Round is one round of a comparison.
type Round struct {
	N      int     `json:"n"`    // 1, 2, ... in the order they ran
	Pair   int     `json:"pair"` // 1, 2, ...: the pecgw round and the bare round after it
	Target string  `json:"target"`
	Result *Result `json:"result"`
}

// CompareResult is what a comparison measured.
type CompareResult struct {
	Pecgw  string    `json:"pecgw"`
	Bare   string    `json:"bare"`
	Rounds []Round   `json:"rounds"`
	Order  []string  `json:"order"`  // the target of each round, as they ran
	Ratios []float64 `json:"ratios"` // pecgw/bare messages/s of each complete pair
	Ratio  struct {
		Median float64 `json:"median"`
		Min    float64 `json:"min"`
		Max    float64 `json:"max"`
	} `json:"ratio"` // zero when no pair is complete
	PecgwTotal  TargetTotal `json:"pecgw_total"`
	BareTotal   TargetTotal `json:"bare_total"`
	Interrupted bool        `json:"interrupted"`
	Failures    []string    `json:"failures,omitempty"` // rounds with more errors than MaxErrors
}

// TargetTotal sums the rounds of one server.
type TargetTotal struct {
	Sent       int     `json:"sent"`
	Failed     int     `json:"errors"`
	MedianRate float64 `json:"median_messages_per_s"`
	Auth       Latency `json:"auth"`    // over the samples of all its rounds
	Message    Latency `json:"message"` // idem
}

const (
	targetPecgw = "pecgw"
	targetBare  = "bare"
)

func (cc *CompareConfig) validate() error {
	switch {
	case cc.Pecgw == "":
		return usagef("--pecgw is required")
	case !validHostPort(cc.Pecgw):
		return usagef("--pecgw must be HOST:PORT, got %q", cc.Pecgw)
	case cc.Bare == "":
		return usagef("--bare is required")
	case !validHostPort(cc.Bare):
		return usagef("--bare must be HOST:PORT, got %q", cc.Bare)
	case cc.Rounds < 1 || cc.Rounds > 1000:
		return usagef("--rounds must be between 1 and 1000, got %d", cc.Rounds)
	case cc.Load.Messages == 0 && cc.Round <= 0:
		return usagef("--round must be positive, got %v", cc.Round)
	case cc.MaxErrors < 0:
		return usagef("--max-errors must be 0 or more, got %d", cc.MaxErrors)
	}
	l := cc.Load
	l.Addr = cc.Pecgw
	if l.Messages == 0 {
		l.Duration = cc.Round
	}
	return l.validate()
}

// Compare runs the rounds, pecgw first in each pair, and calls progress
// (if not nil) after each. When ctx ends it stops and returns what the
// rounds until then measured (Interrupted).
func Compare(ctx context.Context, cc CompareConfig, progress func(Round)) (*CompareResult, error) {
	if err := cc.validate(); err != nil {
		return nil, err
	}
	res := &CompareResult{Pecgw: cc.Pecgw, Bare: cc.Bare, Order: []string{}, Ratios: []float64{}}
	byPair := map[int]map[string]*Result{}
outer:
	for pair := 1; pair <= cc.Rounds; pair++ {
		for _, t := range []struct{ name, addr string }{{targetPecgw, cc.Pecgw}, {targetBare, cc.Bare}} {
			if ctx.Err() != nil {
				res.Interrupted = true
				break outer
			}
			cfg := cc.Load
			cfg.Addr = t.addr
			cfg.RunID = "" // a new one per round: no Message-ID twice
			if cfg.Messages == 0 {
				cfg.Duration = cc.Round
			}
			r, err := Run(ctx, cfg)
			if err != nil {
				return nil, err
			}
			rd := Round{N: len(res.Rounds) + 1, Pair: pair, Target: t.name, Result: r}
			res.Rounds = append(res.Rounds, rd)
			res.Order = append(res.Order, t.name)
			if r.Failed > cc.MaxErrors {
				res.Failures = append(res.Failures, fmt.Sprintf("round %d (%s, %s): %d errors, more than --max-errors %d",
					rd.N, t.name, t.addr, r.Failed, cc.MaxErrors))
			}
			if progress != nil {
				progress(rd)
			}
			if r.Interrupted {
				res.Interrupted = true
				break outer
			}
			if byPair[pair] == nil {
				byPair[pair] = map[string]*Result{}
			}
			byPair[pair][t.name] = r
		}
	}
	for pair := 1; pair <= cc.Rounds; pair++ {
		p, b := byPair[pair][targetPecgw], byPair[pair][targetBare]
		if p == nil || b == nil || b.Rate <= 0 {
			continue
		}
		res.Ratios = append(res.Ratios, p.Rate/b.Rate)
	}
	if len(res.Ratios) > 0 {
		res.Ratio.Median = median(res.Ratios)
		res.Ratio.Min = slices.Min(res.Ratios)
		res.Ratio.Max = slices.Max(res.Ratios)
	}
	res.PecgwTotal = total(res.Rounds, targetPecgw)
	res.BareTotal = total(res.Rounds, targetBare)
	return res, nil
}

func total(rounds []Round, target string) TargetTotal {
	var t TargetTotal
	var auth, msg []time.Duration
	var rates []float64
	for _, rd := range rounds {
		if rd.Target != target {
			continue
		}
		r := rd.Result
		t.Sent += r.Sent
		t.Failed += r.Failed
		if !r.Interrupted {
			rates = append(rates, r.Rate)
		}
		auth = append(auth, r.authSamples...)
		msg = append(msg, r.messageSamples...)
	}
	if len(rates) > 0 {
		t.MedianRate = median(rates)
	}
	t.Auth = summarize(auth)
	t.Message = summarize(msg)
	return t
}
