package daemon

import (
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"path/filepath"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// release turns a published PV into a Released one, as the PV binder does
// when the claim goes.
func (h *harness) release(name string) *corev1.PersistentVolume {
	h.t.Helper()
	pv := h.apiPV(name)
	pv.UID = types.UID("uid-" + name)
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "tikv-db-tikv-0", UID: "claim-uid"}
	pv.Status.Phase = corev1.VolumeReleased
	h.updatePV(pv)
	h.sync()
	cached, err := h.agent.pvLister.Get(name)
	require.NoError(h.t, err)
	return cached
}

func TestRecycle_WipesTheReleasedDiskAndTheNextPassPublishesItAgain(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	h.mustReconcile()
	id := h.marker(disk).ID
	name := provisioner.PVName(testNode, "disk0", id)
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))
	writeFile(t, filepath.Join(disk, "raft", "wal", "0001.log"))
	released := h.release(name)
	p := &provisioner.Provisioner{Node: testNode, Client: h.client, Recycler: h.agent}

	// Delete wipes, then deletes the PV itself (UID precondition) and tells
	// the library there is nothing left for it to do.
	require.ErrorAs(t, p.Delete(h.ctx, released), new(*controller.IgnoredError))
	_, gerr := h.client.CoreV1().PersistentVolumes().Get(h.ctx, name, metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(gerr), "the wiped PV is deleted")

	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)
	require.Equal(t, discovery.Marker{Version: 1, ID: id, State: discovery.StateReady, Created: h.marker(disk).Created}, h.marker(disk))
	wiped := h.events.withReason(ReasonWiped)
	require.Len(t, wiped, 1)
	require.Equal(t, name, wiped[0].Object.(*corev1.PersistentVolume).Name)
	require.False(t, h.agent.isBusy(id))

	h.client.ClearActions()
	h.mustReconcile()

	creates := h.createActions()
	require.Len(t, creates, 1, "the disk is published again at once")
	pv := creates[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv, disk, id)
	require.Nil(t, pv.Spec.ClaimRef)
}

func TestRecycle_NeverWipesADiskThatReplacedThePVsDisk(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ourPV(t, disk, idA, corev1.VolumeReleased)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idB, discovery.StateReady)
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))

	require.NoError(t, h.agent.Recycle(h.ctx, pv), "the released disk is not here: nothing to wipe, the PV may go")

	require.FileExists(t, filepath.Join(disk, "db", "000001.sst"), "disk B is not wiped for disk A's PV")
	require.Equal(t, discovery.Marker{Version: 1, ID: idB, State: discovery.StateReady}, h.marker(disk))
	missing := h.events.withReason(ReasonDiskMissing)
	require.Len(t, missing, 1)
	require.Contains(t, missing[0].Message, "wiped before reuse if it comes back")
}

func TestRecycle_FindsTheReleasedDiskWhereverItIsMountedNow(t *testing.T) {
	base := t.TempDir()
	pv := ourPV(t, filepath.Join(base, "tikv", "disk0"), idA, corev1.VolumeReleased)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	moved := h.newDisk("disk7")
	writeMarker(t, moved, idA, discovery.StateReady)
	writeFile(t, filepath.Join(moved, "db", "000001.sst"))

	require.NoError(t, h.agent.Recycle(h.ctx, pv))

	left, err := discovery.Contents(moved)
	require.NoError(t, err)
	require.Empty(t, left)
}

func TestRecycle_RefusesWhileAnotherWipeOfTheSameDiskRuns(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ourPV(t, disk, idA, corev1.VolumeReleased)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	writeFile(t, filepath.Join(disk, "LOCK"))
	require.True(t, h.agent.tryBusy(idA))

	err := h.agent.Recycle(h.ctx, pv)

	require.ErrorIs(t, err, errBusy)
	require.FileExists(t, filepath.Join(disk, "LOCK"))
	require.True(t, h.agent.isBusy(idA), "the other wipe still holds the disk")
	h.agent.release(idA)
}

func TestRecycle_ReportsAFailedWipeAndTheDiskStaysUnpublishable(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ourPV(t, disk, idA, corev1.VolumeReleased)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	nested := filepath.Join(disk, "nested")
	writeFile(t, filepath.Join(nested, "file"))
	h.mounts.add(nested, "/dev/sdc", "ext4")

	err := h.agent.Recycle(h.ctx, pv)

	require.ErrorIs(t, err, provisioner.ErrNestedMount)
	failed := h.events.withReason(ReasonWipeFailed)
	require.Len(t, failed, 1)
	require.Equal(t, corev1.EventTypeWarning, failed[0].Type)
	require.Contains(t, failed[0].Message, nested)
	require.Equal(t, discovery.StateWiping, h.marker(disk).State)

	// Even if the PV is removed by hand now, the disk is not published.
	h.deletePV(pv.Name)
	h.mustReconcile()
	require.Eventually(t, func() bool { return !h.agent.isBusy(idA) }, eventuallyWait, eventuallyTick)
	h.mustReconcile()
	require.Empty(t, h.createActions())
	require.FileExists(t, filepath.Join(nested, "file"))
}

// Mid-reformat a disk is a blank filesystem without its marker for a moment;
// a reconcile pass then must not take it for a new disk (new identity, new PV).
func TestReconcile_LeavesAPathBeingWipedAloneEvenWhenItLooksLikeANewDisk(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0") // blank, no marker: what a fresh mkfs leaves
	require.True(t, h.agent.tryBusy(idA))
	h.agent.holdPath(idA, disk)

	h.mustReconcile()
	_, ok, err := discovery.ReadMarker(disk)
	require.NoError(t, err)
	require.False(t, ok, "no identity may be written to a disk being wiped")
	require.Empty(t, h.createActions())

	h.agent.release(idA)
	h.mustReconcile()
	require.Len(t, h.createActions(), 1, "published once the wipe let go")
}
