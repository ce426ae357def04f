package pd

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStoreInfo_Phase(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state StoreState
		node  NodeState
		sname string
		want  Phase
	}{
		{"up, fields omitted", 0, 0, "", PhaseUp},
		{"up serving", StoreUp, NodeServing, "Up", PhaseUp},
		{"up preparing", StoreUp, NodePreparing, "Up", PhaseUp},
		{"disconnected keeps state 0", StoreUp, NodeServing, "Disconnected", PhaseDisconnected},
		{"down keeps state 0", StoreUp, NodeServing, "Down", PhaseDown},
		{"name is case-insensitive", StoreUp, NodeServing, "dOwN", PhaseDown},
		{"blank name counts as absent", StoreOffline, NodeRemoving, "  ", PhaseOffline},
		{"offline", StoreOffline, NodeRemoving, "Offline", PhaseOffline},
		{"offline, old pd without node_state", StoreOffline, 0, "Offline", PhaseOffline},
		{"offline without name", StoreOffline, NodeRemoving, "", PhaseOffline},
		{"tombstone", StoreTombstone, NodeRemoved, "Tombstone", PhaseTombstone},
		{"tombstone without name", StoreTombstone, NodeRemoved, "", PhaseTombstone},
		{"tombstone, old pd", StoreTombstone, 0, "Tombstone", PhaseTombstone},
		{"name says tombstone, state says up", StoreUp, NodeServing, "Tombstone", PhaseUnknown},
		{"name says up, state says tombstone", StoreTombstone, NodeRemoved, "Up", PhaseUnknown},
		{"down on an offline store", StoreOffline, NodeRemoving, "Down", PhaseUnknown},
		{"state and node_state disagree", StoreUp, NodeRemoved, "", PhaseUnknown},
		{"offline but removed", StoreOffline, NodeRemoved, "", PhaseUnknown},
		{"unknown name", StoreUp, NodeServing, "Evicting", PhaseUnknown},
		{"unknown state number", 7, 0, "", PhaseUnknown},
		{"unknown node_state", StoreUp, 9, "Up", PhaseUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := StoreInfo{State: tc.state, NodeState: tc.node, StateName: tc.sname}
			require.Equal(t, tc.want, s.Phase())
		})
	}
}

func TestStoreInfo_IsTombstone(t *testing.T) {
	require.True(t, StoreInfo{State: StoreTombstone}.IsTombstone())
	require.True(t, StoreInfo{NodeState: NodeRemoved}.IsTombstone())
	require.True(t, StoreInfo{StateName: "tombstone"}.IsTombstone())
	require.False(t, StoreInfo{State: StoreOffline, NodeState: NodeRemoving, StateName: "Offline"}.IsTombstone())
	require.False(t, StoreInfo{StateName: "Down"}.IsTombstone())
}

func TestStoreInfo_PodName(t *testing.T) {
	for addr, want := range map[string]string{
		"demo-tikv-0.demo-tikv-peer.tidb.svc:20160": "demo-tikv-0",
		"demo-tikv-0.demo-tikv-peer.tidb.svc":       "demo-tikv-0",
		"demo-tikv-1:20160":                         "demo-tikv-1",
		"demo-tikv-2":                               "demo-tikv-2",
		"10.0.0.7:20160":                            "",
		"10.0.0.7":                                  "",
		"[fd00::7]:20160":                           "",
		"fd00::7":                                   "",
		"":                                          "",
	} {
		require.Equal(t, want, StoreInfo{Address: addr}.PodName(), addr)
	}
}

func TestEnumStrings(t *testing.T) {
	require.Equal(t, "Tombstone", StoreTombstone.String())
	require.Equal(t, "StoreState(5)", StoreState(5).String())
	require.Equal(t, "Removing", NodeRemoving.String())
	require.Equal(t, "NodeState(8)", NodeState(8).String())
	require.Equal(t, "Disconnected", PhaseDisconnected.String())
	require.Equal(t, "Unknown", Phase(0).String())
}
