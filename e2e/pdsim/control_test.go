package pdsim

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestControlHTTP_DrivesTheSimulator(t *testing.T) {
	s, clock := newSim(t, Options{})

	code, body := call(t, s, http.MethodPost, "/sim/stores", `{"address":"demo-tikv-0.demo-tikv-peer.tidb.svc:20160"}`)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"id": 1}`, body)

	code, _ = call(t, s, http.MethodPut, "/sim/stores/1/regions", `{"count": 7}`)
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodPut, "/sim/stores/1/heartbeats", `{"enabled": false}`)
	require.Equal(t, http.StatusOK, code)
	clock.Advance(30 * time.Second)

	code, body = call(t, s, http.MethodGet, "/sim/stores/1", "")
	require.Equal(t, http.StatusOK, code)
	var snap StoreSnapshot
	require.NoError(t, json.Unmarshal([]byte(body), &snap))
	require.Equal(t, "Disconnected", snap.StateName)
	require.Equal(t, 7, snap.RegionCount)
	require.False(t, snap.Heartbeating)

	code, _ = call(t, s, http.MethodPost, "/sim/stores/1/heartbeat", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "Up", mustStore(t, s, 1).StateName)
	code, _ = call(t, s, http.MethodPut, "/sim/stores/1/heartbeats", `{"enabled": true}`)
	require.Equal(t, http.StatusOK, code)
	require.True(t, mustStore(t, s, 1).Heartbeating)

	code, body = call(t, s, http.MethodPost, "/sim/members", `{"name":"pd-1"}`)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"member_id": 9223372036854775810}`, body)
	code, _ = call(t, s, http.MethodDelete, "/sim/members/pd-1", "")
	require.Equal(t, http.StatusOK, code)

	code, _ = call(t, s, http.MethodPut, "/sim/unavailable", `{"enabled": true}`)
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/ping", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
	code, _ = call(t, s, http.MethodPut, "/sim/unavailable", `{"enabled": false}`)
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodPut, "/sim/garbage", `{"enabled": true}`)
	require.Equal(t, http.StatusOK, code)
	_, body = call(t, s, http.MethodGet, "/pd/api/v1/ping", "")
	require.Equal(t, garbageBody, body)
}

func TestControlHTTP_Errors(t *testing.T) {
	s, clock := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 2)
	code, _ := call(t, s, http.MethodDelete, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code)
	clock.Advance(4 * time.Second)

	for _, tc := range []struct {
		method, target, body string
		code                 int
	}{
		{http.MethodPost, "/sim/stores", `{}`, 400},
		{http.MethodPost, "/sim/stores", `{"address":`, 400},
		{http.MethodGet, "/sim/stores/9", "", 404},
		{http.MethodGet, "/sim/stores/x", "", 400},
		{http.MethodPost, "/sim/stores/2/heartbeat", "", 409},
		{http.MethodPut, "/sim/stores/1/heartbeats", `{}`, 400},
		{http.MethodPut, "/sim/stores/1/regions", `{"count": -1}`, 400},
		{http.MethodPut, "/sim/stores/1/regions", ``, 400},
		{http.MethodPost, "/sim/members", `{"name":"pd-0"}`, 409},
		{http.MethodPost, "/sim/members", `{}`, 400},
		{http.MethodDelete, "/sim/members/nope", "", 404},
		{http.MethodPut, "/sim/garbage", `{"enabled":"yes"}`, 400},
		{http.MethodGet, "/sim/garbage", "", 405},
	} {
		code, _ := call(t, s, tc.method, tc.target, tc.body)
		require.Equal(t, tc.code, code, "%s %s %s", tc.method, tc.target, tc.body)
	}
}

func TestStart_ServesOnRealClock(t *testing.T) {
	s := New(Options{MaxReplicas: 1, DrainDelay: 20 * time.Millisecond, CheckInterval: 10 * time.Millisecond})
	url, err := s.Start("")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	_, err = s.Start("")
	require.Error(t, err, "one listener per server")

	s.RegisterStore("a:20160")
	id := s.RegisterStore("b:20160")
	require.NoError(t, s.SetRegions(id, 3))
	req, err := http.NewRequest(http.MethodDelete, url+"/pd/api/v1/store/2", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)

	require.Eventually(t, func() bool {
		snap, ok := s.Store(id)
		return ok && snap.StateName == "Tombstone"
	}, 5*time.Second, 5*time.Millisecond)
}
