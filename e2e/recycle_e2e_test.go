//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// A claim deleted after its pod is gone releases the PV: the agent wipes
// the disk (keeping its identity marker) and publishes the same disk again
// as a new, Available PV.
func TestReleasedDisk_IsWipedAndPublishedAgainAsANewPV(t *testing.T) {
	t.Parallel()
	env, nodes := startEnv(t, "node-a")
	ctx := t.Context()
	n := nodes["node-a"]
	disk, err := n.MountDisk("tidb-localpv-tikv", "disk0", "32m")
	require.NoError(t, err)
	require.NoError(t, n.StartAgent(ctx))
	waitAvailable(ctx, t, env, "node-a", 1)
	// The classes ship with reclaimPolicy Retain; the volume-controller sets
	// a claim's PV to Delete once it sees no TiKV or PD pod uses it.
	startPlainController(t, env)

	sts, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, plainStatefulSet("recycle", 1), metav1.CreateOptions{})
	require.NoError(t, err)
	placed := waitStatefulSetBound(ctx, t, env, sts, 1)[0]
	old := placed.PV
	require.Equal(t, disk, old.Spec.Local.Path)
	id := old.Labels[provisioner.LabelDisk]
	written := writeUserData(t, disk, 3, 20)
	require.Equal(t, written, userContents(t, disk))

	// The claim is in use while its pod exists (pvc-protection would hold
	// it), so the StatefulSet goes to 0 first, as in a TiKV scale-in.
	waitReclaimDelete(ctx, t, env, old.Name)
	scaleStatefulSet(ctx, t, env, sts, 0, 1)
	deleted := time.Now()
	deleteClaim(ctx, t, env, placed.Claim)

	fresh := waitNewPV(ctx, t, env, id, old.UID)
	t.Logf("PVC deleted → new PV %s Available (UID %s, was %s): %s", fresh.Name, fresh.UID, old.UID, time.Since(deleted).Round(time.Millisecond))
	require.Equal(t, disk, fresh.Spec.Local.Path, "the same disk is published again")
	require.Equal(t, "node-a", affinityNode(t, fresh))
	require.Nil(t, fresh.Spec.ClaimRef)
	require.Empty(t, userContents(t, disk), "the released disk must be wiped")
	m := readMarker(t, disk)
	require.Equal(t, id, m.ID, "the identity marker survives the wipe")
	require.Equal(t, discovery.StateReady, m.State)
	// Same name (node and disk are in it), new object.
	if got, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, old.Name, metav1.GetOptions{}); err == nil {
		require.NotEqual(t, old.UID, got.UID, "the released PV object must be gone")
	}
}

// waitNewPV waits for an Available PV of disk id other than the one with
// UID old, and checks it is the only PV of that disk.
func waitNewPV(ctx context.Context, t *testing.T, env *sim.Env, id string, old types.UID) corev1.PersistentVolume {
	t.Helper()
	var got corev1.PersistentVolume
	var last string
	require.Eventually(t, func() bool {
		pvs, err := pvsOfDisk(ctx, env, id)
		if err != nil {
			return false
		}
		last = describePVs(pvs)
		for _, pv := range pvs {
			if pv.UID != old && pv.Status.Phase == corev1.VolumeAvailable && pv.DeletionTimestamp == nil && len(pvs) == 1 {
				got = pv
				return true
			}
		}
		return false
	}, waitLong, tick, "disk %s never came back as a new Available PV (last: %s)", id, func() string { return last }())
	return got
}

func describePVs(pvs []corev1.PersistentVolume) string {
	if len(pvs) == 0 {
		return "no PV"
	}
	s := ""
	for _, pv := range pvs {
		s += fmt.Sprintf("[%s uid=%s %s] ", pv.Name, pv.UID, pv.Status.Phase)
	}
	return s
}
