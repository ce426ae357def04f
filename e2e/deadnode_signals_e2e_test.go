//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Issue 10: the dead-node signals Kubernetes already has, and stores that
// cannot drain, on the real control plane with a TiDB Operator v1 cluster.

// waitPodMoved waits until pod i of sts runs on another node than from,
// on its own node's disk, and returns that PV.
func waitPodMoved(ctx context.Context, t testing.TB, te *tidbEnv, sts *appsv1.StatefulSet, i int, from string) *corev1.PersistentVolume {
	t.Helper()
	pod := podName(sts.Name, i)
	var moved *corev1.PersistentVolume
	require.Eventually(t, func() bool {
		p, err := te.env.Cluster.Client.CoreV1().Pods(tidbNS).Get(ctx, pod, metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning || p.Spec.NodeName == from || p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
			return false
		}
		moved = te.pvOfClaim(ctx, sts, i)
		return moved != nil && moved.Labels[provisioner.LabelNode] == p.Spec.NodeName
	}, waitRecovery, tick, "pod %s never ran again on another node", pod)
	return moved
}

// TestOutOfService_TaintedNodesPodRunsAgainElsewhere_WithoutNodeDeletion:
// a node shut down (NotReady, agent gone) and tainted
// node.kubernetes.io/out-of-service: Kubernetes evicts and garbage-collects
// its pods; the controller takes the taint as the node's death at once —
// no Node deletion, no grace — offlines the silent store, and once PD has
// buried it releases the claim, so the StatefulSet's pod runs on another
// node's fresh disk.
func TestOutOfService_TaintedNodesPodRunsAgainElsewhere_WithoutNodeDeletion(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	ctrl := te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 1)
	store := storeIDOf(t, pv)
	victim := pv.Labels[provisioner.LabelNode]
	t.Logf("node %s shuts down and is tainted out-of-service; it runs %s (store %d)", victim, podName(sts.Name, 1), store)
	tainted := shutDownNode(ctx, t, te, victim)

	moved := waitPodMoved(ctx, t, te, sts, 1, victim)
	t.Logf("out-of-service taint → %s Running on %s: %s", podName(sts.Name, 1), moved.Labels[provisioner.LabelNode], time.Since(tainted).Round(time.Millisecond))

	n, err := te.env.Cluster.Client.CoreV1().Nodes().Get(ctx, victim, metav1.GetOptions{})
	require.NoError(t, err, "the Node object was never deleted")
	require.NotEmpty(t, n.Spec.Taints)
	s, ok := te.pd.Sim.Store(store)
	require.True(t, ok)
	require.Equal(t, "Tombstone", s.StateName)
	require.False(t, s.PhysicallyDestroyed, "never forced")
	require.Equal(t, 1, te.pd.Sim.DeleteRequests(store), "the store is offlined exactly once")
	offlined := eventsAbout(ctx, t, te.env, "PersistentVolume", pv.Name, "StoreOfflined")
	require.Equal(t, 1, eventCount(offlined))
	require.Contains(t, offlined[0].Message, "out-of-service", "the taint is the reason")
	require.Equal(t, 1, eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", pv.Name, "DiskReleased")), "the claim is released once")
	require.NotEqual(t, store, storeIDOf(t, te.waitOwnerRecorded(ctx, t, sts, 1)), "a fresh disk means a new store")
	requireNoFight(ctx, t, te.env, ctrl)
}

// TestMissedNodeDeletion_PendingPodRecoveredWhenTheControllerStarts: the
// controller is down while a node is deleted; Kubernetes garbage-collects
// the node's pod and the StatefulSet's new pod stays Pending, its bound PV
// on a node that is gone. A controller started afterwards never sees the
// deletion event, and recovers the pod all the same.
func TestMissedNodeDeletion_PendingPodRecoveredWhenTheControllerStarts(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	first := te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 1)
	store := storeIDOf(t, pv)
	victim := pv.Labels[provisioner.LabelNode]
	old, err := te.env.Cluster.Client.CoreV1().Pods(tidbNS).Get(ctx, podName(sts.Name, 1), metav1.GetOptions{})
	require.NoError(t, err)

	first.Stop()
	t.Logf("controller stopped; node %s (pod %s, store %d) is deleted", victim, old.Name, store)
	killNode(ctx, t, te, victim)
	require.Eventually(t, func() bool {
		p, err := te.env.Cluster.Client.CoreV1().Pods(tidbNS).Get(ctx, old.Name, metav1.GetOptions{})
		return err == nil && p.UID != old.UID && p.Status.Phase == corev1.PodPending && p.Spec.NodeName == ""
	}, waitRecovery, 100*time.Millisecond, "the StatefulSet's new pod never showed up Pending")
	require.Zero(t, te.pd.Sim.DeleteRequests(store), "nothing acted while the controller was down")
	t.Logf("pod %s is Pending: its PV %s is on the deleted node", old.Name, pv.Name)

	started := time.Now()
	second := te.startController(t, "controller-1", time.Second)
	moved := waitPodMoved(ctx, t, te, sts, 1, victim)
	t.Logf("controller started → %s Running on %s: %s", old.Name, moved.Labels[provisioner.LabelNode], time.Since(started).Round(time.Millisecond))
	require.Equal(t, 1, te.pd.Sim.DeleteRequests(store), "the store is offlined exactly once")
	require.Equal(t, 1, eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", pv.Name, "DiskReleased")), "the claim is released once")
	requireNoFight(ctx, t, te.env, first, second)
}

