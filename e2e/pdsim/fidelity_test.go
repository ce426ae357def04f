package pdsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLifecycle_OfflineStoreWhoseRegionsCannotMoveStaysOffline(t *testing.T) {
	s, clock := newSim(t, Options{}) // 3 replicas
	registerN(s, 3)
	require.NoError(t, s.SetRegions(3, 10))
	// Forced past the refusal: 2 Up stores cannot hold 3 replicas.
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/3?force", "")
	require.Equal(t, http.StatusOK, code)

	clock.Advance(1000 * time.Hour)
	st := mustStore(t, s, 3)
	require.Equal(t, "Offline", st.StateName, "for ever, while nothing changes")
	require.Equal(t, 10, st.RegionCount, "no region moved")

	// A third Up store gives the replicas somewhere to go.
	s.RegisterStore("demo-tikv-3.demo-tikv-peer.tidb.svc:20160")
	clock.Advance(5 * time.Second)
	require.Equal(t, 5, mustStore(t, s, 3).RegionCount, "half of the 10s drain")
	clock.Advance(8 * time.Second) // drained at +10s, buried at the next 4s tick
	require.Equal(t, "Tombstone", mustStore(t, s, 3).StateName)
}

func TestLifecycle_DrainStopsWhereItIsWhenUpStoresRunShort(t *testing.T) {
	s, clock := newSim(t, Options{})
	registerN(s, 4)
	require.NoError(t, s.SetRegions(4, 10))
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/4", "")
	require.Equal(t, http.StatusOK, code, "3 Up stores left")
	clock.Advance(5 * time.Second)
	require.Equal(t, 5, mustStore(t, s, 4).RegionCount)

	// Another store forced out: 2 Up stores left, the drain stops.
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/store/3?force", "")
	require.Equal(t, http.StatusOK, code)
	clock.Advance(time.Hour)
	st := mustStore(t, s, 4)
	require.Equal(t, "Offline", st.StateName)
	require.Equal(t, 5, st.RegionCount)

	// A new TiKV makes three Up stores again: the drain resumes.
	s.RegisterStore("demo-tikv-9.demo-tikv-peer.tidb.svc:20160")
	clock.Advance(5 * time.Second)
	require.Equal(t, 3, mustStore(t, s, 4).RegionCount, "the remaining 5 regions drain over a full 10s")
}

func TestLifecycle_DisconnectedAndDownStoresCountAsUpForDraining(t *testing.T) {
	s, clock := newSim(t, Options{})
	registerN(s, 4)
	require.NoError(t, s.StopHeartbeats(1))
	require.NoError(t, s.StopHeartbeats(2))
	clock.Advance(2 * time.Minute)
	require.Equal(t, "Down", mustStore(t, s, 1).StateName)
	require.Equal(t, "Down", mustStore(t, s, 2).StateName)

	require.NoError(t, s.SetRegions(4, 10))
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/4", "")
	require.Equal(t, http.StatusOK, code, "1 Up and 2 Down stores are 3 for PD")
	clock.Advance(12 * time.Second)
	require.Equal(t, "Tombstone", mustStore(t, s, 4).StateName, "and they take the regions")
}

func TestLifecycle_RefusalCountsDownStoresAndNamesPDsError(t *testing.T) {
	s, clock := newSim(t, Options{})
	registerN(s, 4)
	require.NoError(t, s.StopHeartbeats(4))
	clock.Advance(2 * time.Minute)
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/1", "")
	require.Equal(t, http.StatusOK, code)

	// Deleting the Down store would leave 2 Up stores.
	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/4", "")
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, `"[PD:core:ErrStoresNotEnough]can not remove store 4 since the number of up stores would be 2 while need 3"`+"\n", body)

	// ?force accepts it and marks it physically destroyed.
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/store/4?force", "")
	require.Equal(t, http.StatusOK, code)
	_, body = call(t, s, http.MethodGet, "/pd/api/v1/store/4", "")
	require.Contains(t, body, `"physically_destroyed": true`)
	require.True(t, mustStore(t, s, 4).PhysicallyDestroyed)

	// Tombstone: 410.
	clock.Advance(5 * time.Second)
	require.Equal(t, "Tombstone", mustStore(t, s, 1).StateName)
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/store/1", "")
	require.Equal(t, http.StatusGone, code)
}

