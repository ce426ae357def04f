//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// The simulated TiDB cluster "demo" lives in namespace default.
const (
	tidbNS       = "default"
	tidbInstance = "demo"
)

// tidbEnv is a control plane with agents on nodes that each have one disk
// per class, a PD simulator kept in step with the pods, and controllers.
type tidbEnv struct {
	env   *sim.Env
	nodes map[string]*sim.Node
	pd    *sim.PD
	// disks maps node → class → mount point.
	disks map[string]map[string]string
}

// pdOptions are PD's lifecycle at test speed: a drained store is buried in
// about a second, a silent one is Disconnected after 2 s and Down after 4 s.
var pdOptions = pdsim.Options{MaxReplicas: 3, DrainDelay: time.Second, DisconnectedAfter: 2 * time.Second, DownAfter: 4 * time.Second, CheckInterval: 200 * time.Millisecond}

func startTiDBEnv(t testing.TB, classes []string, nodes ...string) *tidbEnv {
	t.Helper()
	env, ns := startEnv(t, nodes...)
	ctx := context.Background()
	te := &tidbEnv{env: env, nodes: ns, disks: map[string]map[string]string{}}
	for _, name := range nodes {
		te.disks[name] = map[string]string{}
		for _, class := range classes {
			path, err := ns[name].MountDisk(class, "disk0", "32m")
			require.NoError(t, err)
			te.disks[name][class] = path
		}
		require.NoError(t, ns[name].StartAgent(ctx))
	}
	p, err := env.StartPD(ctx, pdOptions)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	te.pd = p
	return te
}

// controllerArgs are the test's additions to the Deployment's arguments:
// where PD is, and timings short enough for a test.
func (te *tidbEnv) controllerArgs(poll time.Duration) []string {
	return []string{
		fmt.Sprintf("--pd-endpoint=%s/%s=%s", tidbNS, tidbInstance, te.pd.URL),
		"--pd-poll-interval=" + poll.String(),
		"--dead-node-grace=3s",
		"--stuck-pod-grace=10s",
		"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=500ms",
		"-v=2",
	}
}

func (te *tidbEnv) startController(t *testing.T, name string, poll time.Duration) *cluster.Process {
	t.Helper()
	p, err := te.env.StartController(context.Background(), name, te.controllerArgs(poll)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			data, _ := os.ReadFile(p.LogPath())
			lines := strings.Split(string(data), "\n")
			t.Logf("---- %s ----\n%s", name, strings.Join(lines[max(0, len(lines)-80):], "\n"))
		}
	})
	return p
}

// tidbStatefulSet is a StatefulSet of a TiDB component with one volume of class.
func tidbStatefulSet(component, class string, replicas int32) *appsv1.StatefulSet {
	if component == "tikv" {
		return sim.TiKVStatefulSet(tidbInstance, replicas)
	}
	sts := sim.TiKVStatefulSet(tidbInstance, replicas)
	lbl := map[string]string{"app.kubernetes.io/component": component, "app.kubernetes.io/instance": tidbInstance}
	sts.Name = tidbInstance + "-" + component
	sts.Spec.ServiceName = sts.Name + "-peer"
	sts.Spec.Selector.MatchLabels = lbl
	sts.Spec.Template.Labels = lbl
	sts.Spec.Template.Spec.Containers[0].Name = component
	sts.Spec.Template.Spec.Containers[0].VolumeMounts[0].Name = component
	sts.Spec.VolumeClaimTemplates[0].Name = component
	sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName = ptr.To(class)
	sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("16Mi")
	return sts
}

// deploy creates the StatefulSet and waits until every pod runs and its
// owner (store or member) is recorded on its PV.
func (te *tidbEnv) deploy(ctx context.Context, t testing.TB, sts *appsv1.StatefulSet) {
	t.Helper()
	_, err := te.env.Cluster.Client.AppsV1().StatefulSets(tidbNS).Create(ctx, sts, metav1.CreateOptions{})
	require.NoError(t, err)
	for i := range int(*sts.Spec.Replicas) {
		te.waitOwnerRecorded(ctx, t, sts, i)
	}
}

