//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// The TiDB Operator v2 cluster of these scenarios: cluster and groups
// "basic" in namespace "db", as in v2's documentation.
const (
	v2NS      = "db"
	v2Cluster = "basic"
)

// TestV2ScaleIn_OperatorRemovesStoreAndClaim_DiskRecycledWithoutAFight is
// issue 10's v2 scale-in: the "operator" marks an instance offline, deletes
// its store in PD, and once PD reports it Removed deletes the instance,
// whose finalizer deletes pod and claim; our controller only approves the
// wipe, and the disk comes back Available.
func TestV2ScaleIn_OperatorRemovesStoreAndClaim_DiskRecycledWithoutAFight(t *testing.T) {
	te := startDisks(t, 1, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	v := startV2(t, te, sim.V2Options{Namespace: v2NS, Cluster: v2Cluster, Replicas: 4})
	ctrl := startControllerWith(t, te.env, "controller-0", testTimings(time.Second)...)
	owners := waitV2Owners(ctx, t, te, v, 4)
	for _, p := range owners {
		require.Equal(t, p.Pod.Spec.NodeName, p.PV.Labels[provisioner.LabelNode])
		require.Equal(t, "v2", p.PV.Annotations[provisioner.AnnTiDBOperator], "PV %s records a v2 owner", p.PV.Name)
	}

	require.NoError(t, v.Scale(ctx, 3))
	victim := waitOffline(ctx, t, v)
	p := owners[victim.GetName()]
	disk := p.PV.Spec.Local.Path
	writeUserData(t, disk, 2, 5)
	t.Logf("scale-in: instance %s (pod %s, store %d, PV %s) marked offline by the operator", victim.GetName(), p.Pod.Name, p.Store, p.PV.Name)

	fresh := te.waitRecycled(ctx, t, &p.PV)
	require.Equal(t, disk, fresh.Spec.Local.Path)
	require.Empty(t, userContents(t, disk), "the recycled disk is empty")

	s, ok := v.Sim.Store(p.Store)
	require.True(t, ok)
	require.Equal(t, "Tombstone", s.StateName)
	require.Equal(t, 1, v.Sim.DeleteRequests(p.Store), "the store was deleted in PD once, by the operator")
	require.False(t, s.PhysicallyDestroyed, "never forced")
	require.Equal(t, 1, v.Deletions(victim.GetName()), "the operator deleted its own instance")
	_, err := te.env.Cluster.Client.CoreV1().PersistentVolumeClaims(v2NS).Get(ctx, sim.V2ClaimName("data", p.Pod.Name), metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(err), "the operator deleted the claim")

	require.Empty(t, eventsAbout(ctx, t, te.env, "PersistentVolume", p.PV.Name, "InstanceDeleted"), "our controller never deletes an instance being scaled in")
	require.Empty(t, eventsAbout(ctx, t, te.env, "PersistentVolume", p.PV.Name, "DiskReleased"), "the claim is the operator's to delete")
	// The wipe is approved once. (A sync decided from a cache that has not
	// yet seen the controller's own approval approves again: see
	// approveOnce.)
	approveOnce(ctx, t, te, p.PV.Name)
	wiped, err := eventsFor(ctx, te.env, "", p.PV.UID, "Wiped")
	require.NoError(t, err)
	require.Len(t, wiped, 1, "the disk was wiped once")
	requireNoFight(ctx, t, te.env, ctrl)

	// The other three stores and disks are untouched.
	waitV2Owners(ctx, t, te, v, 3)
	for name, o := range owners {
		if name == victim.GetName() {
			continue
		}
		require.Equal(t, 0, v.Sim.DeleteRequests(o.Store), "store %d of %s", o.Store, name)
	}
}

// waitOffline waits for the instance the operator marks spec.offline.
func waitOffline(ctx context.Context, t testing.TB, v *sim.V2) unstructured.Unstructured {
	t.Helper()
	var got unstructured.Unstructured
	require.Eventually(t, func() bool {
		insts, err := v.Instances(ctx)
		if err != nil {
			return false
		}
		for _, inst := range insts {
			if off, _, _ := unstructured.NestedBool(inst.Object, "spec", "offline"); off {
				got = inst
				return true
			}
		}
		return false
	}, waitLong, tick, "no instance was marked offline")
	return got
}

// TestV2DeadNode_ControllerDeletesTheInstance_ReplacementRunsOnAFreshDisk
// is issue 10's v2 dead node: v2 has no failover; the controller does what
// v2's documentation asks of an operator (delete the TiKV instance), the
// "operator" offlines the store, removes pod and claim, and the group's
// new instance runs on a fresh disk of another node.
func TestV2DeadNode_ControllerDeletesTheInstance_ReplacementRunsOnAFreshDisk(t *testing.T) {
	te := startDisks(t, 1, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	v := startV2(t, te, sim.V2Options{Namespace: v2NS, Cluster: v2Cluster, Replicas: 4})
	ctrl := startControllerWith(t, te.env, "controller-0", testTimings(time.Second)...)
	owners := waitV2Owners(ctx, t, te, v, 4)

	var victim v2Placement
	for _, p := range owners {
		victim = p
		break
	}
	dead := victim.Pod.Spec.NodeName
	t.Logf("node %s dies; it runs instance %s (pod %s, store %d)", dead, victim.Instance, victim.Pod.Name, victim.Store)
	lost := killNode(ctx, t, te, dead)

	// The controller deletes the instance (with the UID it recorded).
	te.waitEvent(ctx, t, victim.PV.UID, "InstanceDeleted")
	t.Logf("node deleted → instance deleted by tidb-localpv: %s", time.Since(lost).Round(time.Millisecond))
	require.Eventually(t, func() bool {
		s, ok := v.Sim.Store(victim.Store)
		return ok && s.StateName == "Tombstone"
	}, waitLong, tick, "store %d never buried", victim.Store)
	t.Logf("node deleted → store %d Tombstone: %s", victim.Store, time.Since(lost).Round(time.Millisecond))

	// The group's replacement: a new instance whose pod runs on the spare
	// node's fresh disk, with a new store.
	var repl v2Placement
	require.Eventually(t, func() bool {
		ps := waitV2OwnersNow(ctx, te, v)
		for name, p := range ps {
			if _, old := owners[name]; !old {
				repl = p
				return len(ps) == 4
			}
		}
		return false
	}, waitRecovery, 100*time.Millisecond, "no replacement instance ran")
	t.Logf("node deleted → replacement %s Running on %s (store %d): %s", repl.Pod.Name, repl.Pod.Spec.NodeName, repl.Store, time.Since(lost).Round(time.Millisecond))
	require.NotEqual(t, dead, repl.Pod.Spec.NodeName)
	require.NotEqual(t, victim.Store, repl.Store, "a fresh disk means a new store")
	require.NotEqual(t, victim.PV.Labels[provisioner.LabelDisk], repl.PV.Labels[provisioner.LabelDisk])

	_, err := v.InstanceGet(ctx, victim.Instance)
	require.True(t, apierrors.IsNotFound(err), "the dead node's instance is gone")
	require.Equal(t, 1, v.Sim.DeleteRequests(victim.Store), "the store was offlined once, by the operator")
	require.Equal(t, 1, eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", victim.PV.Name, "InstanceDeleted")), "the instance was deleted once")
	require.Empty(t, eventsAbout(ctx, t, te.env, "PersistentVolume", victim.PV.Name, "StoreOfflined"), "the controller leaves the store to the operator")
	require.Empty(t, eventsAbout(ctx, t, te.env, "PersistentVolume", victim.PV.Name, "DiskReleased"), "the claim is the operator's to delete")
	require.Zero(t, v.Deletions(victim.Instance), "the operator did not delete it itself: v2 has no failover")
	requireNoFight(ctx, t, te.env, ctrl)

	// The dead node's PV object goes too.
	require.Eventually(t, func() bool {
		_, err := te.env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, victim.PV.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, waitLong, tick, "PV %s of the dead node was never removed", victim.PV.Name)
}

// waitV2OwnersNow is one look at waitV2Owners' condition: the live
// instances whose owners are recorded.
func waitV2OwnersNow(ctx context.Context, te *tidbEnv, v *sim.V2) map[string]v2Placement {
	out := map[string]v2Placement{}
	insts, err := v.Instances(ctx)
	if err != nil {
		return out
	}
	for _, inst := range insts {
		if inst.GetDeletionTimestamp() != nil {
			continue
		}
		if p, why := v2PlacementOf(ctx, te, v, inst); why == "" {
			out[inst.GetName()] = p
		}
	}
	return out
}

// approveOnce checks the controller approved a PV's wipe once. It does
// not stop the test: the rest of the scenario still tells.
func approveOnce(ctx context.Context, t *testing.T, te *tidbEnv, pv string) {
	t.Helper()
	if n := eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", pv, "ReleaseApproved")); n != 1 {
		t.Errorf("PV %s: the wipe was approved %d times, want once (volumecontroller approve does not check the fresh PV is already approved)", pv, n)
	}
}
