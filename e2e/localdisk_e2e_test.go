//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// phaseLog records every phase (and reason) each LocalDisk went through,
// from a watch, so transient phases (Wiping, Released) are seen too.
type phaseLog struct {
	mu   sync.Mutex
	seen map[string]map[v1alpha1.Phase]string // path → phase → reason
}

func watchPhases(ctx context.Context, t *testing.T, env *sim.Env) *phaseLog {
	dyn, err := dynamic.NewForConfig(env.Cluster.RESTConfig())
	require.NoError(t, err)
	w, err := dyn.Resource(v1alpha1.Resource).Watch(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	l := &phaseLog{seen: map[string]map[v1alpha1.Phase]string{}}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			ld, ok := localDisk(ev.Object)
			if !ok || ld.Status.Phase == "" {
				continue
			}
			l.mu.Lock()
			if l.seen[ld.Spec.Path] == nil {
				l.seen[ld.Spec.Path] = map[v1alpha1.Phase]string{}
			}
			l.seen[ld.Spec.Path][ld.Status.Phase] = ld.Status.Reason
			l.mu.Unlock()
		}
	}()
	return l
}

func localDisk(obj runtime.Object) (v1alpha1.LocalDisk, bool) {
	var ld v1alpha1.LocalDisk
	u, ok := obj.(interface{ UnstructuredContent() map[string]any })
	if !ok {
		return ld, false
	}
	return ld, runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &ld) == nil
}

func (l *phaseLog) wait(t *testing.T, path string, phase v1alpha1.Phase, reason string) {
	t.Helper()
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		got, ok := l.seen[path][phase]
		return ok && (reason == "" || got == reason)
	}, waitLong, 20*time.Millisecond, "LocalDisk of %s never %s (%s); seen: %v", path, phase, reason, l.snapshot(path))
}

func (l *phaseLog) snapshot(path string) map[v1alpha1.Phase]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[v1alpha1.Phase]string{}
	for k, v := range l.seen[path] {
		out[k] = v
	}
	return out
}

// Issue 9: every phase appears on a disk object with its reason, each
// built on purpose; `kubectl get localdisks` shows the columns.
func TestLocalDisks_EveryPhaseAppearsWithItsReason(t *testing.T) {
	t.Parallel()
	env, nodes := startEnv(t, "node-a")
	ctx := t.Context()
	n := nodes["node-a"]
	phases := watchPhases(ctx, t, env)
	startPlainController(t, env)

	// Disks prepared while the agent is down, so it finds them as they are.
	foreign, err := n.MountDisk("tidb-localpv-tikv", "foreign", "16m")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(foreign, "someones-data"), []byte("x"), 0o644))
	orphan, err := n.MountDisk("tidb-localpv-tikv", "orphan", "16m")
	require.NoError(t, err)
	require.NoError(t, discovery.WriteMarker(orphan, discovery.Marker{ID: "fs-0000000000000000000000aa", State: discovery.StateReady}))
	writeUserData(t, orphan, 1, 3)
	conflict, err := n.MountDisk("tidb-localpv-tikv", "conflict", "16m")
	require.NoError(t, err)
	require.NoError(t, discovery.WriteMarker(conflict, discovery.Marker{ID: "fs-0000000000000000000000bb", State: discovery.StateReady}))
	writeUserData(t, conflict, 1, 3)
	bad, err := n.MountDisk("tidb-localpv-tikv", "bad", "16m")
	require.NoError(t, err)
	require.NoError(t, syscall.Mkfifo(filepath.Join(bad, discovery.MarkerName), 0o600))
	// Someone else's PV names the conflict disk's path on this node.
	other := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-pv"},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "manual",
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: conflict}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: provisioner.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{"node-a"}}},
			}}}},
		},
	}
	_, err = env.Cluster.Client.CoreV1().PersistentVolumes().Create(ctx, other, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, n.StartAgent(ctx))

	phases.wait(t, foreign, v1alpha1.PhaseForeign, "HoldsDataWithoutIdentity")
	phases.wait(t, orphan, v1alpha1.PhaseUnpublished, "HoldsDataWithoutPV")
	phases.wait(t, conflict, v1alpha1.PhaseConflict, "NamedByAnotherPV")
	phases.wait(t, bad, v1alpha1.PhaseFailed, "")

	// A disk's life: Available, Bound, then — a plain claim deleted —
	// Wiping and Available again.
	disk, err := n.MountDisk("tidb-localpv-tikv", "disk0", "64m")
	require.NoError(t, err)
	phases.wait(t, disk, v1alpha1.PhaseAvailable, "Published")
	sts, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, plainStatefulSet("life", 1), metav1.CreateOptions{})
	require.NoError(t, err)
	placed := waitStatefulSetBound(ctx, t, env, sts, 1)[0]
	require.Equal(t, disk, placed.PV.Spec.Local.Path)
	phases.wait(t, disk, v1alpha1.PhaseBound, "Bound")
	waitReclaimDelete(ctx, t, env, placed.PV.Name)
	writeManyFiles(t, disk, 20, 1000)
	scaleStatefulSet(ctx, t, env, sts, 0, 1)
	deleteClaim(ctx, t, env, placed.Claim)
	phases.wait(t, disk, v1alpha1.PhaseWiping, "")

	// A TiKV claim whose owner was never confirmed (no PD here) keeps its
	// disk Released; then the disk is pulled: Missing.
	tikv, err := n.MountDisk("tidb-localpv-tikv", "tikv0", "16m")
	require.NoError(t, err)
	phases.wait(t, tikv, v1alpha1.PhaseAvailable, "")
	kv, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, tikvStatefulSet("kv", 1), metav1.CreateOptions{})
	require.NoError(t, err)
	kvPlaced := waitStatefulSetBound(ctx, t, env, kv, 1)[0]
	scaleStatefulSet(ctx, t, env, kv, 0, 1)
	deleteClaim(ctx, t, env, kvPlaced.Claim)
	phases.wait(t, kvPlaced.PV.Spec.Local.Path, v1alpha1.PhaseReleased, "Retained")
	require.NoError(t, hostdisk.Unmount(kvPlaced.PV.Spec.Local.Path))
	phases.wait(t, kvPlaced.PV.Spec.Local.Path, v1alpha1.PhaseMissing, "NotFound")
	phases.wait(t, disk, v1alpha1.PhaseAvailable, "Published")

	// kubectl shows the printer columns, -o wide more.
	out := kubectl(t, env, "get", "localdisks")
	for _, col := range []string{"NODE", "CLASS", "PHASE", "CAPACITY", "CLAIM", "OWNER", "REASON", "AGE"} {
		require.Contains(t, strings.Fields(strings.SplitN(out, "\n", 2)[0]), col, out)
	}
	require.Contains(t, out, "HoldsDataWithoutIdentity")
	wide := kubectl(t, env, "get", "ldisk", "-o", "wide")
	for _, col := range []string{"PATH", "PV", "HEALTH", "MESSAGE"} {
		require.Contains(t, strings.Fields(strings.SplitN(wide, "\n", 2)[0]), col, wide)
	}
	t.Logf("kubectl get localdisks:\n%s", out)
	t.Logf("tidb-localpv disks -o wide:\n%s", disksTable(t, env, "-o", "wide"))
}

