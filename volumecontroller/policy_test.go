package volumecontroller

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

var testPolicy = Policy{DeadNodeGrace: time.Minute, NotReadyThreshold: 0, StuckPodGrace: 3 * time.Minute}

func tikv(ph pd.Phase) Input {
	return Input{Component: ComponentTiKV, Owned: true, Owner: "TiKV store 7", Facts: OwnerFacts{Known: true, Phase: ph}}
}

func TestDecideBound_AppliesEveryRule(t *testing.T) {
	deadNode := NodeFacts{Gone: true, GoneFor: 2 * time.Minute, DeadFor: time.Minute}
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
		{"store Up on a node dead by the rules for seconds: wait quietly for PD to notice", with(tikv(pd.PhaseUp), func(i *Input) {
			i.Node = NodeFacts{OutOfService: true, DeadFor: 5 * time.Second}
		}), ActWait, false},
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
		name                    string
		owned, approved, delete bool
		facts                   OwnerFacts
		component               string
		node                    NodeFacts
		want                    Action
		warn                    bool
	}{
		{"claim deleted by hand while the store is Up: refuse", true, false, false, alive, ComponentTiKV, NodeFacts{}, ActNone, true},
		{"claim deleted while PD cannot be asked: refuse", true, false, false, unknown, ComponentTiKV, NodeFacts{}, ActNone, true},
		{"claim deleted by the operator after Tombstone: approve", true, false, false, tomb, ComponentTiKV, NodeFacts{}, ActApprove, false},
		{"PD member removed: approve", true, false, false, OwnerFacts{Known: true, Removed: true}, ComponentPD, NodeFacts{}, ActApprove, false},
		{"already approved and Delete on a live node: the agent wipes", true, true, true, tomb, ComponentTiKV, NodeFacts{}, ActNone, false},
		{"approved but set back to Retain: back to Delete", true, true, false, tomb, ComponentTiKV, NodeFacts{}, ActReclaimDelete, false},
		{"approved on a dead node: delete the PV object", true, true, true, tomb, ComponentTiKV, dead, ActDeletePV, false},
		{"not owned, Delete, on a live node: plain reclaim, nothing to do", false, false, true, OwnerFacts{}, "", NodeFacts{}, ActNone, false},
		{"not owned, Delete, on a dead node: delete the PV object", false, false, true, OwnerFacts{}, "", dead, ActDeletePV, false},
		{"not owned, Retain, on a dead node: keep the PV (and the data)", false, false, false, OwnerFacts{}, "", dead, ActNone, false},
		{"owned, store Up, on a dead node: refuse (data may be needed)", true, false, false, alive, ComponentTiKV, dead, ActNone, true},
		{"a TiKV disk never owned, Retain: keep its data and say so", false, false, false, OwnerFacts{}, ComponentTiKV, NodeFacts{}, ActNone, true},
		{"a TiKV disk never owned is never set to Delete", false, false, false, OwnerFacts{}, ComponentTiKV, NodeFacts{}, ActNone, true},
		{"not approved, Retain, owner alive: never set to Delete", true, false, false, alive, ComponentTiKV, NodeFacts{}, ActNone, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := testPolicy.DecideReleased(ReleasedInput{Component: c.component, Owned: c.owned, Approved: c.approved,
				ReclaimDelete: c.delete, Owner: "TiKV store 7", Facts: c.facts, Node: c.node})
			require.Equal(t, c.want, d.Action, d.Reason)
			require.Equal(t, c.warn, d.Warn, d.Reason)
		})
	}
}

func TestDecideBound_AnOwnerUnresolvedPastTheGraceIsReported(t *testing.T) {
	p := testPolicy
	p.UnresolvedGrace = 5 * time.Minute
	in := Input{Component: ComponentTiKV, Unresolved: "PD lists no store advertising pod demo-tikv-3", UnresolvedFor: 4 * time.Minute}
	require.False(t, p.DecideBound(in).Warn)
	in.UnresolvedFor = 6 * time.Minute
	d := p.DecideBound(in)
	require.Equal(t, ActNone, d.Action)
	require.True(t, d.Warn)
	require.Equal(t, "owner-unresolved", d.Refusal)
	require.Contains(t, d.Reason, "no store advertising")
}

