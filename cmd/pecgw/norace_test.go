//go:build !race

package main

// raceEnabled: built with -race (timed tests under attack skip; .ci/run runs them on their own).
const raceEnabled = false
