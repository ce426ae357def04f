package pd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDecodeStores_AcceptsNullListWhenEmpty(t *testing.T) {
	stores, err := decodeStores([]byte(`{"count":0,"stores":null}`))
	require.NoError(t, err)
	require.Empty(t, stores)
	require.NotNil(t, stores, "an empty answer is an empty list, not a nil that looks unset")
}

func TestDecodeStores_PrefersNanosecondHeartbeat(t *testing.T) {
	stores, err := decodeStores([]byte(`{"count":1,"stores":[{"store":{"id":1,"last_heartbeat":1000000000},
		"status":{"last_heartbeat_ts":"2030-01-01T00:00:00Z"}}]}`))
	require.NoError(t, err)
	require.Equal(t, int64(1), stores[0].LastHeartbeat.Unix())
}

func TestDecodeStores_RejectsNegativeHeartbeat(t *testing.T) {
	_, err := decodeStores([]byte(`{"count":1,"stores":[{"store":{"id":1,"last_heartbeat":-5}}]}`))
	require.ErrorIs(t, err, ErrInvalidResponse)
}

func TestDecodeStore_ErrorNamesTheProblem(t *testing.T) {
	_, err := decodeStore([]byte(`"store 1 not found"`), 1)
	require.ErrorIs(t, err, ErrInvalidResponse)
	require.ErrorContains(t, err, "expected a JSON object")
}

// FuzzDecodeStores: whatever the body, the decoder never panics, and when
// it succeeds the values are ones the controller can rely on.
func FuzzDecodeStores(f *testing.F) {
	for _, seed := range []string{
		`{"count": 2, "stores": [
		  {"store": {"id": 1, "address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20160", "version": "8.5.0",
		             "node_state": 1, "state_name": "Up", "last_heartbeat": 1763790000000000000},
		   "status": {"capacity": "1.7TiB", "region_count": 812, "last_heartbeat_ts": "2026-11-22T05:40:00Z"}},
		  {"store": {"id": 7, "address": "demo-tikv-3.demo-tikv-peer.tidb.svc:20160",
		             "state": 2, "node_state": 3, "state_name": "Tombstone"}, "status": {"region_count": 0}}]}`,
		`{"count":0,"stores":null}`,
		`{"count":1,"stores":[{"store":{"id":3,"state":1,"node_state":2,"state_name":"Offline"}}]}`,
		`{"count":1,"stores":[{"store":{"id":3,"state_name":"Down"},"status":{"region_count":4}}]}`,
		`{"stores": "x"}`,
		`{"count":1,"stores":[{"store":{"id":1,"address":"[::1]:20160"}}]}`,
		`null`, `[]`, `{`, ``, `"x"`,
	} {
		f.Add([]byte(seed))
	}
	// Every answer the real PD gave, store lists or not.
	bodies, err := filepath.Glob(filepath.Join(fixtureDir, "*.body"))
	require.NoError(f, err)
	require.NotEmpty(f, bodies)
	for _, name := range bodies {
		body, err := os.ReadFile(name)
		require.NoError(f, err)
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		stores, err := decodeStores(body)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidResponse)
			require.Nil(t, stores)
			return
		}
		require.NotNil(t, stores)
		var raw struct {
			Count int `json:"count"`
		}
		require.NoError(t, json.Unmarshal(body, &raw), "accepted bodies are valid JSON")
		require.Equal(t, raw.Count, len(stores), "accepted lists match their count")
		for _, s := range stores {
			require.NotZero(t, s.ID)
			require.GreaterOrEqual(t, s.RegionCount, 0)
			require.NotContains(t, s.PodName(), ".")
			require.NotContains(t, s.PodName(), ":")
			p := s.Phase()
			require.True(t, p >= PhaseUnknown && p <= PhaseTombstone)
			if p != PhaseUnknown {
				// A phase is only claimed when the numbers agree with it.
				require.Equal(t, basePhase(p), phaseFromNumbers(s.State, s.NodeState))
			}
			if p == PhaseTombstone {
				require.True(t, s.IsTombstone())
				require.Equal(t, StoreTombstone, s.State)
			}
			// A blank state_name counts as absent; any other must name the phase.
			if name := strings.TrimSpace(s.StateName); name != "" && p != PhaseUnknown {
				require.True(t, strings.EqualFold(name, p.String()))
			}
		}
	})
}

// basePhase folds the names PD gives Up stores back into PhaseUp.
func basePhase(p Phase) Phase {
	if p == PhaseDisconnected || p == PhaseDown {
		return PhaseUp
	}
	return p
}