func TestDecidePlain_AClaimNoTiDBPodUsesRecyclesLikeAnyLocalVolume(t *testing.T) {
	require.Equal(t, ActReclaimDelete, testPolicy.DecidePlain(false).Action)
	require.Equal(t, ActNone, testPolicy.DecidePlain(true).Action)
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
	const cluster = uint64(7714128303309438701)
	idx := func(c uint64, ss ...pd.StoreInfo) storeIndex { i := indexStores(ss); i.clusterID = c; return i }
	rec := func(state string) provisioner.Ownership {
		return provisioner.Ownership{Component: ComponentTiKV, Claim: "c", StoreID: 7, ClusterID: cluster, State: state}
	}
	other := pd.StoreInfo{ID: 1, StateName: "Up"}
	cases := []struct {
		name    string
		stores  storeIndex
		err     error
		rec     provisioner.Ownership
		known   bool
		removed bool
		why     string
	}{
		{"last seen Tombstone, now gone from its own cluster: removed", idx(cluster, other), nil, rec("Tombstone"), true, true, ""},
		// Model check, seed 1796104784869441324: store 5 was Offline (a
		// person's pd-ctl store delete) on a dead node when pd-recover
		// brought the stores back as their TiKVs reported; store 5 never
		// did, and its claim was released with regions PD had not moved.
		{"last seen Offline, now gone (buried and removed since, or lost by pd-recover): unknown", idx(cluster, other), nil, rec("Offline"), false, false, unknownVanished},
		{"last seen Up, now gone (pd-recover, rebuilt PD): unknown", idx(cluster, other), nil, rec("Up"), false, false, unknownVanished},
		{"last seen Down, now gone: unknown", idx(cluster, other), nil, rec("Down"), false, false, unknownVanished},
		{"last seen Disconnected, now gone: unknown", idx(cluster, other), nil, rec("Disconnected"), false, false, unknownVanished},
		{"an empty store list proves nothing", idx(cluster), nil, rec("Tombstone"), false, false, unknownPD},
		{"PD unreachable", storeIndex{}, errors.New("503"), rec("Tombstone"), false, false, unknownPD},
		{"another cluster's PD says nothing, even Tombstone", idx(42, pd.StoreInfo{ID: 7, StateName: "Tombstone", State: pd.StoreTombstone, NodeState: pd.NodeRemoved}), nil, rec("Offline"), false, false, unknownCluster},
		{"a state PD does not document is unknown", idx(cluster, pd.StoreInfo{ID: 7, StateName: "Serving"}), nil, rec("Up"), false, false, unknownPD},
		{"a record without a cluster ID never concludes gone", idx(cluster, other), nil, provisioner.Ownership{Component: ComponentTiKV, Claim: "c", StoreID: 7, State: "Tombstone"}, false, false, unknownPD},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := storeFacts(c.stores, c.err, c.rec)
			require.Equal(t, c.known, f.Known, "%v", f.Err)
			require.Equal(t, c.removed, f.Removed)
			require.Equal(t, c.why, f.Why)
			if !f.Known {
				require.Error(t, f.Err)
			}
		})
	}
	f := storeFacts(idx(42, other), nil, rec("Up"))
	require.ErrorContains(t, f.Err, "42")
	require.ErrorContains(t, f.Err, "7714128303309438701", "the warning names both cluster IDs")
}

func TestMemberFacts_AMemberGoneWithAllItsPeersIsUnknown(t *testing.T) {
	const cluster = uint64(7714128303309438701)
	rec := provisioner.Ownership{Component: ComponentPD, Claim: "c", Member: "pd-2", MemberID: 12, ClusterID: cluster, State: "Up", Peers: []uint64{11, 12, 13}}
	members := func(c uint64, ids ...uint64) pd.Members {
		m := pd.Members{ClusterID: c}
		for _, id := range ids {
			m.Members = append(m.Members, pd.Member{Name: fmt.Sprintf("pd-%d", id-10), MemberID: id})
		}
		return m
	}
	require.True(t, memberFacts(members(cluster, 11, 12, 13), nil, rec).Known)
	f := memberFacts(members(cluster, 11, 13), nil, rec)
	require.True(t, f.Known && f.Removed, "removed from a membership that carries on")
	f = memberFacts(members(cluster, 21, 22, 23), nil, rec)
	require.False(t, f.Known, "every peer is new: a rebuilt or recovered PD")
	require.Equal(t, unknownVanished, f.Why)
	f = memberFacts(members(99, 11, 13), nil, rec)
	require.False(t, f.Known, "another cluster's PD")
	require.Equal(t, unknownCluster, f.Why)
	renamed := members(cluster, 11, 13)
	renamed.Members = append(renamed.Members, pd.Member{Name: "pd-2", MemberID: 99})
	f = memberFacts(renamed, nil, rec)
	require.True(t, f.Removed, "a new member under the old name is not the recorded one")
}

// Found by the model check (e2e/model, seeds 31 and 33 at 600 steps): the
// PV of a TiKV or PD disk whose owner was never confirmed, released with
// Retain on a node deleted past the grace, was deleted; when the node came
// back, the agent found a disk with data and no PV, and wiped it — the data
// of a store PD had never buried. In seed 33 the controller had never seen
// the PV bound, so it did not even know the disk was a PD member's.
func TestDecideReleased_KeepsTheUnownedPVOfADeadNodesTiKVOrPDDisk(t *testing.T) {
	dead := NodeFacts{Gone: true, GoneFor: time.Hour}
	for _, comp := range []string{ComponentTiKV, ComponentPD} {
		t.Run(comp, func(t *testing.T) {
			d := testPolicy.DecideReleased(ReleasedInput{Component: comp, Node: dead})
			require.Equal(t, ActNone, d.Action, d.Reason)
			require.True(t, d.Warn)
			require.Equal(t, "owner-unknown", d.Refusal)
		})
	}
}

func TestDecideReleased_KeepsTheRetainPVOfADeadNodeWhoseComponentIsUnknown(t *testing.T) {
	dead := NodeFacts{Gone: true, GoneFor: time.Hour}
	require.Equal(t, ActNone, testPolicy.DecideReleased(ReleasedInput{Node: dead}).Action,
		"Retain keeps the data: without its PV the disk would be wiped when the node returns")
	require.Equal(t, ActDeletePV, testPolicy.DecideReleased(ReleasedInput{ReclaimDelete: true, Node: dead}).Action,
		"a Delete PV would be wiped anyway; no agent is left to do it")
}