func TestStores_NewStoreIsPreparingThenServing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		after     time.Duration
		preparing time.Duration
	}{
		{"default", 0, DefaultServingAfter},
		{"configured", 90 * time.Second, 90 * time.Second},
		{"at once", -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, clock := newSim(t, Options{ServingAfter: tc.after})
			id := s.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
			if tc.preparing > 0 {
				clock.Advance(tc.preparing - time.Nanosecond)
				store := storeObject(t, s, id)
				require.NotContains(t, store, "node_state", "Preparing is 0, omitted")
				require.NotContains(t, store, "state", "Up is 0, omitted")
				require.Equal(t, "Up", store["state_name"])
				require.Equal(t, 0, mustStore(t, s, id).NodeState)
				clock.Advance(time.Nanosecond)
			}
			store := storeObject(t, s, id)
			require.Equal(t, json.Number("1"), store["node_state"])
			require.Equal(t, "Up", store["state_name"])
		})
	}
}

// storeObject returns the "store" object of GET /store/{id}.
func storeObject(t *testing.T, s *Server, id uint64) map[string]any {
	t.Helper()
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/store/"+strconv.FormatUint(id, 10), "")
	require.Equal(t, http.StatusOK, code)
	var v struct {
		Store map[string]any `json:"store"`
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&v))
	return v.Store
}

func TestBootstrap_StoreEndpointsAnswer500UntilAStoreJoins(t *testing.T) {
	s, _ := newSim(t, Options{})
	const notBootstrapped = `"[PD:cluster:ErrNotBootstrapped]TiKV cluster not bootstrapped, please start TiKV first"` + "\n"
	storeRequests := [][2]string{
		{http.MethodGet, "/pd/api/v1/stores"},
		{http.MethodGet, "/pd/api/v1/stores?state=0&state=1&state=2"},
		{http.MethodGet, "/pd/api/v1/stores?state=abc"},
		{http.MethodGet, "/pd/api/v1/stores/check?state=bogus"},
		{http.MethodGet, "/pd/api/v1/store/1"},
		{http.MethodGet, "/pd/api/v1/store/abc"},
		{http.MethodDelete, "/pd/api/v1/store/1"},
		{http.MethodPost, "/pd/api/v1/store/1/state?state=Up"},
		{http.MethodDelete, "/pd/api/v1/stores/remove-tombstone"},
	}
	for _, r := range storeRequests {
		code, body := call(t, s, r[0], r[1], "")
		require.Equal(t, http.StatusInternalServerError, code, r)
		require.Equal(t, notBootstrapped, body, r)
	}
	for _, target := range []string{"/pd/api/v1/members", "/pd/api/v1/health", "/pd/api/v1/ping", "/pd/api/v1/cluster", "/pd/api/v1/version", "/pd/api/v1/config/replicate"} {
		code, _ := call(t, s, http.MethodGet, target, "")
		require.Equal(t, http.StatusOK, code, target)
	}

	s.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	code, _ := call(t, s, http.MethodGet, "/pd/api/v1/store/1", "")
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusNotFound, code)
}

func TestCluster_IDIsTheMembersHeaderAndAboveFloatPrecision(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  uint64
		want string
	}{
		{"default", 0, "7000000000000000001"},
		{"configured", 18446744073709551615, "18446744073709551615"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newSim(t, Options{ClusterID: tc.opt})
			_, body := call(t, s, http.MethodGet, "/pd/api/v1/cluster", "")
			require.JSONEq(t, `{"id": `+tc.want+`, "max_peer_count": 3}`, body)
			require.Contains(t, body, tc.want, "written as an integer literal")
			_, body = call(t, s, http.MethodGet, "/pd/api/v1/members", "")
			require.Contains(t, body, `"cluster_id": `+tc.want)
			require.Equal(t, tc.want, strconv.FormatUint(s.ClusterID(), 10))
		})
	}
	require.Greater(t, uint64(DefaultClusterID), uint64(1)<<53)
}

