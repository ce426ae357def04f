//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Timeouts of the waits below. Everything they wait for takes about a
// second on this machine; the margins absorb a loaded CI runner.
const (
	waitLong = 90 * time.Second
	tick     = 20 * time.Millisecond
)

// ourPVs lists every PV of ours in the cluster (any node), by name.
func ourPVs(ctx context.Context, env *sim.Env, sel labels.Set) (map[string]corev1.PersistentVolume, error) {
	list, err := env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, err
	}
	out := map[string]corev1.PersistentVolume{}
	for _, pv := range list.Items {
		if provisioner.IsOurs(&pv) {
			out[pv.Name] = pv
		}
	}
	return out, nil
}

// pvsOfDisk lists the PVs that name a disk identity.
func pvsOfDisk(ctx context.Context, env *sim.Env, id string) ([]corev1.PersistentVolume, error) {
	m, err := ourPVs(ctx, env, labels.Set{provisioner.LabelDisk: id})
	if err != nil {
		return nil, err
	}
	out := make([]corev1.PersistentVolume, 0, len(m))
	for _, pv := range m {
		out = append(out, pv)
	}
	return out, nil
}

// affinityNode is the hostname a PV's node affinity requires.
func affinityNode(t *testing.T, pv corev1.PersistentVolume) string {
	t.Helper()
	require.NotNil(t, pv.Spec.NodeAffinity, "PV %s has no node affinity", pv.Name)
	terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
	require.Len(t, terms, 1, "PV %s", pv.Name)
	require.Len(t, terms[0].MatchExpressions, 1, "PV %s", pv.Name)
	req := terms[0].MatchExpressions[0]
	require.Equal(t, corev1.LabelHostname, req.Key, "PV %s", pv.Name)
	require.Equal(t, corev1.NodeSelectorOpIn, req.Operator, "PV %s", pv.Name)
	require.Len(t, req.Values, 1, "PV %s", pv.Name)
	return req.Values[0]
}

// waitAvailable waits until n PVs of ours on node are Available.
func waitAvailable(ctx context.Context, t *testing.T, env *sim.Env, node string, n int) []corev1.PersistentVolume {
	t.Helper()
	var got []corev1.PersistentVolume
	require.Eventually(t, func() bool {
		m, err := ourPVs(ctx, env, labels.Set{provisioner.LabelNode: node})
		if err != nil {
			return false
		}
		got = got[:0]
		for _, pv := range m {
			if pv.Status.Phase == corev1.VolumeAvailable {
				got = append(got, pv)
			}
		}
		return len(got) == n
	}, waitLong, tick, "node %s never had %d Available PVs (last: %d)", node, n, len(got))
	return got
}

// placement is where one pod of a StatefulSet ended up.
type placement struct {
	Pod   corev1.Pod
	Claim corev1.PersistentVolumeClaim
	PV    corev1.PersistentVolume
}

// waitStatefulSetBound waits until replicas pods of sts are Running, each
// with its claim Bound, and returns them in ordinal order.
func waitStatefulSetBound(ctx context.Context, t testing.TB, env *sim.Env, sts *appsv1.StatefulSet, replicas int) []placement {
	t.Helper()
	c := env.Cluster.Client.CoreV1()
	tmpl := sts.Spec.VolumeClaimTemplates[0].Name
	out := make([]placement, replicas)
	var last string
	require.Eventually(t, func() bool {
		for i := range replicas {
			pod, err := c.Pods(sts.Namespace).Get(ctx, podName(sts.Name, i), metav1.GetOptions{})
			if err != nil || pod.Status.Phase != corev1.PodRunning || pod.Spec.NodeName == "" {
				last = fmt.Sprintf("pod %d: %v", i, describePod(pod, err))
				return false
			}
			pvc, err := c.PersistentVolumeClaims(sts.Namespace).Get(ctx, sim.ClaimName(tmpl, sts.Name, i), metav1.GetOptions{})
			if err != nil || pvc.Status.Phase != corev1.ClaimBound {
				last = fmt.Sprintf("claim of pod %d not Bound (%v)", i, err)
				return false
			}
			pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
			if err != nil || pv.Status.Phase != corev1.VolumeBound {
				last = fmt.Sprintf("PV %s of pod %d not Bound (%v)", pvc.Spec.VolumeName, i, err)
				return false
			}
			out[i] = placement{Pod: *pod, Claim: *pvc, PV: *pv}
		}
		return true
	}, waitLong, tick, "StatefulSet %s: %d pods never all Running on Bound claims (last: %s)", sts.Name, replicas, func() string { return last }())
	return out
}

func describePod(p *corev1.Pod, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("phase %s on %q", p.Status.Phase, p.Spec.NodeName)
}