// waitOwnerRecorded waits until pod i runs and its PV records its owner.
func (te *tidbEnv) waitOwnerRecorded(ctx context.Context, t testing.TB, sts *appsv1.StatefulSet, i int) *corev1.PersistentVolume {
	t.Helper()
	var pv *corev1.PersistentVolume
	require.Eventually(t, func() bool {
		pv = te.pvOfClaim(ctx, sts, i)
		return pv != nil && (pv.Annotations[provisioner.AnnStoreID] != "" || pv.Annotations[provisioner.AnnPDMember] != "") &&
			pv.Annotations[provisioner.AnnOwnerState] == "Up"
	}, waitLong, tick, "owner of %s never recorded", sim.ClaimName(sts.Spec.VolumeClaimTemplates[0].Name, sts.Name, i))
	return pv
}

// pvOfClaim is the PV bound to the claim of pod i, nil if none yet.
func (te *tidbEnv) pvOfClaim(ctx context.Context, sts *appsv1.StatefulSet, i int) *corev1.PersistentVolume {
	claim := sim.ClaimName(sts.Spec.VolumeClaimTemplates[0].Name, sts.Name, i)
	pvc, err := te.env.Cluster.Client.CoreV1().PersistentVolumeClaims(tidbNS).Get(ctx, claim, metav1.GetOptions{})
	if err != nil || pvc.Spec.VolumeName == "" {
		return nil
	}
	pv, err := te.env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return pv
}

func storeIDOf(t testing.TB, pv *corev1.PersistentVolume) uint64 {
	t.Helper()
	id, err := strconv.ParseUint(pv.Annotations[provisioner.AnnStoreID], 10, 64)
	require.NoError(t, err)
	return id
}

// offlineStore does what TiDB Operator does to scale TiKV in: ask PD to
// remove the store and wait until it is buried.
func (te *tidbEnv) offlineStore(ctx context.Context, t testing.TB, id uint64) time.Time {
	t.Helper()
	c, err := pd.New(te.pd.URL, pd.Options{})
	require.NoError(t, err)
	require.NoError(t, c.DeleteStore(ctx, id))
	var at time.Time
	require.Eventually(t, func() bool {
		s, ok := te.pd.Sim.Store(id)
		if ok && s.StateName == "Tombstone" {
			at = time.Now()
			return true
		}
		return false
	}, waitLong, 5*time.Millisecond)
	return at
}

// waitRecycled waits until the disk that held pv is published again as a
// new, Available PV, and returns it.
func (te *tidbEnv) waitRecycled(ctx context.Context, t testing.TB, old *corev1.PersistentVolume) corev1.PersistentVolume {
	t.Helper()
	var got corev1.PersistentVolume
	require.Eventually(t, func() bool {
		pvs, err := pvsOfDisk(ctx, te.env, old.Labels[provisioner.LabelDisk])
		if err != nil {
			return false
		}
		for _, pv := range pvs {
			if pv.UID != old.UID && pv.Status.Phase == corev1.VolumeAvailable && pv.DeletionTimestamp == nil {
				got = pv
				return true
			}
		}
		return false
	}, waitLong, tick, "disk %s of PV %s never came back Available", old.Labels[provisioner.LabelDisk], old.Name)
	return got
}

func (te *tidbEnv) requireClaimExists(ctx context.Context, t testing.TB, name string) {
	t.Helper()
	_, err := te.env.Cluster.Client.CoreV1().PersistentVolumeClaims(tidbNS).Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err, "claim %s must survive", name)
}

// waitEvent waits for an event with reason about an object.
func (te *tidbEnv) waitEvent(ctx context.Context, t testing.TB, uid types.UID, reason string) corev1.Event {
	t.Helper()
	var ev corev1.Event
	require.Eventually(t, func() bool {
		evs, err := eventsFor(ctx, te.env, "", uid, reason)
		if err == nil && len(evs) > 0 {
			ev = evs[0]
			return true
		}
		return false
	}, waitLong, 50*time.Millisecond, "no %s event", reason)
	return ev
}

