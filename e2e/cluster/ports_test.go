package cluster

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Ports from the ephemeral range can be taken by any outgoing connection
// between the pick and the server's bind; environments running side by
// side make many such connections.
func TestFreePorts_PicksDistinctBindablePortsBelowTheEphemeralRange(t *testing.T) {
	t.Setenv("TIDB_LOCALPV_CACHE", t.TempDir())
	low := ephemeralLow()
	if low-lowestPickedPort < 1000 {
		t.Skipf("the ephemeral range starts at %d: FreePorts lets the kernel choose", low)
	}
	seen := map[int]bool{}
	for range 20 {
		got, err := FreePorts(6)
		require.NoError(t, err)
		require.Len(t, got, 6)
		for _, p := range got {
			require.GreaterOrEqual(t, p, lowestPickedPort)
			require.Less(t, p, low, "port %d is in the ephemeral range", p)
			require.False(t, seen[p], "port %d handed out twice while its lease lasts", p)
			seen[p] = true
		}
	}
}

func TestFreePorts_PassesOverAPortAlreadyBound(t *testing.T) {
	base := freeRange(t, 30)
	var held []net.Listener
	t.Cleanup(func() {
		for _, l := range held {
			l.Close()
		}
	})
	// Bind 29 of the 30 ports: the pick must find the one left.
	for p := base; p < base+29; p++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		require.NoError(t, err)
		held = append(held, l)
	}
	book := portBook{dir: t.TempDir(), low: base, high: base + 30, now: time.Now}
	got, err := book.pick(1)
	require.NoError(t, err)
	require.Equal(t, []int{base + 29}, got)
}

// Two environments that pick at once — in one process or two — must not
// get the same port: the first has not bound its ports yet, so a bind
// check alone cannot tell (a kwok once failed with "address already in
// use" on a port another environment had picked too).
func TestFreePorts_PicksSideBySideNeverHandOutTheSamePort(t *testing.T) {
	dir := t.TempDir()
	base := freeRange(t, 100)
	const pickers, each = 8, 10
	var (
		mu   sync.Mutex
		all  []int
		errs []error
		wg   sync.WaitGroup
	)
	for range pickers {
		wg.Go(func() {
			// A book of its own, as another process would have.
			book := portBook{dir: dir, low: base, high: base + 100, now: time.Now}
			got, err := book.pick(each)
			mu.Lock()
			defer mu.Unlock()
			all = append(all, got...)
			errs = append(errs, err)
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	seen := map[int]bool{}
	for _, p := range all {
		require.False(t, seen[p], "port %d handed out twice: %v", p, all)
		seen[p] = true
	}
	require.Len(t, seen, pickers*each)
}

func TestFreePorts_ALeasedPortComesBackOnlyAfterItsLease(t *testing.T) {
	base := freeRange(t, 20)
	now := time.Unix(1_800_000_000, 0)
	book := portBook{dir: t.TempDir(), low: base, high: base + 20, now: func() time.Time { return now }}
	got := map[int]bool{}
	for range 20 {
		p, err := book.pick(1)
		require.NoError(t, err)
		got[p[0]] = true
	}
	require.Len(t, got, 20, "every port of the range once")

	// None is bound, yet all are promised.
	_, err := book.pick(1)
	require.ErrorContains(t, err, "neither bound nor leased")

	now = now.Add(portLease - time.Second)
	_, err = book.pick(1)
	require.Error(t, err, "a lease lasts portLease")

	now = now.Add(2 * time.Second)
	p, err := book.pick(1)
	require.NoError(t, err)
	require.True(t, got[p[0]])
}

func TestFreePorts_ADamagedBookLosesOnlyItsLeases(t *testing.T) {
	dir := t.TempDir()
	base := freeRange(t, 10)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ports.json"), []byte("{not json"), 0o644))
	book := portBook{dir: dir, low: base, high: base + 10, now: time.Now}
	got, err := book.pick(3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	again, err := book.pick(7)
	require.NoError(t, err)
	for _, p := range got {
		require.NotContains(t, again, p, "the book was written anew with the first pick's leases")
	}
}

// freeRange finds n consecutive ports below the ephemeral range that are
// all free now.
func freeRange(t *testing.T, n int) int {
	t.Helper()
	for base := 20000; base+n < 32000; base += n {
		free := true
		for p := base; p < base+n && free; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports in [20000, 32000)", n)
	return 0
}
