package pdsim_test

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// The real client against the simulator: the two were written from the
// same document without sharing types, so agreement here checks both.

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func setup(t *testing.T, opts pdsim.Options) (*pdsim.Server, *pd.Client, *clock) {
	t.Helper()
	clk := &clock{now: time.Date(2026, 11, 22, 5, 40, 0, 0, time.UTC)}
	opts.Now = clk.Now
	sim := pdsim.New(opts)
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	client, err := pd.New(srv.URL, pd.Options{Retries: 1, Backoff: time.Millisecond, Timeout: 5 * time.Second})
	require.NoError(t, err)
	return sim, client, clk
}

func TestClientAgainstSim_StoreLifecycle(t *testing.T) {
	ctx := context.Background()
	sim, c, clk := setup(t, pdsim.Options{DrainDelay: 10 * time.Second, CheckInterval: time.Second, DownAfter: time.Minute})
	for _, pod := range []string{"demo-tikv-0", "demo-tikv-1", "demo-tikv-2", "demo-tikv-3"} {
		sim.RegisterStore(pod + ".demo-tikv-peer.tidb.svc:20160")
	}
	require.NoError(t, sim.SetRegions(4, 20))

	stores, err := c.Stores(ctx)
	require.NoError(t, err)
	require.Len(t, stores, 4)
	for i, s := range stores {
		require.Equal(t, uint64(i+1), s.ID)
		require.Equal(t, pd.PhaseUp, s.Phase())
		require.Equal(t, pd.StoreUp, s.State, "omitted state decodes as Up")
		require.Equal(t, "demo-tikv-"+string(rune('0'+i)), s.PodName())
		require.Equal(t, clk.Now(), s.LastHeartbeat)
	}

	// Offline, draining.
	require.NoError(t, c.DeleteStore(ctx, 4))
	s, err := c.Store(ctx, 4)
	require.NoError(t, err)
	require.Equal(t, pd.PhaseOffline, s.Phase())
	require.Equal(t, pd.NodeRemoving, s.NodeState)
	require.Equal(t, 20, s.RegionCount)
	require.False(t, s.IsTombstone())

	// The next delete would leave 2 Up stores for 3 replicas.
	var refused *pd.RefusedError
	require.ErrorAs(t, c.DeleteStore(ctx, 3), &refused)
	require.Contains(t, refused.Message, "would be 2 while need 3")

	// Drained and buried.
	clk.Advance(11 * time.Second)
	s, err = c.Store(ctx, 4)
	require.NoError(t, err)
	require.Equal(t, pd.PhaseTombstone, s.Phase())
	require.True(t, s.IsTombstone())
	require.Zero(t, s.RegionCount)
	require.ErrorIs(t, c.DeleteStore(ctx, 4), pd.ErrStoreRemoved)

	up, err := c.Stores(ctx, pd.StoreUp, pd.StoreOffline)
	require.NoError(t, err)
	require.Len(t, up, 3, "Tombstones only when asked for")
	tomb, err := c.Stores(ctx, pd.StoreTombstone)
	require.NoError(t, err)
	require.Len(t, tomb, 1)
	require.Equal(t, uint64(4), tomb[0].ID)

	// The pod comes back on a fresh disk: a new store.
	require.Equal(t, uint64(5), sim.RegisterStore("demo-tikv-3.demo-tikv-peer.tidb.svc:20160"))
	all, err := c.Stores(ctx)
	require.NoError(t, err)
	require.Len(t, all, 5)
	require.Equal(t, all[3].PodName(), all[4].PodName())

	// Unknown ids.
	_, err = c.Store(ctx, 99)
	require.ErrorIs(t, err, pd.ErrStoreNotFound)
	require.ErrorIs(t, c.DeleteStore(ctx, 99), pd.ErrStoreNotFound)
}

func TestClientAgainstSim_DisconnectedAndDown(t *testing.T) {
	ctx := context.Background()
	sim, c, clk := setup(t, pdsim.Options{DownAfter: time.Minute})
	id := sim.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	require.NoError(t, sim.StopHeartbeats(id))
	silentSince := clk.Now()

	for _, step := range []struct {
		advance time.Duration
		want    pd.Phase
	}{
		{20 * time.Second, pd.PhaseUp},
		{time.Second, pd.PhaseDisconnected},
		{40 * time.Second, pd.PhaseDown},
	} {
		clk.Advance(step.advance)
		s, err := c.Store(ctx, id)
		require.NoError(t, err)
		require.Equal(t, step.want, s.Phase())
		require.Equal(t, pd.StoreUp, s.State, "PD keeps state 0; only state_name changes")
		require.Equal(t, silentSince, s.LastHeartbeat)
	}
	stores, err := c.Stores(ctx, pd.StoreUp)
	require.NoError(t, err)
	require.Len(t, stores, 1, "a Down store is Up for the state filter")
}

