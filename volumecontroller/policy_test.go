package volumecontroller

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

var testPolicy = Policy{DeadNodeGrace: time.Minute, NotReadyThreshold: 0, StuckPodGrace: 3 * time.Minute}

func tikv(ph pd.Phase) Input {
	return Input{Component: ComponentTiKV, Owned: true, Owner: "TiKV store 7", Facts: OwnerFacts{Known: true, Phase: ph}}
}

func TestDecideBound_AppliesEveryRule(t *testing.T) {
	deadNode := NodeFacts{Gone: true, GoneFor: 2 * time.Minute}
	freshlyGone := NodeFacts{Gone: true, GoneFor: 10 * time.Second}
	stuck := PodFacts{Exists: true, OnStatefulSet: true, Ready: false, NotReadyFor: 5 * time.Minute}
	with := func(in Input, f func(*Input)) Input { f(&in); return in }

	cases := []struct {
		name string
		in   Input
		want Action
		warn bool
	}{
		{"store Up on a live node: nothing", tikv(pd.PhaseUp), ActNone, false},
		{"store Up on a deleted node: nothing, and say the node object lies", with(tikv(pd.PhaseUp), func(i *Input) { i.Node = deadNode }), ActNone, true},
		{"store Down on a live node: PD and the operator handle it", tikv(pd.PhaseDown), ActNone, false},
		{"store Disconnected on a node deleted past the grace: offline it", with(tikv(pd.PhaseDisconnected), func(i *Input) { i.Node = deadNode }), ActOffline, false},
		{"store Down on a node deleted within the grace: nothing yet", with(tikv(pd.PhaseDown), func(i *Input) { i.Node = freshlyGone }), ActNone, false},
		{"store Down on a NotReady node with the rule off: nothing", with(tikv(pd.PhaseDown), func(i *Input) { i.Node = NodeFacts{NotReady: true, NotReadyFor: time.Hour} }), ActNone, false},
		{"store Offline: wait for the drain", tikv(pd.PhaseOffline), ActWait, false},
		{"store Tombstone, no pod: release", tikv(pd.PhaseTombstone), ActRelease, false},
		{"store removed from PD, no pod: release", with(tikv(pd.PhaseUnknown), func(i *Input) { i.Facts = OwnerFacts{Known: true, Removed: true} }), ActRelease, false},
		{"store Tombstone, Ready pod still mounting: wait for the scale-in", with(tikv(pd.PhaseTombstone), func(i *Input) { i.Pod = PodFacts{Exists: true, OnStatefulSet: true, Ready: true} }), ActWait, false},
		{"store Tombstone, pod not Ready only briefly: wait", with(tikv(pd.PhaseTombstone), func(i *Input) {
			i.Pod = PodFacts{Exists: true, OnStatefulSet: true, NotReadyFor: time.Minute}
		}), ActWait, false},
		{"store Tombstone, StatefulSet pod stuck: release with the pod", with(tikv(pd.PhaseTombstone), func(i *Input) { i.Pod = stuck }), ActReleaseWithPod, false},
		{"store Tombstone, stuck pod not of a StatefulSet: wait (nothing would recreate it)", with(tikv(pd.PhaseTombstone), func(i *Input) {
			i.Pod = PodFacts{Exists: true, NotReadyFor: time.Hour}
		}), ActWait, false},
		{"store Tombstone, pod on a dead node: release with the pod", with(tikv(pd.PhaseTombstone), func(i *Input) {
			i.Pod = PodFacts{Exists: true, OnStatefulSet: true, Ready: true}
			i.Node = deadNode
		}), ActReleaseWithPod, false},
		{"PD unreachable: no destructive action, say why", with(tikv(pd.PhaseTombstone), func(i *Input) {
			i.Facts = OwnerFacts{Err: errors.New("connection refused")}
			i.Node = deadNode
		}), ActNone, true},
		{"PD garbage (unknown phase): nothing", with(tikv(pd.PhaseUnknown), func(i *Input) { i.Node = deadNode }), ActNone, true},
		{"owner never recorded, node dead: nothing, say why", with(tikv(pd.PhaseTombstone), func(i *Input) { i.Owned = false; i.Node = deadNode }), ActNone, true},
		{"owner never recorded, node alive: nothing, silently", with(tikv(pd.PhaseTombstone), func(i *Input) { i.Owned = false }), ActNone, false},
		{"PD member listed on a dead node: nothing, say how to remove it", Input{Component: ComponentPD, Owned: true, Owner: "PD member pd-2", Facts: OwnerFacts{Known: true, Phase: pd.PhaseUp}, Node: deadNode}, ActNone, true},
		{"PD member removed, no pod: release", Input{Component: ComponentPD, Owned: true, Owner: "PD member pd-2", Facts: OwnerFacts{Known: true, Removed: true}}, ActRelease, false},
		{"PD member removed, Ready pod: wait", Input{Component: ComponentPD, Owned: true, Owner: "PD member pd-2", Facts: OwnerFacts{Known: true, Removed: true}, Pod: PodFacts{Exists: true, OnStatefulSet: true, Ready: true}}, ActWait, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := testPolicy.DecideBound(c.in)
			require.Equal(t, c.want, d.Action, d.Reason)
			require.Equal(t, c.warn, d.Warn, d.Reason)
			if d.Warn {
				require.NotEmpty(t, d.Reason)
				require.NotEmpty(t, d.Refusal)
			}
		})
	}
}

