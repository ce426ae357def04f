package pdsim

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLifecycle_DeleteDrainsThenTombstone(t *testing.T) {
	s, clock := newSim(t, Options{})
	ids := registerN(s, 4)
	require.NoError(t, s.SetRegions(ids[3], 100))
	clock.Advance(time.Second) // delete off a check tick: t0+1s

	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/4", "")
	require.Equal(t, http.StatusOK, code)
	st := mustStore(t, s, 4)
	require.Equal(t, 1, st.State)
	require.Equal(t, 2, st.NodeState)
	require.Equal(t, "Offline", st.StateName)
	require.Equal(t, 100, st.RegionCount)

	clock.Advance(5 * time.Second) // half of the 10s drain
	require.Equal(t, 50, mustStore(t, s, 4).RegionCount)
	clock.Advance(4*time.Second + 999*time.Millisecond)
	require.Equal(t, 1, mustStore(t, s, 4).RegionCount, "not empty until the last region moved")

	// Drained at t0+11s; checks run at multiples of 4s, so burial is t0+12s.
	clock.Advance(time.Millisecond)
	st = mustStore(t, s, 4)
	require.Equal(t, "Offline", st.StateName)
	require.Zero(t, st.RegionCount)
	clock.Advance(time.Second - time.Nanosecond)
	require.Equal(t, "Offline", mustStore(t, s, 4).StateName)
	clock.Advance(time.Nanosecond)
	st = mustStore(t, s, 4)
	require.Equal(t, 2, st.State)
	require.Equal(t, 3, st.NodeState)
	require.Equal(t, "Tombstone", st.StateName)
	require.False(t, st.Heartbeating)
	require.Equal(t, t0.Add(12*time.Second), st.LastHeartbeat)

	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/4", "")
	require.Equal(t, http.StatusGone, code)
	require.JSONEq(t, `"[PD:core:ErrStoreRemoved]store 4 has been removed"`, body)
	require.ErrorIs(t, s.Heartbeat(4), ErrTombstone, "PD refuses a buried store's heartbeats")
}

func TestLifecycle_RefusesBelowMaxReplicas(t *testing.T) {
	s, _ := newSim(t, Options{})
	registerN(s, 3)
	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/1", "")
	require.Equal(t, http.StatusBadRequest, code)
	require.JSONEq(t, `"[PD:core:ErrStoresNotEnough]can not remove store 1 since the number of up stores would be 2 while need 3"`, body)
	require.Equal(t, "Up", mustStore(t, s, 1).StateName)

	// Down stores are still Up for this count.
	s.RegisterStore("demo-tikv-3.demo-tikv-peer.tidb.svc:20160")
	require.NoError(t, s.StopHeartbeats(4))
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/store/4", "")
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/store/3", "")
	require.Equal(t, http.StatusBadRequest, code, "Offline stores do not count as Up")

	// ?force skips the check: the operator says the machine is gone.
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/store/3?force=true", "")
	require.Equal(t, http.StatusOK, code)
	require.True(t, mustStore(t, s, 3).PhysicallyDestroyed)
}

func TestLifecycle_DeleteTwiceAndDestroyedStores(t *testing.T) {
	s, _ := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 3)
	for _, target := range []string{"/pd/api/v1/store/2", "/pd/api/v1/store/2", "/pd/api/v1/store/2?force", "/pd/api/v1/store/2?force"} {
		code, _ := call(t, s, http.MethodDelete, target, "")
		require.Equal(t, http.StatusOK, code, target)
	}
	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusBadRequest, code, "a destroyed store cannot be un-forced")
	require.Contains(t, body, "physically destroyed")
	code, _ = call(t, s, http.MethodPost, "/pd/api/v1/store/2/state?state=Up", "")
	require.Equal(t, http.StatusBadRequest, code, "nor brought back")
}

