package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

func TestReconcile_GivesADiskReplacedAtTheSamePathANewIdentityAndWaitsForTheOldPV(t *testing.T) {
	hostdisk.RequireRoot(t, "mount tmpfs disks")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	h := newHarness(t, harnessConfig{base: base, realMounts: true})
	disk := filepath.Join(h.root, "disk0")
	hostdisk.Tmpfs(t, hd, disk, "16m") // disk A

	h.mustReconcile()
	id1 := h.marker(disk).ID
	require.Len(t, h.createActions(), 1)
	pv1 := h.createActions()[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv1, disk, id1)
	bound := h.apiPV(pv1.Name)
	bound.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "tikv-db-tikv-0"}
	bound.Status.Phase = corev1.VolumeBound
	h.updatePV(bound)
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))

	require.NoError(t, hostdisk.Unmount(disk))
	hostdisk.Tmpfs(t, hd, disk, "16m") // disk B, same path
	h.client.ClearActions()
	h.mustReconcile()

	id2 := h.marker(disk).ID
	require.NotEqual(t, id1, id2)
	require.Empty(t, h.createActions(), "B waits while A's bound PV names the path")
	require.Contains(t, h.apiPV(pv1.Name).Annotations, provisioner.AnnDiskMissing)
	require.Len(t, h.events.withReason(ReasonDiskConflict), 1)

	h.deletePV(pv1.Name)
	h.mustReconcile()

	require.Len(t, h.createActions(), 1)
	pv2 := h.createActions()[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv2, disk, id2)
	require.NotEqual(t, pv1.Name, pv2.Name)
	_, err := os.Stat(filepath.Join(disk, "db"))
	require.ErrorIs(t, err, os.ErrNotExist, "B never held A's data")
}
