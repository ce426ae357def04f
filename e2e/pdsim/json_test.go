package pdsim

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStoresJSON_UpStoreOmitsZeroState(t *testing.T) {
	s, _ := newSim(t, Options{})
	id := s.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")
	require.NoError(t, s.SetRegions(id, 812))

	code, body := call(t, s, http.MethodGet, "/pd/api/v1/stores", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"count": 1, "stores": [
	  {"store": {"id": 1, "address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20160",
	             "version": "8.5.0", "status_address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20180",
	             "start_timestamp": 1795326000, "last_heartbeat": 1795326000000000000,
	             "node_state": 1, "state_name": "Up"},
	   "status": {"capacity": "1TiB", "available": "947.6GiB", "used_size": "76.38GiB",
	              "leader_count": 270, "leader_weight": 1, "region_count": 812, "region_weight": 1,
	              "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:00Z"}}]}`, body)
}

func TestStoreJSON_OfflineAndTombstone(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1})
	ids := registerN(s, 2)
	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/2?force", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"The store is set as Offline."`, body)

	code, body = call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"store": {"id": 2, "address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20160", "state": 1,
	    "version": "8.5.0", "status_address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20180",
	    "start_timestamp": 1795326000, "last_heartbeat": 1795326000000000000,
	    "physically_destroyed": true, "node_state": 2, "state_name": "Offline"},
	  "status": {"capacity": "1TiB", "available": "1024GiB", "used_size": "256MiB",
	    "leader_count": 0, "leader_weight": 1, "region_count": 0, "region_weight": 1,
	    "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:00Z"}}`, body)

	// Empty, so buried at the first check tick after the delete (+4s); it
	// heartbeated until then.
	clock.Advance(4 * time.Second)
	_, body = call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.JSONEq(t, `{"store": {"id": 2, "address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20160", "state": 2,
	    "version": "8.5.0", "status_address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20180",
	    "start_timestamp": 1795326000, "last_heartbeat": 1795326004000000000,
	    "physically_destroyed": true, "node_state": 3, "state_name": "Tombstone"},
	  "status": {"capacity": "1TiB", "available": "1024GiB", "used_size": "256MiB",
	    "leader_count": 0, "leader_weight": 1, "region_count": 0, "region_weight": 1,
	    "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:04Z"}}`, body)
	require.Equal(t, uint64(1), ids[0])
}

func TestErrorJSON_IsAStringLikePD(t *testing.T) {
	s, _ := newSim(t, Options{})
	for _, tc := range []struct {
		method, target string
		code           int
		body           string
	}{
		{http.MethodGet, "/pd/api/v1/store/9", 404, `"[PD:core:ErrStoreNotFound]store 9 not found"`},
		{http.MethodDelete, "/pd/api/v1/store/9", 404, `"[PD:core:ErrStoreNotFound]store 9 not found"`},
		{http.MethodGet, "/pd/api/v1/store/x", 400, `"invalid store id \"x\""`},
		{http.MethodDelete, "/pd/api/v1/members/name/nope", 404, `"not found, pd: nope"`},
		{http.MethodGet, "/pd/api/v1/stores/check?state=sleepy", 400, `"unknown StoreState: sleepy"`},
	} {
		code, body := call(t, s, tc.method, tc.target, "")
		require.Equal(t, tc.code, code, tc.target)
		require.JSONEq(t, tc.body, body, tc.target)
	}
	// Unknown routes answer like a router, in plain text.
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/nope", "")
	require.Equal(t, 404, code)
	require.Equal(t, "404 page not found\n", body)
}

func TestMembersJSON(t *testing.T) {
	s, _ := newSim(t, Options{Members: []string{"demo-pd-0", "demo-pd-1"}})
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/members", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"header": {"cluster_id": 7000000000000000001},
	  "members": [
	    {"name": "demo-pd-0", "member_id": 9223372036854775809, "peer_urls": ["http://demo-pd-0:2380"],
	     "client_urls": ["http://demo-pd-0:2379"], "binary_version": "v8.5.0"},
	    {"name": "demo-pd-1", "member_id": 9223372036854775810, "peer_urls": ["http://demo-pd-1:2380"],
	     "client_urls": ["http://demo-pd-1:2379"], "binary_version": "v8.5.0"}],
	  "leader": {"name": "demo-pd-0", "member_id": 9223372036854775809, "peer_urls": ["http://demo-pd-0:2380"],
	     "client_urls": ["http://demo-pd-0:2379"], "binary_version": "v8.5.0"},
	  "etcd_leader": {"name": "demo-pd-0", "member_id": 9223372036854775809, "peer_urls": ["http://demo-pd-0:2380"],
	     "client_urls": ["http://demo-pd-0:2379"], "binary_version": "v8.5.0"}}`, body)

	require.NoError(t, s.RemoveMember("demo-pd-0"))
	require.NoError(t, s.RemoveMember("demo-pd-1"))
	_, body = call(t, s, http.MethodGet, "/pd/api/v1/members", "")
	require.JSONEq(t, `{"header": {"cluster_id": 7000000000000000001}}`, body, "no members, no leader: keys omitted")
}

func TestHealthAndPingJSON(t *testing.T) {
	s, _ := newSim(t, Options{})
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/health", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `[{"name": "pd-0", "member_id": 9223372036854775809,
	  "client_urls": ["http://pd-0:2379"], "health": true}]`, body)

	code, body = call(t, s, http.MethodGet, "/pd/api/v1/ping", "")
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, body)
}

func TestEmptyStoreListIsAnArray(t *testing.T) {
	s, _ := newSim(t, Options{})
	_, body := call(t, s, http.MethodGet, "/pd/api/v1/stores", "")
	require.JSONEq(t, `{"count": 0, "stores": []}`, body)
}

func TestByteSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1536: "1.5KiB", 1 << 40: "1TiB", 1<<40 + 1<<39 + 1<<38: "1.75TiB"} {
		require.Equal(t, want, byteSize(n))
	}
}