func TestRebuild_ForgetsStoresAndMembersUnderANewClusterID(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1, Members: []string{"pd-0", "pd-1"}})
	registerN(s, 3)
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/3", "")
	require.Equal(t, http.StatusOK, code)
	clock.Advance(5 * time.Second)
	oldIDs := memberIDs(t, s)
	require.Equal(t, 1, s.DeleteRequests(3))

	require.Error(t, s.Rebuild(RebuildOptions{}), "a cluster ID is required")
	require.NoError(t, s.Rebuild(RebuildOptions{ClusterID: 7700000000000000077}))
	require.Equal(t, uint64(7700000000000000077), s.ClusterID())
	require.Empty(t, s.Stores(), "every store forgotten, Tombstones too")
	require.Zero(t, s.DeleteRequests(3), "counted afresh: ID 3 may name another store now")
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/store/1", "")
	require.Equal(t, http.StatusInternalServerError, code, "not bootstrapped again")
	_, body := call(t, s, http.MethodGet, "/pd/api/v1/cluster", "")
	require.JSONEq(t, `{"id": 7700000000000000077, "max_peer_count": 1}`, body)

	newIDs := memberIDs(t, s)
	require.Len(t, newIDs, 2, "the same names…")
	for name, id := range newIDs {
		require.NotEqual(t, oldIDs[name], id, "…with new member IDs")
	}

	// From scratch, PD hands out the old store IDs again, to other TiKVs.
	require.Equal(t, uint64(1), s.RegisterStore("other-tikv-0.other-tikv-peer.tidb.svc:20160"))

	require.NoError(t, s.Rebuild(RebuildOptions{ClusterID: 1, Members: []string{}, NextStoreID: 1000}))
	require.Empty(t, memberIDs(t, s))
	require.Equal(t, uint64(1000), s.RegisterStore("x:20160"))
}

func TestRecoverStore_BringsStoresBackWithTheirIDs(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 3)
	oldCluster := s.ClusterID()
	addr2 := mustStore(t, s, 2).Address
	require.NoError(t, s.Rebuild(RebuildOptions{ClusterID: oldCluster, NextStoreID: 1 << 20}))

	// pd-recover: the same cluster ID; the TiKVs rejoin one by one.
	require.NoError(t, s.RecoverStore(2, addr2))
	code, _ := call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code, "bootstrapped by the first store back")
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/store/1", "")
	require.Equal(t, http.StatusNotFound, code, "not back yet")
	st := mustStore(t, s, 2)
	require.Equal(t, addr2, st.Address)
	require.Equal(t, "Up", st.StateName)
	require.True(t, st.Heartbeating)
	clock.Advance(DefaultServingAfter)
	require.Equal(t, nodeServing, mustStore(t, s, 2).NodeState)

	require.ErrorIs(t, s.RecoverStore(2, "elsewhere:20160"), ErrExists)
	require.ErrorIs(t, s.RecoverStore(9, addr2), ErrExists, "the address is taken by a live store")
	require.Error(t, s.RecoverStore(0, "x:20160"))
	require.Equal(t, uint64(1<<20), s.RegisterStore("fresh:20160"), "new stores above pd-recover's alloc-id")
	require.NoError(t, s.RecoverStore(1<<21, "late:20160"))
	require.Equal(t, uint64(1<<21+1), s.RegisterStore("fresher:20160"), "never an ID a recovered store has")
}

func TestControlHTTP_RebuildAndRecover(t *testing.T) {
	s, _ := newSim(t, Options{})
	registerN(s, 1)
	code, _ := call(t, s, http.MethodPost, "/sim/rebuild", `{}`)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = call(t, s, http.MethodPost, "/sim/rebuild", `{"cluster_id": 7700000000000000077, "members": ["pd-a"], "next_store_id": 50}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, uint64(7700000000000000077), s.ClusterID())
	require.Equal(t, []string{"pd-a"}, keys(memberIDs(t, s)))

	code, _ = call(t, s, http.MethodPut, "/sim/stores/7", `{"address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20160"}`)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "demo-tikv-0.demo-tikv-peer.tidb.svc:20160", mustStore(t, s, 7).Address)
	code, _ = call(t, s, http.MethodPut, "/sim/stores/7", `{"address": "b:20160"}`)
	require.Equal(t, http.StatusConflict, code)
	code, _ = call(t, s, http.MethodPut, "/sim/stores/8", `{}`)
	require.Equal(t, http.StatusBadRequest, code)
}

func memberIDs(t *testing.T, s *Server) map[string]uint64 {
	t.Helper()
	_, body := call(t, s, http.MethodGet, "/pd/api/v1/members", "")
	var m struct {
		Members []struct {
			Name     string `json:"name"`
			MemberID uint64 `json:"member_id"`
		} `json:"members"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &m))
	out := map[string]uint64{}
	for _, x := range m.Members {
		out[x.Name] = x.MemberID
	}
	return out
}

func keys(m map[string]uint64) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	return out
}
