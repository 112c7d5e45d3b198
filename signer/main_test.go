package signer

import (
	"flag"
	"os"
	"testing"
)

// TestMain shortens the fuzzer's minimisation of each new input from 60 s
// to 5 s unless -fuzzminimizetime is given: Verify runs real cryptography
// over messages of a few kilobytes, so a 60 s minimisation of the first
// interesting input would otherwise use up a whole 60 s fuzzing run.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.fuzzminimizetime" })
	if !set {
		if err := flag.Set("test.fuzzminimizetime", "5s"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
