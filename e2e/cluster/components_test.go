package cluster

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// Ports from the ephemeral range can be taken by any outgoing connection
// between the pick and the server's bind; environments running side by
// side make many such connections.
func TestFreePorts_PicksDistinctBindablePortsBelowTheEphemeralRange(t *testing.T) {
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
			seen[p] = true
		}
		byPick := map[int]bool{}
		for _, p := range got {
			require.False(t, byPick[p], "port %d handed out twice in one pick: %v", p, got)
			byPick[p] = true
		}
	}
	require.Greater(t, len(seen), 60, "picks are not spread out")
}

func TestFreePorts_PassesOverAPortAlreadyBound(t *testing.T) {
	var held []net.Listener
	t.Cleanup(func() {
		for _, l := range held {
			l.Close()
		}
	})
	bound := map[int]bool{}
	for range 50 {
		got, err := FreePorts(1)
		require.NoError(t, err)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(got[0]))
		require.NoError(t, err, "port %d was not free", got[0])
		held = append(held, l)
		require.False(t, bound[got[0]], "port %d is bound and was picked again", got[0])
		bound[got[0]] = true
	}
}