func kubectl(t *testing.T, env *sim.Env, args ...string) string {
	t.Helper()
	out, err := exec.Command("kubectl", append([]string{"--kubeconfig", env.Cluster.AdminKubeconfig}, args...)...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

func disksTable(t *testing.T, env *sim.Env, args ...string) string {
	t.Helper()
	out, err := exec.Command(env.Binary, append([]string{"disks", "--kubeconfig", env.Cluster.AdminKubeconfig}, args...)...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

// Issue 9 / 7.3: the ownership record outlives the PV's labels and the PV.
func TestLocalDisks_TheOwnershipRecordSurvivesALabelRemovalAndAPVDeletion(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d")
	ctx := context.Background()
	te.startController(t, "controller-0", time.Second)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 3)
	disk := pv.Spec.Local.Path
	store := storeIDOf(t, pv)
	written := writeUserData(t, disk, 2, 5)
	dyn, err := dynamic.NewForConfig(te.env.Cluster.RESTConfig())
	require.NoError(t, err)
	owner := func() *v1alpha1.Owner {
		u, err := dyn.Resource(v1alpha1.Resource).Get(ctx, pv.Name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		ld, _ := localDisk(u)
		return ld.Status.Owner
	}
	require.Eventually(t, func() bool { o := owner(); return o != nil && o.StoreID == store }, waitLong, 50*time.Millisecond)

	// A GitOps tool strips our labels from the PV.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{provisioner.LabelDisk: nil, provisioner.LabelComponent: nil}}})
	_, err = te.env.Cluster.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(t, err)
	// Then someone deletes the PV and, after the scale-in, the claim —
	// while store is still Up.
	require.NoError(t, te.env.Cluster.Client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}))
	scaleStatefulSet(ctx, t, te.env, sts, 3, 4)
	claim, err := te.env.Cluster.Client.CoreV1().PersistentVolumeClaims(tidbNS).Get(ctx, sim.ClaimName("tikv", sts.Name, 3), metav1.GetOptions{})
	require.NoError(t, err)
	deleteClaim(ctx, t, te.env, *claim)

	// The agent gives the owned disk its PV back, bound to the recorded
	// claim: Released, not wiped, the owner still on the LocalDisk.
	back := waitPV(ctx, t, te.env, pv.Labels[provisioner.LabelNode], disk, corev1.VolumeReleased)
	require.True(t, provisioner.Owned(&back))
	require.Equal(t, string(claim.UID), string(back.Spec.ClaimRef.UID))
	te.waitEvent(ctx, t, back.UID, "ReleaseRefused")
	require.Equal(t, written, userContents(t, disk), "store is Up: its data stays")
	require.Equal(t, store, owner().StoreID)

	// Store buried: the same approval path recycles it.
	te.offlineStore(ctx, t, store)
	fresh := te.waitRecycled(ctx, t, &back)
	require.Empty(t, userContents(t, disk))
	require.Equal(t, disk, fresh.Spec.Local.Path)
}