func TestClientAgainstSim_MembersHealthPing(t *testing.T) {
	ctx := context.Background()
	sim, c, _ := setup(t, pdsim.Options{Members: []string{"demo-pd-0", "demo-pd-1"}})

	m, err := c.Members(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(pdsim.DefaultClusterID), m.ClusterID)
	require.Len(t, m.Members, 2)
	require.Equal(t, uint64(1<<63+1), m.Members[0].MemberID, "ids above 2^63 survive decoding")
	require.Equal(t, []string{"http://demo-pd-1:2379"}, m.Members[1].ClientURLs)
	require.NotNil(t, m.Leader)
	require.Equal(t, "demo-pd-0", m.Leader.Name)

	require.NoError(t, sim.RemoveMember("demo-pd-0"))
	m, err = c.Members(ctx)
	require.NoError(t, err)
	require.Len(t, m.Members, 1)
	require.Equal(t, "demo-pd-1", m.Leader.Name)

	h, err := c.Health(ctx)
	require.NoError(t, err)
	require.Equal(t, []pd.MemberHealth{{Name: "demo-pd-1", MemberID: 1<<63 + 2, ClientURLs: []string{"http://demo-pd-1:2379"}, Health: true}}, h)
	require.NoError(t, c.Ping(ctx))
}

func TestClientAgainstSim_UnavailablePDIsAnErrorNeverZeroValues(t *testing.T) {
	ctx := context.Background()
	sim, c, _ := setup(t, pdsim.Options{})
	sim.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	sim.SetUnavailable(true)

	stores, err := c.Stores(ctx)
	require.Error(t, err)
	require.Nil(t, stores)
	var se *pd.StatusError
	require.ErrorAs(t, err, &se)
	require.Equal(t, 503, se.Status)

	s, err := c.Store(ctx, 1)
	require.Error(t, err)
	require.Zero(t, s)
	require.NotErrorIs(t, err, pd.ErrStoreNotFound)
	require.Error(t, c.DeleteStore(ctx, 1))
	_, err = c.Members(ctx)
	require.Error(t, err)
	_, err = c.Health(ctx)
	require.Error(t, err)
	require.Error(t, c.Ping(ctx))
}

func TestClientAgainstSim_GarbageIsADecodeError(t *testing.T) {
	ctx := context.Background()
	sim, c, _ := setup(t, pdsim.Options{MaxReplicas: 1})
	sim.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	sim.SetGarbage(true)

	stores, err := c.Stores(ctx)
	require.ErrorIs(t, err, pd.ErrInvalidResponse)
	require.Nil(t, stores)
	s, err := c.Store(ctx, 1)
	require.ErrorIs(t, err, pd.ErrInvalidResponse)
	require.Zero(t, s)
	require.ErrorIs(t, c.DeleteStore(ctx, 1), pd.ErrInvalidResponse, "garbage is not an acknowledgement")
	_, err = c.Members(ctx)
	require.ErrorIs(t, err, pd.ErrInvalidResponse)
	_, err = c.Health(ctx)
	require.ErrorIs(t, err, pd.ErrInvalidResponse)

	sim.SetGarbage(false)
	snap, ok := sim.Store(1)
	require.True(t, ok)
	require.Equal(t, "Up", snap.StateName)
}

func TestClientAgainstSim_ClusterIDTellsARebuiltPDApart(t *testing.T) {
	ctx := context.Background()
	sim, c, _ := setup(t, pdsim.Options{MaxReplicas: 1})

	// Before any TiKV joined: an error, never an empty list or "not found".
	stores, err := c.Stores(ctx)
	require.ErrorIs(t, err, pd.ErrNotBootstrapped)
	require.Nil(t, stores)
	_, err = c.Store(ctx, 1)
	require.ErrorIs(t, err, pd.ErrNotBootstrapped)
	require.NotErrorIs(t, err, pd.ErrStoreNotFound)
	require.ErrorIs(t, c.DeleteStore(ctx, 1), pd.ErrNotBootstrapped)

	id, err := c.ClusterID(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(pdsim.DefaultClusterID), id, "exact above 2^53")
	m, err := c.Members(ctx)
	require.NoError(t, err)
	require.Equal(t, id, m.ClusterID)

	old := sim.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	s, err := c.Store(ctx, old)
	require.NoError(t, err)
	require.Equal(t, pd.NodePreparing, s.NodeState)
	require.Equal(t, pd.PhaseUp, s.Phase(), "a Preparing store is Up to the controller")

	// PD rebuilt from scratch: a new cluster ID, and store 1 is someone else.
	require.NoError(t, sim.Rebuild(pdsim.RebuildOptions{ClusterID: 7700000000000000077}))
	_, err = c.Store(ctx, old)
	require.ErrorIs(t, err, pd.ErrNotBootstrapped)
	require.Equal(t, old, sim.RegisterStore("other-tikv-0.other-tikv-peer.tidb.svc:20160"))
	s, err = c.Store(ctx, old)
	require.NoError(t, err)
	require.Equal(t, "other-tikv-0", s.PodName())
	id, err = c.ClusterID(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(7700000000000000077), id, "only the cluster ID tells the answers apart")
	m, err = c.Members(ctx)
	require.NoError(t, err)
	require.Equal(t, id, m.ClusterID)
}
