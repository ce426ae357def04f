package pdsim

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// listedIDs returns the ids in a store list answer, checking its count.
func listedIDs(t *testing.T, s *Server, target string) []uint64 {
	t.Helper()
	code, body := call(t, s, http.MethodGet, target, "")
	require.Equal(t, http.StatusOK, code, body)
	var list struct {
		Count  int `json:"count"`
		Stores []struct {
			Store struct {
				ID uint64 `json:"id"`
			} `json:"store"`
		} `json:"stores"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &list))
	require.Equal(t, list.Count, len(list.Stores))
	ids := []uint64{}
	for _, st := range list.Stores {
		ids = append(ids, st.Store.ID)
	}
	return ids
}

// mixedCluster: 1 Up, 2 Disconnected, 3 Down, 4 Offline, 5 Tombstone.
func mixedCluster(t *testing.T) *Server {
	t.Helper()
	s, clock := newSim(t, Options{MaxReplicas: 1, DrainDelay: time.Hour})
	registerN(s, 5)
	require.NoError(t, s.SetRegions(4, 10)) // drains for an hour
	for _, target := range []string{"/pd/api/v1/store/4", "/pd/api/v1/store/5"} {
		code, _ := call(t, s, http.MethodDelete, target, "")
		require.Equal(t, http.StatusOK, code)
	}
	require.NoError(t, s.StopHeartbeats(3))
	clock.Advance(5 * time.Second) // 5 is empty: buried at the +4s check
	require.NoError(t, s.StopHeartbeats(2))
	clock.Advance(56 * time.Second) // 2 silent 56s, 3 silent 61s (Down after 60s)
	for id, want := range map[uint64]string{1: "Up", 2: "Disconnected", 3: "Down", 4: "Offline", 5: "Tombstone"} {
		require.Equal(t, want, mustStore(t, s, id).StateName, "store %d", id)
	}
	return s
}

func TestStoresFilter_ByStateNumber(t *testing.T) {
	s := mixedCluster(t)
	for target, want := range map[string][]uint64{
		"/pd/api/v1/stores":                           {1, 2, 3, 4},
		"/pd/api/v1/stores?state=0":                   {1, 2, 3},
		"/pd/api/v1/stores?state=1":                   {4},
		"/pd/api/v1/stores?state=2":                   {5},
		"/pd/api/v1/stores?state=0&state=1&state=2":   {1, 2, 3, 4, 5},
		"/pd/api/v1/stores?state=2&state=2&state=1":   {4, 5},
		"/pd/api/v1/stores/check":                     {1, 2, 3, 4, 5},
		"/pd/api/v1/stores/check?state=up":            {1},
		"/pd/api/v1/stores/check?state=Down&state=":   {3},
		"/pd/api/v1/stores/check?state=DISCONNECTED":  {2},
		"/pd/api/v1/stores/check?state=tombstone":     {5},
		"/pd/api/v1/stores/check?state=up&state=down": {1, 3},
		"/pd/api/v1/stores/check?state=offline":       {4},
	} {
		require.Equal(t, want, listedIDs(t, s, target), target)
	}
}

func TestStoresFilter_RejectsUnknownStates(t *testing.T) {
	s := mixedCluster(t)
	code, body := call(t, s, http.MethodGet, "/pd/api/v1/stores?state=3", "")
	require.Equal(t, http.StatusInternalServerError, code, "PD's filter error is a 500")
	require.JSONEq(t, `"unknown StoreState: 3"`, body)
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/stores?state=up", "")
	require.Equal(t, http.StatusInternalServerError, code)
	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/stores/check?state=removed", "")
	require.Equal(t, http.StatusBadRequest, code)
}

func TestFaults_UnavailableAndGarbage(t *testing.T) {
	s, _ := newSim(t, Options{MaxReplicas: 1})
	registerN(s, 2)

	s.SetUnavailable(true)
	for _, target := range []string{"/pd/api/v1/stores", "/pd/api/v1/ping", "/pd/api/v1/members"} {
		code, _ := call(t, s, http.MethodGet, target, "")
		require.Equal(t, http.StatusServiceUnavailable, code, target)
	}
	code, _ := call(t, s, http.MethodGet, "/sim/stores/1", "")
	require.Equal(t, http.StatusOK, code, "controls stay up")
	s.SetUnavailable(false)

	s.SetGarbage(true)
	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/store/2", "")
	require.Equal(t, http.StatusOK, code)
	require.False(t, json.Valid([]byte(body)))
	require.Equal(t, "Up", mustStore(t, s, 2).StateName, "garbage mode changes nothing")
	code, body = call(t, s, http.MethodGet, "/pd/api/v1/health", "")
	require.Equal(t, http.StatusOK, code)
	require.False(t, json.Valid([]byte(body)))
	s.SetGarbage(false)

	code, _ = call(t, s, http.MethodGet, "/pd/api/v1/stores", "")
	require.Equal(t, http.StatusOK, code)
}

func TestMembers_RemoveHandsOverLeadership(t *testing.T) {
	s, _ := newSim(t, Options{Members: []string{"pd-a", "pd-b", "pd-c"}})
	_, err := s.AddMember("pd-b")
	require.ErrorIs(t, err, ErrExists)

	code, body := call(t, s, http.MethodDelete, "/pd/api/v1/members/name/pd-a", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"removed, pd: pd-a"`, body)
	var m struct {
		Members []struct {
			Name     string `json:"name"`
			MemberID uint64 `json:"member_id"`
		} `json:"members"`
		Leader struct {
			Name string `json:"name"`
		} `json:"leader"`
	}
	_, body = call(t, s, http.MethodGet, "/pd/api/v1/members", "")
	require.NoError(t, json.Unmarshal([]byte(body), &m))
	require.Len(t, m.Members, 2)
	require.Equal(t, "pd-b", m.Leader.Name)

	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/members/id/"+jsonNumber(m.Members[1].MemberID), "")
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, s, http.MethodDelete, "/pd/api/v1/members/id/1", "")
	require.Equal(t, http.StatusNotFound, code)
	require.ErrorIs(t, s.RemoveMember("pd-c"), ErrNotFound)

	id, err := s.AddMember("pd-d")
	require.NoError(t, err)
	require.Equal(t, uint64(1<<63+4), id, "ids are never reused")
}

func jsonNumber(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
