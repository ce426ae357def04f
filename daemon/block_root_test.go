package daemon

import (
	"fmt"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

func blockEntry(dev string) *corev1.ConfigMap {
	return inventory(fmt.Sprintf("disks:\n- device: %s\n  storageClass: tidb-localpv-tikv\n  volumeMode: Block\n", dev))
}

func TestRecycle_WipesAReleasedBlockDiskAndTheNextPassPublishesItAgain(t *testing.T) {
	hostdisk.RequireRoot(t, "attach a loop device")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 64)
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{blockEntry(dev)}})
	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
	pv := h.createActions()[0].GetObject().(*corev1.PersistentVolume)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4")) // the consumer's data
	p := &provisioner.Provisioner{Node: testNode, Client: h.client, Recycler: h.agent}

	// Delete wipes, then deletes the PV itself (UID precondition) and tells
	// the library there is nothing left for it to do.
	require.ErrorAs(t, p.Delete(h.ctx, h.release(pv.Name)), new(*controller.IgnoredError))
	_, gerr := h.client.CoreV1().PersistentVolumes().Get(h.ctx, pv.Name, metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(gerr), "the wiped PV is deleted")

	require.Empty(t, blkid(t, dev))
	wiped := h.events.withReason(ReasonWiped)
	require.Len(t, wiped, 1)
	require.Contains(t, wiped[0].Message, "wiped by discard")

	h.client.ClearActions()
	h.mustReconcile()

	require.False(t, h.agent.isBusy(pv.Labels[provisioner.LabelDisk]), "a wiped disk is not wiped again")
	creates := h.createActions()
	require.Len(t, creates, 1, "the disk is published again at once")
	again := creates[0].GetObject().(*corev1.PersistentVolume)
	require.Equal(t, pv.Name, again.Name, "same disk, same identity, same name")
	require.Equal(t, pv.Labels, again.Labels)
}

func TestReconcile_RefusesToPublishABlockDiskWhoseWipeFailedUntilAWipeSucceeds(t *testing.T) {
	hostdisk.RequireRoot(t, "attach a loop device")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4"))
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{blockEntry(dev)},
		blockWipe: []string{"sh", "-c", "echo no way to erase $0 >&2; exit 3", "{device}"}})

	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
	pv := h.createActions()[0].GetObject().(*corev1.PersistentVolume)
	require.Equal(t, corev1.PersistentVolumeBlock, *pv.Spec.VolumeMode)
	require.Equal(t, dev, pv.Spec.Local.Path)
	id := pv.Labels[provisioner.LabelDisk]
	require.True(t, strings.HasPrefix(id, "blk-"), id)

	err := h.agent.Recycle(h.ctx, h.release(pv.Name))
	require.ErrorContains(t, err, "no way to erase "+dev)
	require.Len(t, h.events.withReason(ReasonWipeFailed), 1)
	wiping, err := h.agent.wiper.BlockWiping(id)
	require.NoError(t, err)
	require.True(t, wiping, "the failed wipe leaves its record")

	h.deletePV(pv.Name) // an operator removes the stuck PV by hand
	h.client.ClearActions()
	h.mustReconcile()
	require.Eventually(t, func() bool { return !h.agent.isBusy(id) }, eventuallyWait, eventuallyTick)
	h.mustReconcile()
	require.Empty(t, h.createActions(), "a block disk with an unfinished wipe is not published")
	require.Equal(t, "ext4", blkid(t, dev)["TYPE"])
	// That pass started another (failing) wipe; let it end before the
	// configuration changes under it.
	require.Eventually(t, func() bool { return !h.agent.isBusy(id) }, eventuallyWait, eventuallyTick)

	h.agent.wiper.BlockCommand = nil // fixed: the built-in discard
	h.mustReconcile()
	require.Eventually(t, func() bool { return !h.agent.isBusy(id) }, eventuallyWait, eventuallyTick)
	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
	require.Empty(t, blkid(t, dev))
}