// TestUndrainable_ThreeStoresMaxReplicasThree_RefusalReportedNeverForced:
// three stores and max-replicas 3; a node dies. PD refuses to offline its
// store (two would be left for three replicas). The refusal is reported on
// the PV and on the node with PD's own words; the store is never forced,
// its claim and pod stay.
func TestUndrainable_ThreeStoresMaxReplicasThree_RefusalReportedNeverForced(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 3)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 1)
	store := storeIDOf(t, pv)
	victim := pv.Labels[provisioner.LabelNode]
	killNode(ctx, t, te, victim)

	want := fmt.Sprintf("can not remove store %d since the number of up stores would be 2 while need 3", store)
	ev := te.waitEvent(ctx, t, pv.UID, "PDRefusedOffline")
	require.Contains(t, ev.Message, want)
	require.Eventually(t, func() bool {
		evs := eventsAbout(ctx, t, te.env, "Node", victim, "PDRefusedOffline")
		return len(evs) > 0 && strings.Contains(evs[0].Message, want)
	}, waitLong, tick, "the refusal is reported on the node too")
	t.Logf("on the PV: %s", ev.Message)

	// Several polls later: still refused, never forced, nothing released.
	before := te.pd.Sim.DeleteRequests(store)
	watchFor := 10 * time.Second
	require.Never(t, func() bool {
		s, ok := te.pd.Sim.Store(store)
		return !ok || s.PhysicallyDestroyed || s.StateName == "Offline" || s.StateName == "Tombstone"
	}, watchFor, 100*time.Millisecond, "the store must stay as it is: never forced")
	after := te.pd.Sim.DeleteRequests(store)
	t.Logf("DELETE /store/%d requests: %d before, %d after another %s (refused each time)", store, before, after, watchFor)
	te.requireClaimExists(ctx, t, sim.ClaimName("tikv", sts.Name, 1))
	require.Empty(t, eventsAbout(ctx, t, te.env, "PersistentVolume", pv.Name, "DiskReleased"))
	for _, ev := range controllerWarnings(ctx, t, te.env) {
		require.Contains(t, []string{"PDRefusedOffline", "ReleaseRefused"}, ev.Reason, "only the refusal is reported: %s", ev.Message)
	}
}

// TestUndrainable_OfflineStoreOnADeadNodeReportedWithPDsReasonNeverForced:
// four stores, max-replicas 3; two nodes die. The controller offlines one
// silent store (PD accepts: three stores stay up) and PD refuses the
// other. The Offline store's regions have only two live stores to go to,
// so PD keeps it Offline — in the simulator its drain is set to take an
// hour, which stands for "forever" — and the controller reports why on the
// PV and the node, with the operator's choices, and never forces it.
func TestUndrainable_OfflineStoreOnADeadNodeReportedWithPDsReasonNeverForced(t *testing.T) {
	t.Parallel()
	te := startDisks(t, 1, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	opts := pdOptions
	opts.DrainDelay = time.Hour
	p, err := te.env.StartPD(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	te.pd = p
	te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	dead := map[uint64]*corev1.PersistentVolume{}
	for _, i := range []int{2, 3} {
		pv := te.waitOwnerRecorded(ctx, t, sts, i)
		id := storeIDOf(t, pv)
		require.NoError(t, p.Sim.SetRegions(id, 45))
		dead[id] = pv
	}
	for _, pv := range dead {
		killNode(ctx, t, te, pv.Labels[provisioner.LabelNode])
	}

	// One store goes Offline; PD refuses the other.
	var offline, refused uint64
	require.Eventually(t, func() bool {
		for id := range dead {
			if s, ok := p.Sim.Store(id); ok && s.StateName == "Offline" {
				offline = id
			} else {
				refused = id
			}
		}
		return offline != 0 && refused != 0
	}, waitLong, tick, "no store went Offline")
	opv, rpv := dead[offline], dead[refused]
	t.Logf("store %d Offline (PV %s), store %d refused (PV %s)", offline, opv.Name, refused, rpv.Name)
	te.waitEvent(ctx, t, rpv.UID, "PDRefusedOffline")

	var report corev1.Event
	require.Eventually(t, func() bool {
		for _, ev := range eventsAbout(ctx, t, te.env, "PersistentVolume", opv.Name, "ReleaseRefused") {
			if strings.Contains(ev.Message, "PD cannot bury it") {
				report = ev
				return true
			}
		}
		return false
	}, waitLong, tick, "the undrainable store is never reported on its PV")
	t.Logf("on the PV: %s", report.Message)
	require.Contains(t, report.Message, "only 2 stores are Up and heartbeating while max-replicas is 3")
	require.Contains(t, report.Message, "never forces")
	require.Contains(t, report.Message, "scale out")
	require.Eventually(t, func() bool {
		for _, ev := range eventsAbout(ctx, t, te.env, "Node", opv.Labels[provisioner.LabelNode], "ReleaseRefused") {
			if strings.Contains(ev.Message, "PD cannot bury it") {
				return true
			}
		}
		return false
	}, waitLong, tick, "the undrainable store is never reported on its node")

	require.Never(t, func() bool {
		for id := range dead {
			if s, ok := p.Sim.Store(id); !ok || s.PhysicallyDestroyed || s.StateName == "Tombstone" {
				return true
			}
		}
		return p.Sim.DeleteRequests(offline) != 1
	}, 10*time.Second, 100*time.Millisecond, "the Offline store is offlined once and never forced; nothing is buried")
	te.requireClaimExists(ctx, t, sim.ClaimName("tikv", sts.Name, 2))
	te.requireClaimExists(ctx, t, sim.ClaimName("tikv", sts.Name, 3))
	// A standing refusal is one report, not one per poll.
	if n := eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", opv.Name, "ReleaseRefused")); n != 1 {
		t.Errorf("the undrainable store was reported %d times on PV %s, want once while the reason stands (the reason quotes how long ago the node was deleted, so it changes every second)", n, opv.Name)
	}
}