// scaleInTiKV runs scenario (a): offline the store of the last pod, wait
// for Tombstone, scale the StatefulSet in, and expect the disk wiped and
// Available again with no human step. With pdOutage, PD stops answering
// right after the burial: nothing may be destroyed until it is back.
func scaleInTiKV(t *testing.T, pdOutage bool) {
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)

	pv := te.waitOwnerRecorded(ctx, t, sts, 3)
	disk := pv.Spec.Local.Path
	writeUserData(t, disk, 3, 10)
	tomb := te.offlineStore(ctx, t, storeIDOf(t, pv))
	if pdOutage {
		te.pd.Sim.SetUnavailable(true)
	}
	scaleStatefulSet(ctx, t, te.env, sts, 3, 4)
	claim := sim.ClaimName("tikv", sts.Name, 3)
	if pdOutage {
		ev := te.waitEvent(ctx, t, pv.UID, "ReleaseRefused")
		t.Logf("while PD is down: %s", ev.Message)
		te.requireClaimExists(ctx, t, claim)
		require.NotEmpty(t, userContents(t, disk), "nothing may be wiped while PD cannot be asked")
		te.pd.Sim.SetUnavailable(false)
		tomb = time.Now()
	}
	fresh := te.waitRecycled(ctx, t, pv)
	t.Logf("store Tombstone (or PD back) → disk Available again: %s", time.Since(tomb).Round(time.Millisecond))
	require.Empty(t, userContents(t, disk), "the new PV's disk must be empty")
	require.Equal(t, disk, fresh.Spec.Local.Path)
	_, err := te.env.Cluster.Client.CoreV1().PersistentVolumeClaims(tidbNS).Get(ctx, claim, metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(err), "the claim of the buried store is gone")
	te.waitEvent(ctx, t, pv.UID, "DiskReleased")
}

func TestScaleIn_TombstoneStoreDiskIsWipedAndAvailableAgain(t *testing.T) {
	t.Parallel()
	scaleInTiKV(t, false)
}

func TestScaleIn_PDUnreachable_NothingDestroyedUntilItIsBack(t *testing.T) {
	t.Parallel()
	scaleInTiKV(t, true)
}

