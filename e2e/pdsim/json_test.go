package pdsim

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStoresJSON_PreparingStoreOmitsNodeStateThenServes(t *testing.T) {
	s, clock := newSim(t, Options{})
	id := s.RegisterStore("demo-tikv-0.demo-tikv-peer.tidb.svc:20160")

	// Like a real PD's new store: state Up (0) and node_state Preparing (0)
	// are both omitted, state_name says "Up".
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/stores", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"count": 1, "stores": [
	  {"store": {"id": 1, "address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20160",
	             "version": "26.3.4", "status_address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20180",
	             "start_timestamp": 1795326000, "deploy_path": "/var/lib/tikv",
	             "last_heartbeat": 1795326000000000000, "state_name": "Up"},
	   "status": {"capacity": "1TiB", "available": "1024GiB", "used_size": "256MiB",
	              "leader_count": 0, "leader_weight": 1, "leader_score": 0, "leader_size": 0,
	              "region_count": 0, "region_weight": 1, "region_score": 0, "region_size": 0,
	              "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:00Z"}}]}`, body)

	clock.Advance(DefaultServingAfter)
	require.NoError(t, s.SetRegions(id, 812))
	code, body = call(t, s, http.MethodGet, "/pd/api/v1/stores", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"count": 1, "stores": [
	  {"store": {"id": 1, "address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20160",
	             "version": "26.3.4", "status_address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20180",
	             "start_timestamp": 1795326000, "deploy_path": "/var/lib/tikv",
	             "last_heartbeat": 1795326002000000000, "node_state": 1, "state_name": "Up"},
	   "status": {"capacity": "1TiB", "available": "947.6GiB", "used_size": "76.38GiB",
	              "leader_count": 270, "leader_weight": 1, "leader_score": 270, "leader_size": 25920,
	              "region_count": 812, "region_weight": 1, "region_score": 97440, "region_size": 77952,
	              "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:02Z",
	              "uptime": "2s"}}]}`, body)
}