func TestDecideBound_NotReadyCountsOnlyWhenOptedIn(t *testing.T) {
	p := testPolicy
	p.NotReadyThreshold = 10 * time.Minute
	in := tikv(pd.PhaseDown)
	in.Node = NodeFacts{NotReady: true, NotReadyFor: 11 * time.Minute}
	require.Equal(t, ActOffline, p.DecideBound(in).Action)
	in.Node.NotReadyFor = 9 * time.Minute
	require.Equal(t, ActNone, p.DecideBound(in).Action)
}

func TestDecideReleased_ApprovesOnlyWhenTheOwnerIsGone(t *testing.T) {
	alive := OwnerFacts{Known: true, Phase: pd.PhaseUp}
	tomb := OwnerFacts{Known: true, Phase: pd.PhaseTombstone}
	unknown := OwnerFacts{Err: errors.New("timeout")}
	dead := NodeFacts{Gone: true, GoneFor: time.Hour}
	cases := []struct {
		name            string
		owned, approved bool
		facts           OwnerFacts
		component       string
		node            NodeFacts
		want            Action
	}{
		{"claim deleted by hand while the store is Up: refuse", true, false, alive, ComponentTiKV, NodeFacts{}, ActNone},
		{"claim deleted while PD cannot be asked: refuse", true, false, unknown, ComponentTiKV, NodeFacts{}, ActNone},
		{"claim deleted by the operator after Tombstone: approve", true, false, tomb, ComponentTiKV, NodeFacts{}, ActApprove},
		{"PD member removed: approve", true, false, OwnerFacts{Known: true, Removed: true}, ComponentPD, NodeFacts{}, ActApprove},
		{"already approved on a live node: the agent wipes", true, true, tomb, ComponentTiKV, NodeFacts{}, ActNone},
		{"approved on a dead node: delete the PV object", true, true, tomb, ComponentTiKV, dead, ActDeletePV},
		{"not owned on a live node: plain reclaim, nothing to do", false, false, OwnerFacts{}, "", NodeFacts{}, ActNone},
		{"not owned on a dead node: delete the PV object", false, false, OwnerFacts{}, "", dead, ActDeletePV},
		{"owned, store Up, on a dead node: refuse (data may be needed)", true, false, alive, ComponentTiKV, dead, ActNone},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := testPolicy.DecideReleased(c.owned, c.approved, "TiKV store 7", c.facts, c.component, c.node)
			require.Equal(t, c.want, d.Action, d.Reason)
		})
	}
}

func TestDecideFree_DeletesOnlyPVsOfDeletedNodesPastTheGrace(t *testing.T) {
	require.Equal(t, ActDeletePV, testPolicy.DecideFree(NodeFacts{Gone: true, GoneFor: 61 * time.Second}).Action)
	require.Equal(t, ActNone, testPolicy.DecideFree(NodeFacts{Gone: true, GoneFor: 59 * time.Second}).Action)
	p := testPolicy
	p.NotReadyThreshold = time.Minute
	require.Equal(t, ActNone, p.DecideFree(NodeFacts{NotReady: true, NotReadyFor: time.Hour}).Action,
		"a NotReady node may come back with its agent; its free PVs stay")
}

func TestStoreFacts_TellsRemovedFromUnknown(t *testing.T) {
	require.Equal(t, OwnerFacts{Known: true, Removed: true, Phase: pd.PhaseTombstone},
		storeFacts(indexStores([]pd.StoreInfo{{ID: 1, StateName: "Up"}}), nil, 7))
	f := storeFacts(indexStores(nil), nil, 7)
	require.False(t, f.Known, "an empty store list proves nothing")
	f = storeFacts(indexStores(nil), errors.New("503"), 7)
	require.False(t, f.Known)
	f = storeFacts(indexStores([]pd.StoreInfo{{ID: 7, StateName: "Serving"}}), nil, 7)
	require.False(t, f.Known, "a state PD does not document is unknown")
}
