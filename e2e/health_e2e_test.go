//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// Issue 11 on the real control plane: a TiKV pod's disk fails (the
// filesystem goes read-only under it); the claim and the pod hear of it
// within seconds; with --failed-disk-grace set, the store is offlined once
// its TiKV stops heartbeating, buried, and the pod starts over on another
// disk; the failed disk is not republished until an operator says so.
func TestFailedDisk_TheStoreMovesToAHealthyDiskAndTheDiskStaysOut(t *testing.T) {
	t.Parallel()
	te := startTiDBEnv(t, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	_, err := te.env.StartController(ctx, "controller-0", append(te.controllerArgs(time.Second), "--failed-disk-grace=2s")...)
	require.NoError(t, err)
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, t, sts)
	pv := te.waitOwnerRecorded(ctx, t, sts, 3)
	disk := pv.Spec.Local.Path
	store := storeIDOf(t, pv)
	c := te.env.Cluster.Client.CoreV1()
	pod, err := c.Pods(tidbNS).Get(ctx, podName(sts.Name, 3), metav1.GetOptions{})
	require.NoError(t, err)
	claim, err := c.PersistentVolumeClaims(tidbNS).Get(ctx, pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
	require.NoError(t, err)

	// The filesystem goes read-only under the running store.
	failed := time.Now()
	require.NoError(t, unix.Mount("", disk, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""))
	t.Cleanup(func() { _ = unix.Mount("", disk, "", unix.MS_REMOUNT, "") })
	for what, uid := range map[string]types.UID{"PV": pv.UID, "claim": claim.UID, "pod": pod.UID} {
		ev := te.waitEvent(ctx, t, uid, provisioner.ReasonVolumeConditionAbnormal)
		t.Logf("disk read-only → VolumeConditionAbnormal on the %s after %s: %s", what, time.Since(failed).Round(time.Millisecond), ev.Message)
	}

	// TiKV dies on its read-only disk: the store goes silent; the failed
	// disk counts as a dead node for it: offlined, buried, released.
	te.pd.Crash(pod)
	require.Eventually(t, func() bool {
		p, err := c.Pods(tidbNS).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || p.UID == pod.UID || p.Status.Phase != corev1.PodRunning {
			return false
		}
		cl, err := c.PersistentVolumeClaims(tidbNS).Get(ctx, claim.Name, metav1.GetOptions{})
		return err == nil && cl.UID != claim.UID && cl.Spec.VolumeName != "" && cl.Spec.VolumeName != pv.Name
	}, waitLong, 100*time.Millisecond, "the pod never started over on another disk")
	t.Logf("disk failed → pod Running again on a healthy disk: %s", time.Since(failed).Round(time.Millisecond))
	s, ok := te.pd.Sim.Store(store)
	require.True(t, ok)
	require.Equal(t, "Tombstone", s.StateName)

	// The failed disk stays out: its old PV is not replaced by a new one.
	dyn, err := dynamic.NewForConfig(te.env.Cluster.RESTConfig())
	require.NoError(t, err)
	phase := func() v1alpha1.Phase {
		u, err := dyn.Resource(v1alpha1.Resource).Get(ctx, pv.Name, metav1.GetOptions{})
		if err != nil {
			return ""
		}
		ld, _ := localDisk(u)
		return ld.Status.Phase
	}
	require.Eventually(t, func() bool { return phase() == v1alpha1.PhaseFailed }, waitLong, 100*time.Millisecond)
	require.Never(t, func() bool {
		pvs, err := pvsOfDisk(ctx, te.env, pv.Labels[provisioner.LabelDisk])
		if err != nil {
			return false
		}
		for _, p := range pvs {
			if p.Status.Phase == corev1.VolumeAvailable {
				return true
			}
		}
		return false
	}, 5*time.Second, 200*time.Millisecond, "a failed disk must not return to the pool by itself")

	// The operator checks the disk, mounts it read-write and says so.
	require.NoError(t, unix.Mount("", disk, "", unix.MS_REMOUNT, ""))
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{provisioner.AnnReturnToService: "true"}}})
	_, err = dyn.Resource(v1alpha1.Resource).Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		pvs, err := pvsOfDisk(ctx, te.env, pv.Labels[provisioner.LabelDisk])
		if err != nil {
			return false
		}
		for _, p := range pvs {
			if p.Status.Phase == corev1.VolumeAvailable && p.UID != pv.UID {
				return true
			}
		}
		return false
	}, waitLong, 100*time.Millisecond, "the disk returned to service was never published again")
	require.Empty(t, userContents(t, disk))
	_ = fmt.Sprint
}