func TestStoreJSON_OfflineAndTombstone(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1, ServingAfter: -1})
	ids := registerN(s, 2)
	clock.Advance(time.Second) // off the 4s check ticks: burial is at the +4s one
	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/2?force", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"The store is set as Offline."`, body)

	code, body = call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"store": {"id": 2, "address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20160", "state": 1,
	    "version": "26.3.4", "status_address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20180",
	    "start_timestamp": 1795326000, "deploy_path": "/var/lib/tikv", "last_heartbeat": 1795326001000000000,
	    "physically_destroyed": true, "node_state": 2, "state_name": "Offline"},
	  "status": {"capacity": "1TiB", "available": "1024GiB", "used_size": "256MiB",
	    "leader_count": 0, "leader_weight": 1, "leader_score": 0, "leader_size": 0,
	    "region_count": 0, "region_weight": 1, "region_score": 0, "region_size": 0,
	    "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:01Z", "uptime": "1s"}}`, body)

	// Empty, so buried at the first check tick after the delete (+4s); it
	// heartbeated until then.
	clock.Advance(3 * time.Second)
	_, body = call(t, s, http.MethodGet, "/pd/api/v1/store/2", "")
	require.JSONEq(t, `{"store": {"id": 2, "address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20160", "state": 2,
	    "version": "26.3.4", "status_address": "demo-tikv-1.demo-tikv-peer.tidb.svc:20180",
	    "start_timestamp": 1795326000, "deploy_path": "/var/lib/tikv", "last_heartbeat": 1795326004000000000,
	    "physically_destroyed": true, "node_state": 3, "state_name": "Tombstone"},
	  "status": {"capacity": "1TiB", "available": "1024GiB", "used_size": "256MiB",
	    "leader_count": 0, "leader_weight": 1, "leader_score": 0, "leader_size": 0,
	    "region_count": 0, "region_weight": 1, "region_score": 0, "region_size": 0,
	    "start_ts": "2026-11-22T05:40:00Z", "last_heartbeat_ts": "2026-11-22T05:40:04Z", "uptime": "4s"}}`, body)
	require.Equal(t, uint64(1), ids[0])
}

func TestErrorJSON_IsAStringLikePD(t *testing.T) {
	s, _ := newSim(t, Options{})
	registerN(s, 1)
	for _, tc := range []struct {
		method, target string
		code           int
		body           string
	}{
		{http.MethodGet, "/pd/api/v1/store/9", 404, `"[PD:core:ErrStoreNotFound]store 9 not found"`},
		{http.MethodDelete, "/pd/api/v1/store/9", 404, `"[PD:core:ErrStoreNotFound]store 9 not found"`},
		// Except an unparsable path parameter: PD's input error object.
		{http.MethodGet, "/pd/api/v1/store/x", 400, `{"code": "input", "msg": "strconv.ParseUint: parsing \"x\": invalid syntax", "data": {}}`},
		{http.MethodGet, "/pd/api/v1/stores?state=x", 500, `"strconv.Atoi: parsing \"x\": invalid syntax"`},
		{http.MethodDelete, "/pd/api/v1/members/name/nope", 404, `"not found, pd: nope"`},
		{http.MethodGet, "/pd/api/v1/stores/check?state=sleepy", 400, `"unknown StoreState: sleepy"`},
	} {
		code, body := call(t, s, tc.method, tc.target, "")
		require.Equal(t, tc.code, code, tc.target)
		require.JSONEq(t, tc.body, body, tc.target)
	}
	// Unknown routes and base paths answer like a router, in plain text.
	for _, target := range []string{"/pd/api/v1/nope", "/wrong/pd/api/v1/store/1", "/pd/api/v2/store/1"} {
		code, body := call(t, s, http.MethodGet, target, "")
		require.Equal(t, 404, code, target)
		require.Equal(t, "404 page not found", strings.TrimSpace(body), target)
	}
}

func TestMembersJSON(t *testing.T) {
	s, _ := newSim(t, Options{Members: []string{"demo-pd-0", "demo-pd-1"}})
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/members", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"header": {"cluster_id": 7000000000000000001},
	  "members": [
	    {"name": "demo-pd-0", "member_id": 9223372036854775809, "peer_urls": ["http://demo-pd-0:2380"],
	     "client_urls": ["http://demo-pd-0:2379"], "deploy_path": "/usr/local/bin", "binary_version": "v26.3.4", "git_hash": "0000000000000000000000000000000000000000"},
	    {"name": "demo-pd-1", "member_id": 9223372036854775810, "peer_urls": ["http://demo-pd-1:2380"],
	     "client_urls": ["http://demo-pd-1:2379"], "deploy_path": "/usr/local/bin", "binary_version": "v26.3.4", "git_hash": "0000000000000000000000000000000000000000"}],
	  "leader": {"name": "demo-pd-0", "member_id": 9223372036854775809, "peer_urls": ["http://demo-pd-0:2380"],
	     "client_urls": ["http://demo-pd-0:2379"], "deploy_path": "/usr/local/bin", "binary_version": "v26.3.4", "git_hash": "0000000000000000000000000000000000000000"},
	  "etcd_leader": {"name": "demo-pd-0", "member_id": 9223372036854775809, "peer_urls": ["http://demo-pd-0:2380"],
	     "client_urls": ["http://demo-pd-0:2379"], "deploy_path": "/usr/local/bin", "binary_version": "v26.3.4", "git_hash": "0000000000000000000000000000000000000000"}}`, body)

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
	s, clock := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 1)
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/1?force", "")
	require.Equal(t, http.StatusOK, code)
	clock.Advance(4 * time.Second)
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/stores/remove-tombstone", "")
	require.Equal(t, http.StatusOK, code)

	// Still bootstrapped: PD does not forget it had stores.
	_, body := call(t, s, http.MethodGet, "/pd/api/v1/stores", "")
	require.JSONEq(t, `{"count": 0, "stores": []}`, body)
}

func TestByteSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1536: "1.5KiB", 1 << 40: "1TiB", 1<<40 + 1<<39 + 1<<38: "1.75TiB"} {
		require.Equal(t, want, byteSize(n))
	}
}
