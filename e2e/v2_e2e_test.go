//go:build e2e

package e2e

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
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
	t.Parallel()
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
	t.Parallel()
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

// TestV1AndV2SideBySide_EachFindsItsPDWithoutConfigurationAndRecycles runs
// a TiDB Operator v1 cluster (StatefulSet) and a v2 cluster in one
// Kubernetes cluster, each with its own PD, and a controller given no PD
// endpoint at all: v1's PD is found by the default template
// (http://demo-pd.default:2379), v2's through the Cluster object's
// status.pd (http://basic-pd.db:2379, as v2 writes it). The controller
// resolves those names as cluster DNS would (its own /etc/hosts). A
// scale-in of each recycles its disk; neither cluster's stores are asked
// of the other's PD.
func TestV1AndV2SideBySide_EachFindsItsPDWithoutConfigurationAndRecycles(t *testing.T) {
	t.Parallel()
	te := startDisks(t, 2, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	p1, err := te.env.StartPD(ctx, pdOptions)
	require.NoError(t, err)
	t.Cleanup(p1.Close)
	te.pd = p1
	v2opts := pdOptions
	v2opts.ClusterID = 7000000000000000077
	v := startV2(t, te, sim.V2Options{Namespace: v2NS, Cluster: v2Cluster, Replicas: 4, PD: v2opts,
		StatusPD: "http://" + v2Cluster + "-pd." + v2NS + ":2379"})
	require.NotEqual(t, p1.Sim.ClusterID(), v.Sim.ClusterID())

	l1, l2 := listenPD(t), listenPD(t)
	forwardPD(t, l1, p1.URL)
	forwardPD(t, l2, v.URL)
	hosts := map[string]string{
		tidbInstance + "-pd." + tidbNS: hostOf(l1),
		v2Cluster + "-pd." + v2NS:      hostOf(l2),
	}
	t.Logf("cluster DNS for the controller: %v", hosts)
	ctrl := startControllerWithDNS(t, te.env, "controller-0", hosts, testTimings(time.Second)...)

	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	owners := waitV2Owners(ctx, t, te, v, 4)
	for i := range 4 {
		pv := te.pvOfClaim(ctx, sts, i)
		require.Equal(t, strconv.FormatUint(p1.Sim.ClusterID(), 10), pv.Annotations[provisioner.AnnPDClusterID], "v1 PV %s", pv.Name)
	}
	for _, o := range owners {
		require.Equal(t, strconv.FormatUint(v.Sim.ClusterID(), 10), o.PV.Annotations[provisioner.AnnPDClusterID], "v2 PV %s", o.PV.Name)
	}
	require.Len(t, p1.Sim.Stores(), 4, "v1's PD holds v1's stores only")
	require.Len(t, v.Sim.Stores(), 4, "v2's PD holds v2's stores only")

	// v1: TiDB Operator buries the last store, then scales the StatefulSet in.
	v1pv := te.waitOwnerRecorded(ctx, t, sts, 3)
	te.offlineStore(ctx, t, storeIDOf(t, v1pv))
	scaleStatefulSet(ctx, t, te.env, sts, 3, 4)
	// v2: the group is scaled in; the operator does the rest.
	require.NoError(t, v.Scale(ctx, 3))
	off := waitOffline(ctx, t, v)
	victim := owners[off.GetName()]

	te.waitRecycled(ctx, t, v1pv)
	te.waitRecycled(ctx, t, &victim.PV)
	require.Equal(t, 1, eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", v1pv.Name, "DiskReleased")), "v1: the controller released the claim once")
	approveOnce(ctx, t, te, victim.PV.Name)
	require.Equal(t, 1, v.Sim.DeleteRequests(victim.Store))
	requireNoFight(ctx, t, te.env, ctrl)
}

func hostOf(l net.Listener) string {
	host, _, _ := net.SplitHostPort(l.Addr().String())
	return host
}

// v2PD is where one v2 PD instance runs.
type v2PD struct {
	Instance string
	Pod      string
	Node     string
	PV       corev1.PersistentVolume
}

// waitV2PDOwners waits until the PDGroup has n live instances, each pod
// Running on a claim whose PV records the instance's member.
func waitV2PDOwners(ctx context.Context, t testing.TB, te *tidbEnv, v *sim.V2, n int) map[string]v2PD {
	t.Helper()
	out := map[string]v2PD{}
	c := te.env.Cluster.Client.CoreV1()
	var last string
	require.Eventually(t, func() bool {
		insts, err := v.PDInstances(ctx)
		if err != nil {
			return false
		}
		clear(out)
		for _, inst := range insts {
			if inst.GetDeletionTimestamp() != nil {
				continue
			}
			pod := sim.V2PodName(inst.GetName(), "pd")
			p, err := c.Pods(v2NS).Get(ctx, pod, metav1.GetOptions{})
			if err != nil || p.Status.Phase != corev1.PodRunning {
				last = "pod " + pod + " not Running"
				return false
			}
			pvc, err := c.PersistentVolumeClaims(v2NS).Get(ctx, sim.V2ClaimName("data", pod), metav1.GetOptions{})
			if err != nil || pvc.Spec.VolumeName == "" {
				last = "claim of " + pod + " not bound"
				return false
			}
			pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
			if err != nil || pv.Annotations[provisioner.AnnPDMember] != inst.GetName() || pv.Annotations[provisioner.AnnOwnerClaim] != string(pvc.UID) {
				last = "member of " + pod + " not recorded"
				return false
			}
			out[inst.GetName()] = v2PD{Instance: inst.GetName(), Pod: pod, Node: p.Spec.NodeName, PV: *pv}
		}
		if len(out) != n {
			last = "not enough PD instances"
			return false
		}
		return true
	}, waitRecovery, 50*time.Millisecond, "v2 PD owners never all recorded (last: %s)", func() string { return last }())
	return out
}

// TestV2PDDeadNode_MemberRemovedByHand_ControllerDeletesTheInstance is the
// PD side of a v2 dead node: the controller never removes a PD member (a
// quorum decision) and says so; once the operator has removed it
// (pd-ctl member delete name <instance>), the member's data is no longer
// needed and the controller deletes the PD instance, as v2's documentation
// asks; v2 then removes pod and claim, and the group's new PD instance
// runs on a fresh disk.
func TestV2PDDeadNode_MemberRemovedByHand_ControllerDeletesTheInstance(t *testing.T) {
	t.Parallel()
	te := startDisksOf(t, "tidb-localpv-pd", 1, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	v := startV2(t, te, sim.V2Options{Namespace: v2NS, Cluster: v2Cluster, Replicas: 0, PDReplicas: 3})
	startControllerWith(t, te.env, "controller-0", testTimings(time.Second)...)
	owners := waitV2PDOwners(ctx, t, te, v, 3)
	var victim v2PD
	for _, o := range owners {
		victim = o
		break
	}
	t.Logf("node %s dies; it runs PD instance %s (pod %s)", victim.Node, victim.Instance, victim.Pod)
	killNode(ctx, t, te, victim.Node)

	// Reported, not acted on: the member is still listed.
	var listed corev1.Event
	require.Eventually(t, func() bool {
		for _, ev := range eventsAbout(ctx, t, te.env, "PersistentVolume", victim.PV.Name, "ReleaseRefused") {
			listed = ev
			return true
		}
		return false
	}, waitLong, tick, "the listed member of a dead node is never reported")
	t.Logf("on the PV: %s", listed.Message)
	require.Contains(t, listed.Message, "member delete")

	// The operator removes the member by hand; the controller takes it from there.
	require.NoError(t, v.Sim.RemoveMember(victim.Instance))
	removed := time.Now()
	te.waitEvent(ctx, t, victim.PV.UID, "InstanceDeleted")
	t.Logf("member removed → PD instance deleted by tidb-localpv: %s", time.Since(removed).Round(time.Millisecond))
	var repl v2PD
	require.Eventually(t, func() bool {
		ps := waitV2PDOwnersNow(ctx, te, v)
		for name, p := range ps {
			if _, old := owners[name]; !old && len(ps) == 3 {
				repl = p
				return true
			}
		}
		return false
	}, waitRecovery, 100*time.Millisecond, "no replacement PD instance ran")
	t.Logf("member removed → replacement %s Running on %s: %s", repl.Pod, repl.Node, time.Since(removed).Round(time.Millisecond))
	require.NotEqual(t, victim.Node, repl.Node)
	_, err := v.PDInstanceGet(ctx, victim.Instance)
	require.True(t, apierrors.IsNotFound(err), "the dead node's PD instance is gone")
	require.Equal(t, 1, eventCount(eventsAbout(ctx, t, te.env, "PersistentVolume", victim.PV.Name, "InstanceDeleted")))
	for _, ev := range controllerWarnings(ctx, t, te.env) {
		// The listed-member report is expected (it repeats while the
		// node's deletion age in it changes); nothing else may be.
		if !strings.Contains(ev.Message, "is still in PD's member list") {
			t.Errorf("controller warning on %s %s: %s: %s", ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Reason, ev.Message)
		}
	}
}

// waitV2PDOwnersNow is one look: the live PD instances whose members are
// recorded on their PVs.
func waitV2PDOwnersNow(ctx context.Context, te *tidbEnv, v *sim.V2) map[string]v2PD {
	out := map[string]v2PD{}
	c := te.env.Cluster.Client.CoreV1()
	insts, err := v.PDInstances(ctx)
	if err != nil {
		return out
	}
	for _, inst := range insts {
		if inst.GetDeletionTimestamp() != nil {
			continue
		}
		pod := sim.V2PodName(inst.GetName(), "pd")
		p, err := c.Pods(v2NS).Get(ctx, pod, metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		pvc, err := c.PersistentVolumeClaims(v2NS).Get(ctx, sim.V2ClaimName("data", pod), metav1.GetOptions{})
		if err != nil || pvc.Spec.VolumeName == "" {
			continue
		}
		pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err == nil && pv.Annotations[provisioner.AnnPDMember] == inst.GetName() {
			out[inst.GetName()] = v2PD{Instance: inst.GetName(), Pod: pod, Node: p.Spec.NodeName, PV: *pv}
		}
	}
	return out
}
