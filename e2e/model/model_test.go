package model

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	seedFlag     = flag.Uint64("seed", 0, "replay only the history of this seed")
	stepsFlag    = flag.Int("steps", 400, "steps per history")
	fixedFlag    = flag.Int("model.fixed", 6, "how many fixed seeds to run before the random ones")
	historyFlag  = flag.Bool("model.history", false, "print the whole history of every run (use with -seed)")
	durationFlag = flag.Duration("model.duration", 0, "after the fixed seeds and one random seed, keep running random histories this long")
)

// fixedSeeds are checked on every run; their histories are the same on
// every machine.
var fixedSeeds = []uint64{1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233}

func TestModel(t *testing.T) {
	stats := &Stats{}
	start := time.Now()
	run := func(seed uint64) bool {
		t.Helper()
		dir, err := os.MkdirTemp(scratch(), "tidb-localpv-model-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		v, hist, err := Run(Config{Seed: seed, Steps: *stepsFlag, Dir: dir, FullHistory: *historyFlag}, stats)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if *historyFlag && v == nil {
			fmt.Print(hist)
		}
		if v != nil {
			t.Errorf("%v\n\nshortened history (the last 40 steps, and earlier ones touching %v):\n%s\nreplay: go test ./e2e/model/ -run TestModel -seed=%d -steps=%d -v",
				v, v.Objects, hist, v.Seed, *stepsFlag)
			return false
		}
		return true
	}
	defer func() {
		fmt.Printf("model check: %s of up to %d steps in %s\n%s", plural(stats.Histories, "history", "histories"), *stepsFlag, time.Since(start).Round(time.Millisecond), stats)
		fmt.Println("invariants checked after every step and at each action of ours:")
		for _, inv := range []string{inv1, inv2, inv3, inv4} {
			fmt.Println("  " + inv)
		}
	}()
	if *seedFlag != 0 {
		run(*seedFlag)
		return
	}
	for _, s := range fixedSeeds[:min(*fixedFlag, len(fixedSeeds))] {
		if !run(s) {
			return
		}
	}
	random := uint64(time.Now().UnixNano())
	fmt.Printf("model check: random seed %d\n", random)
	if !run(random) {
		return
	}
	for deadline := start.Add(*durationFlag); time.Now().Before(deadline); {
		random++
		if !run(random) {
			return
		}
	}
	if stats.Count("disks recycled (Wiped events)") == 0 || stats.Count("claims released") == 0 {
		t.Errorf("the histories recycled nothing (wipes %d, releases %d): the model is not exercising the code", stats.Count("disks recycled (Wiped events)"), stats.Count("claims released"))
	}
}

// scratch is where the simulated disks go: a tmpfs when there is one, as
// the many small durable writes (markers, records) cost nothing there.
func scratch() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", ".probe-*"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/dev/shm"
		}
	}
	return ""
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// A failure is only as useful as its replay: the same seed must give the
// same history, step for step. An agent crashed in the middle of a wipe
// leaves real goroutines racing its cancelled context (a wipe, bounded disk
// probes), so such a history replays the same steps but its log may word
// their outcome differently; the test replays a history without one.
func TestModel_AHistoryReplaysExactlyFromItsSeed(t *testing.T) {
	durations := regexp.MustCompile(`in [0-9.]+(ns|µs|ms|s)\b`)
	// The agent bounds disk I/O by the wall clock (a hung disk hangs in
	// real time), and says since when: not part of the history.
	wallClock := regexp.MustCompile(`started [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z`)
	play := func(seed uint64) string {
		dir, err := os.MkdirTemp(scratch(), "tidb-localpv-model-")
		require.NoError(t, err)
		defer os.RemoveAll(dir)
		_, hist, err := Run(Config{Seed: seed, Steps: 250, Dir: dir, FullHistory: true}, &Stats{})
		require.NoError(t, err)
		hist = wallClock.ReplaceAllString(strings.ReplaceAll(hist, dir, "<dir>"), "started <wall clock>")
		return durations.ReplaceAllString(hist, "in <t>")
	}
	for seed := uint64(34); seed < 64; seed++ {
		first := play(seed)
		if strings.Contains(first, "crashes in the middle of a Delete") {
			continue
		}
		require.Contains(t, first, "step 250")
		require.Equal(t, first, play(seed), "seed %d", seed)
		return
	}
	t.Fatal("every seed from 34 to 63 crashes an agent mid-wipe: pick others")
}
