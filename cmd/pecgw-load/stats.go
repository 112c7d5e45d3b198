package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Latency is the distribution of one kind of sample: nearest-rank
// percentiles (the smallest sample with at least p% of the samples at or
// below it), so p50 <= p90 <= p99 <= max always.
type Latency struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

func summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Latency{N: len(s), P50: percentile(s, 50), P90: percentile(s, 90), P99: percentile(s, 99), Max: s[len(s)-1]}
}

// percentile of sorted samples, by nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func (l Latency) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		N   int     `json:"n"`
		P50 float64 `json:"p50_ms"`
		P90 float64 `json:"p90_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	}{l.N, ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max)})
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

func fmtMs(d time.Duration) string {
	switch {
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0fms", ms(d))
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", ms(d))
	}
	return fmt.Sprintf("%.2fms", ms(d))
}

// latencyTable writes rows of latencies under one header line.
func latencyTable(w io.Writer, indent string, rows []string, ls []Latency) {
	width := 0
	for _, r := range rows {
		width = max(width, len(r))
	}
	fmt.Fprintf(w, "%s%-*s %7s %9s %9s %9s %9s\n", indent, width, "", "n", "p50", "p90", "p99", "max")
	for i, r := range rows {
		l := ls[i]
		if l.N == 0 {
			fmt.Fprintf(w, "%s%-*s %7d %9s %9s %9s %9s\n", indent, width, r, 0, "-", "-", "-", "-")
			continue
		}
		fmt.Fprintf(w, "%s%-*s %7d %9s %9s %9s %9s\n", indent, width, r, l.N, fmtMs(l.P50), fmtMs(l.P90), fmtMs(l.P99), fmtMs(l.Max))
	}
}

// printResult writes r for a person.
func printResult(w io.Writer, r *Result) {
	state := ""
	if r.Interrupted {
		state = " (interrupted: what was measured until then)"
	}
	fmt.Fprintf(w, "pecgw-load run: %s, %s, %s, %d clients, %d-octet messages%s\n",
		r.Addr, tlsName(r.TLS), r.Mode, r.Clients, r.Size, state)
	fmt.Fprintf(w, "messages sent: %d of %d attempts in %.2fs: %.1f messages/s\n", r.Sent, r.Attempts, r.ElapsedS, r.Rate)
	printErrors(w, "", r)
	latencyTable(w, "", []string{"session set-up", "AUTH", "message"}, []Latency{r.Setup, r.Auth, r.Message})
}

func printErrors(w io.Writer, indent string, r *Result) {
	if r.Failed == 0 {
		fmt.Fprintf(w, "%serrors: none\n", indent)
		return
	}
	fmt.Fprintf(w, "%serrors: %d\n", indent, r.Failed)
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s  %-18s %6d  e.g. %s\n", indent, k, r.Errors[k], r.ErrorExamples[k])
	}
}

func tlsName(mode string) string {
	if mode == TLSStartTLS {
		return "STARTTLS"
	}
	return "implicit TLS"
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", x)
}

// printRound writes one round of a comparison on one line.
func printRound(w io.Writer, rd Round) {
	r := rd.Result
	errs := "0 errors"
	if r.Failed > 0 {
		parts := []string{}
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s ×%d", k, r.Errors[k]))
		}
		errs = fmt.Sprintf("%d errors (%s)", r.Failed, strings.Join(parts, ", "))
	}
	state := ""
	if r.Interrupted {
		state = " (interrupted)"
	}
	auth := "-"
	if r.Auth.N > 0 {
		auth = fmt.Sprintf("p50 %s p99 %s", fmtMs(r.Auth.P50), fmtMs(r.Auth.P99))
	}
	fmt.Fprintf(w, "round %2d  %-5s %-21s %6d sent in %5.2fs %8.1f msg/s  AUTH %s  %s%s\n",
		rd.N, rd.Target, r.Addr, r.Sent, r.ElapsedS, r.Rate, auth, errs, state)
}

// printCompare writes the summary of a comparison (the rounds were
// printed as they ended).
func printCompare(w io.Writer, c *CompareResult) {
	fmt.Fprintln(w)
	if len(c.Ratios) == 0 {
		fmt.Fprintln(w, "pecgw/bare messages/s: no complete pair of rounds")
	} else {
		parts := make([]string, len(c.Ratios))
		for i, x := range c.Ratios {
			parts[i] = fmtRatio(x)
		}
		fmt.Fprintf(w, "pecgw/bare messages/s: median %s (min %s – max %s) over %d pairs [%s]\n",
			fmtRatio(c.Ratio.Median), fmtRatio(c.Ratio.Min), fmtRatio(c.Ratio.Max), len(c.Ratios), strings.Join(parts, " "))
	}
	fmt.Fprintf(w, "messages/s, median of rounds: pecgw %.1f, bare %.1f\n", c.PecgwTotal.MedianRate, c.BareTotal.MedianRate)
	fmt.Fprintln(w, "AUTH latency (all rounds):")
	latencyTable(w, "  ", []string{"pecgw", "bare"}, []Latency{c.PecgwTotal.Auth, c.BareTotal.Auth})
	fmt.Fprintln(w, "message latency (all rounds):")
	latencyTable(w, "  ", []string{"pecgw", "bare"}, []Latency{c.PecgwTotal.Message, c.BareTotal.Message})
	fmt.Fprintf(w, "sent: pecgw %d, bare %d; errors: pecgw %d, bare %d\n",
		c.PecgwTotal.Sent, c.BareTotal.Sent, c.PecgwTotal.Failed, c.BareTotal.Failed)
	if c.Interrupted {
		fmt.Fprintln(w, "interrupted: the summary covers the rounds above")
	}
	for _, f := range c.Failures {
		fmt.Fprintln(w, "FAIL:", f)
	}
}

// median of xs (the mean of the two middle ones for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