func TestLifecycle_CancelOffline(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 2)
	require.NoError(t, s.SetRegions(2, 10))
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code)
	clock.Advance(5 * time.Second)

	code, body := call(t, s, http.MethodPost, "/pd/api/v1/store/2/state?state=up", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"The store's state is updated."`, body)
	clock.Advance(time.Hour)
	st := mustStore(t, s, 2)
	require.Equal(t, "Up", st.StateName)
	require.Equal(t, 1, st.NodeState)
	require.Equal(t, 5, st.RegionCount, "draining stopped where it was")

	code, _ = call(t, s, http.MethodPost, "/pd/api/v1/store/2/state?state=Offline", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "Offline", mustStore(t, s, 2).StateName)
	code, _ = call(t, s, http.MethodPost, "/pd/api/v1/store/2/state?state=Sideways", "")
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = call(t, s, http.MethodPost, "/pd/api/v1/store/9/state?state=Up", "")
	require.Equal(t, http.StatusNotFound, code)
}

func TestLifecycle_ReRegisterAfterTombstoneGetsNewID(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1})
	ids := registerN(s, 2)
	addr := mustStore(t, s, ids[1]).Address
	require.Equal(t, ids[1], s.RegisterStore(addr), "a live store's TiKV restarting keeps its id")

	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, ids[1], s.RegisterStore(addr), "still Offline: same store")
	clock.Advance(4 * time.Second)
	require.Equal(t, "Tombstone", mustStore(t, s, 2).StateName)

	fresh := s.RegisterStore(addr)
	require.Equal(t, uint64(3), fresh)
	require.Equal(t, "Up", mustStore(t, s, fresh).StateName)
	require.Equal(t, "Tombstone", mustStore(t, s, 2).StateName, "the old record stays")
}

func TestLifecycle_SilentStoreGoesDisconnectedThenDown(t *testing.T) {
	s, clock := newSim(t, Options{})
	id := s.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	clock.Advance(time.Hour)
	require.Equal(t, "Up", mustStore(t, s, id).StateName, "a heartbeating store stays Up")

	require.NoError(t, s.StopHeartbeats(id))
	stopped := clock.Now()
	clock.Advance(20 * time.Second)
	require.Equal(t, "Up", mustStore(t, s, id).StateName, "PD needs more than 20s of silence")
	clock.Advance(time.Nanosecond)
	st := mustStore(t, s, id)
	require.Equal(t, "Disconnected", st.StateName)
	require.Equal(t, 0, st.State)
	require.Equal(t, stopped, st.LastHeartbeat)

	clock.Advance(40 * time.Second)
	st = mustStore(t, s, id)
	require.Equal(t, "Down", st.StateName)
	require.Equal(t, 0, st.State)
	require.Equal(t, 1, st.NodeState)

	require.NoError(t, s.Heartbeat(id))
	require.Equal(t, "Up", mustStore(t, s, id).StateName)
	clock.Advance(21 * time.Second)
	require.Equal(t, "Disconnected", mustStore(t, s, id).StateName, "one heartbeat does not resume them")
	require.NoError(t, s.ResumeHeartbeats(id))
	clock.Advance(time.Hour)
	require.Equal(t, "Up", mustStore(t, s, id).StateName)

	require.ErrorIs(t, s.Heartbeat(99), ErrNotFound)
	require.ErrorContains(t, s.SetRegions(id, -1), "negative region count")
}

func TestLifecycle_RemoveTombstoneSkipsStoresWithRegions(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 3)
	for _, id := range []string{"2", "3"} {
		code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/"+id, "")
		require.Equal(t, http.StatusOK, code)
	}
	clock.Advance(4 * time.Second)
	require.NoError(t, s.SetRegions(3, 1)) // a Tombstone PD still maps a region to

	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/stores/remove-tombstone", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"Remove tombstone successfully."`, body)
	_, ok := s.Store(2)
	require.False(t, ok)
	require.Equal(t, "Tombstone", mustStore(t, s, 3).StateName)
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusNotFound, code)
}