// deadNode runs scenario (b): delete the node of a TiKV pod; its store is
// offlined, buried, and the pod runs again on another node's fresh disk.
func deadNode(t *testing.T, pdOutage bool) {
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)

	pv := te.waitOwnerRecorded(ctx, t, sts, 1)
	store := storeIDOf(t, pv)
	victim := pv.Labels[provisioner.LabelNode]
	pod := sim.ClaimName("tikv", sts.Name, 1)[len("tikv-"):]
	t.Logf("deleting node %s, which runs %s (store %d)", victim, pod, store)
	if pdOutage {
		te.pd.Sim.SetUnavailable(true)
	}
	te.nodes[victim].StopAgent()
	deleted := time.Now()
	require.NoError(t, te.env.Cluster.Client.CoreV1().Nodes().Delete(ctx, victim, metav1.DeleteOptions{}))

	if pdOutage {
		ev := te.waitEvent(ctx, t, pv.UID, "ReleaseRefused")
		t.Logf("while PD is down: %s", ev.Message)
		require.Zero(t, te.pd.Sim.DeleteRequests(store), "no store is offlined while PD cannot be asked")
		te.requireClaimExists(ctx, t, sim.ClaimName("tikv", sts.Name, 1))
		te.pd.Sim.SetUnavailable(false)
	}
	require.Eventually(t, func() bool {
		s, ok := te.pd.Sim.Store(store)
		return ok && s.StateName == "Tombstone"
	}, waitLong, tick, "store %d never buried", store)
	require.Equal(t, 1, te.pd.Sim.DeleteRequests(store), "the store is offlined exactly once")

	// The pod comes back on a fresh disk of a live node, with a new store.
	var moved *corev1.PersistentVolume
	require.Eventually(t, func() bool {
		p, err := te.env.Cluster.Client.CoreV1().Pods(tidbNS).Get(ctx, pod, metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning || p.Spec.NodeName == victim || p.Spec.NodeName == "" {
			return false
		}
		moved = te.pvOfClaim(ctx, sts, 1)
		return moved != nil && moved.Labels[provisioner.LabelNode] == p.Spec.NodeName
	}, waitLong, tick, "pod %s never ran again on another node", pod)
	t.Logf("node deleted → %s Running on %s: %s", pod, moved.Labels[provisioner.LabelNode], time.Since(deleted).Round(time.Millisecond))
	newStore := te.waitOwnerRecorded(ctx, t, sts, 1)
	require.NotEqual(t, store, storeIDOf(t, newStore), "a fresh disk means a new store")

	released, err := eventsFor(ctx, te.env, "", pv.UID, "DiskReleased")
	require.NoError(t, err)
	require.Len(t, released, 1, "the claim is released once")
	require.Equal(t, int32(1), released[0].Count)

	// The dead node's released PV object is gone.
	require.Eventually(t, func() bool {
		_, err := te.env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, waitLong, tick, "PV %s of the dead node was never removed", pv.Name)
}

func TestDeadNode_TiKVPodRunsAgainOnAFreshDisk(t *testing.T) {
	t.Parallel()
	deadNode(t, false)
}

func TestDeadNode_PDUnreachable_NothingDestroyedUntilItIsBack(t *testing.T) {
	t.Parallel()
	deadNode(t, true)
}

// TestLeaderKilledDuringScaleIn_StandbyFinishesWithoutRepeatingAnAction is
// scenario (d).
func TestLeaderKilledDuringScaleIn_StandbyFinishesWithoutRepeatingAnAction(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	procs := map[string]*cluster.Process{}
	for _, name := range []string{"controller-0", "controller-1"} {
		procs[name] = te.startController(t, name, time.Second)
	}
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 3)
	disk := pv.Spec.Local.Path
	writeUserData(t, disk, 2, 5)

	te.offlineStore(ctx, t, storeIDOf(t, pv))
	// Kill the leader (its identity starts with its POD_NAME) once the store
	// is buried, before the scale-in makes the release due: the standby
	// must take over to finish.
	killed, _, _ := strings.Cut(leaseHolder(ctx, t, te), "_")
	require.Contains(t, procs, killed)
	procs[killed].Kill()
	killedAt := time.Now()
	t.Logf("killed leader %s", killed)
	scaleStatefulSet(ctx, t, te.env, sts, 3, 4)

	te.waitRecycled(ctx, t, pv)
	t.Logf("killed leader → disk Available again via the standby: %s", time.Since(killedAt).Round(time.Millisecond))
	released, err := eventsFor(ctx, te.env, "", pv.UID, "DiskReleased")
	require.NoError(t, err)
	require.Len(t, released, 1, "the claim was released once")
	require.Equal(t, int32(1), released[0].Count)
	wiped, err := eventsFor(ctx, te.env, "", pv.UID, "Wiped")
	require.NoError(t, err)
	require.Len(t, wiped, 1, "the disk was wiped once")
	require.Empty(t, userContents(t, disk))
}

// TestPDScaleIn_MemberDiskIsRecycled is scenario (e).
func TestPDScaleIn_MemberDiskIsRecycled(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-pd"}, "node-a", "node-b", "node-c")
	ctx := context.Background()
	te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("pd", "tidb-localpv-pd", 3)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 2)
	require.Equal(t, "demo-pd-2", pv.Annotations[provisioner.AnnPDMember])
	disk := pv.Spec.Local.Path
	writeUserData(t, disk, 1, 3)

	// TiDB Operator removes the member from PD, then scales the pod away.
	require.NoError(t, te.pd.Sim.RemoveMember("demo-pd-2"))
	removed := time.Now()
	scaleStatefulSet(ctx, t, te.env, sts, 2, 3)
	te.waitRecycled(ctx, t, pv)
	t.Logf("PD member removed → its disk Available again: %s", time.Since(removed).Round(time.Millisecond))
	require.Empty(t, userContents(t, disk))
	// The other members' disks are untouched.
	for i := range 2 {
		other := te.pvOfClaim(ctx, sts, i)
		require.NotNil(t, other)
		require.Equal(t, corev1.VolumeBound, other.Status.Phase)
	}
}

// leaseHolder returns the holder identity of the controller's Lease.
func leaseHolder(ctx context.Context, t *testing.T, te *tidbEnv) string {
	t.Helper()
	var lease *coordinationv1.Lease
	require.Eventually(t, func() bool {
		var err error
		lease, err = te.env.Cluster.Client.CoordinationV1().Leases(sim.Namespace).Get(ctx, "tidb-localpv-controller", metav1.GetOptions{})
		return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != ""
	}, waitLong, tick)
	return *lease.Spec.HolderIdentity
}