// requirePodsOnTheirPVsNode checks the heart of local PVs: every pod runs on
// the node its PV's affinity names, the PV is ours, of that node, claimed by
// that pod's claim, and no PV serves two pods.
func requirePodsOnTheirPVsNode(t *testing.T, ps []placement) {
	t.Helper()
	seen := map[string]string{}
	for _, p := range ps {
		pv := p.PV
		require.True(t, provisioner.IsOurs(&pv), "PV %s of %s is not one of ours", pv.Name, p.Pod.Name)
		require.Equal(t, p.Pod.Spec.NodeName, affinityNode(t, pv), "pod %s runs on %s but its PV %s is pinned elsewhere", p.Pod.Name, p.Pod.Spec.NodeName, pv.Name)
		require.Equal(t, p.Pod.Spec.NodeName, pv.Labels[provisioner.LabelNode], "PV %s node label", pv.Name)
		require.NotNil(t, pv.Spec.ClaimRef, "PV %s", pv.Name)
		require.Equal(t, p.Claim.UID, pv.Spec.ClaimRef.UID, "PV %s is claimed by another claim than %s's", pv.Name, p.Pod.Name)
		if other, dup := seen[pv.Name]; dup {
			t.Fatalf("PV %s serves both %s and %s", pv.Name, other, p.Pod.Name)
		}
		seen[pv.Name] = p.Pod.Name
	}
}

// scaleStatefulSet sets replicas and waits until the pods beyond them are gone.
func scaleStatefulSet(ctx context.Context, t testing.TB, env *sim.Env, sts *appsv1.StatefulSet, replicas, was int) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	_, err := env.Cluster.Client.AppsV1().StatefulSets(sts.Namespace).Patch(ctx, sts.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	require.NoError(t, err)
	for i := replicas; i < was; i++ {
		name := podName(sts.Name, i)
		require.Eventually(t, func() bool {
			_, err := env.Cluster.Client.CoreV1().Pods(sts.Namespace).Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		}, waitLong, tick, "pod %s never went away after scaling to %d", name, replicas)
	}
}

// deleteClaim deletes a PVC (with a UID precondition) and waits until it is
// gone, pvc-protection included.
func deleteClaim(ctx context.Context, t *testing.T, env *sim.Env, pvc corev1.PersistentVolumeClaim) {
	t.Helper()
	c := env.Cluster.Client.CoreV1().PersistentVolumeClaims(pvc.Namespace)
	uid := pvc.UID
	require.NoError(t, c.Delete(ctx, pvc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}))
	require.Eventually(t, func() bool {
		got, err := c.Get(ctx, pvc.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err) || (err == nil && got.UID != uid)
	}, waitLong, tick, "claim %s never went away", pvc.Name)
}

// writeUserData stands in for TiKV writing to its volume: kwok runs no
// containers, so the files go straight into the disk on the host.
// It returns the names created at the disk's root, sorted.
func writeUserData(t testing.TB, disk string, dirs, filesPerDir int) []string {
	t.Helper()
	var top []string
	for d := range dirs {
		dir := filepath.Join(disk, fmt.Sprintf("db-%04d", d))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for f := range filesPerDir {
			p := filepath.Join(dir, fmt.Sprintf("%06d.sst", f))
			require.NoError(t, os.WriteFile(p, []byte("tikv data"), 0o644))
		}
		top = append(top, filepath.Base(dir))
	}
	require.NoError(t, os.WriteFile(filepath.Join(disk, "LOCK"), []byte("store 1"), 0o644))
	top = append(top, "LOCK")
	sort.Strings(top)
	return top
}

// userContents lists a disk's root without its reserved names (marker,
// lost+found), sorted.
func userContents(t testing.TB, disk string) []string {
	t.Helper()
	names, err := discovery.Contents(disk)
	require.NoError(t, err)
	sort.Strings(names)
	return names
}

// readMarker reads the disk's identity marker, which must be there.
func readMarker(t *testing.T, disk string) discovery.Marker {
	t.Helper()
	m, ok, err := discovery.ReadMarker(disk)
	require.NoError(t, err)
	require.True(t, ok, "no identity marker in %s", disk)
	return m
}

// pvSnapshot is what must not change about a PV when nothing happens to it.
type pvSnapshot struct {
	UID             types.UID
	ResourceVersion string
	Phase           corev1.PersistentVolumePhase
}

func snapshotPVs(ctx context.Context, t *testing.T, env *sim.Env) map[string]pvSnapshot {
	t.Helper()
	m, err := ourPVs(ctx, env, nil)
	require.NoError(t, err)
	out := map[string]pvSnapshot{}
	for name, pv := range m {
		out[name] = pvSnapshot{pv.UID, pv.ResourceVersion, pv.Status.Phase}
	}
	return out
}

// eventsFor lists the events about an object with a reason.
func eventsFor(ctx context.Context, env *sim.Env, namespace string, uid types.UID, reason string) ([]corev1.Event, error) {
	list, err := env.Cluster.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Event
	for _, ev := range list.Items {
		if ev.InvolvedObject.UID == uid && ev.Reason == reason {
			out = append(out, ev)
		}
	}
	return out, nil
}

// mountSource is the source of the mount at dir in this process's mount
// table, "" if dir is not a mount point.
func mountSource(t *testing.T, dir string) string {
	t.Helper()
	ms, err := (discovery.ProcMountTable{Path: discovery.DefaultMountInfo}).Mounts()
	require.NoError(t, err)
	idx := discovery.IndexMounts(ms)
	if m, ok := idx[dir]; ok {
		return m.Source
	}
	return ""
}

func keys[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// diskDir is the host path of the tidb-localpv-tikv disk name of node n.
func diskDir(n *sim.Node, name string) string {
	return filepath.Join(n.ClassDir("tidb-localpv-tikv"), name)
}
