package daemon

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Issue 7, scenario 3: a disk is never wiped because its PV lost a label or
// was deleted by hand.

// ownedPV is a Bound PV of a disk on which the volume-controller recorded
// TiKV store 7 for claim "claim-uid".
func ownedPV(t *testing.T, path, id string) *corev1.PersistentVolume {
	pv := ourPV(t, path, id, corev1.VolumeBound)
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	rec := provisioner.Ownership{Component: "tikv", Cluster: "db", Pod: "db/db-tikv-0", Claim: "claim-uid",
		StoreID: 7, ClusterID: 7714128303309438701, State: "Up", Seen: time.Now()}
	for k, v := range rec.Annotations() {
		if v != "" {
			pv.Annotations[k] = v
		}
	}
	pv.Labels[provisioner.LabelComponent], pv.Labels[provisioner.LabelCluster] = "tikv", "db"
	return pv
}

// tikvData puts a store's files on a disk.
func tikvData(t *testing.T, disk string) {
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))
	writeFile(t, filepath.Join(disk, "raft", "wal", "0001.log"))
}

func requireData(t *testing.T, disk string) {
	t.Helper()
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"db", "raft"}, left, "the store's data must still be there")
}

func TestReconcile_ADiskWhosePVLostItsLabelsIsNeitherWipedNorPublished(t *testing.T) {
	for _, strip := range []string{provisioner.LabelDisk, provisioner.LabelNode} {
		t.Run("without "+strip, func(t *testing.T) {
			base := t.TempDir()
			disk := filepath.Join(base, "tikv", "disk0")
			pv := ourPV(t, disk, idA, corev1.VolumeBound)
			delete(pv.Labels, strip) // a GitOps tool or `kubectl label pv … key-`
			h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
			h.newDisk("disk0")
			writeMarker(t, disk, idA, discovery.StateReady)
			tikvData(t, disk)

			h.mustReconcile()
			h.mustReconcile()

			require.False(t, h.agent.isBusy(idA))
			requireData(t, disk)
			require.Empty(t, h.createActions())
			conflicts := h.events.withReason(ReasonDiskConflict)
			require.NotEmpty(t, conflicts)
			require.Contains(t, conflicts[0].Message, "kubectl label pv")
		})
	}
}

func TestReconcile_AnOrphanIsWipedOnlyOnceItsAbsenceHasLastedAResyncPeriod(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	h.agent.deps.Clock, h.agent.cfg.ResyncPeriod = clk, time.Minute
	disk := h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	tikvData(t, disk)

	h.mustReconcile()
	clk.Step(59 * time.Second)
	h.mustReconcile()
	require.False(t, h.agent.isBusy(idA))
	requireData(t, disk)

	// A PV naming the disk shows up (its agent was slow, or it was being
	// re-created): the clock starts over once it is gone again.
	pv := ourPV(t, disk, idA, corev1.VolumeAvailable)
	pv.Labels[provisioner.LabelNode] = "node-b"
	_, err := h.client.CoreV1().PersistentVolumes().Create(h.ctx, pv, metav1.CreateOptions{})
	require.NoError(t, err)
	clk.Step(2 * time.Second)
	h.mustReconcile()
	h.deletePV(pv.Name)
	h.mustReconcile()
	clk.Step(59 * time.Second)
	h.mustReconcile()
	requireData(t, disk)

	clk.Step(2 * time.Second)
	h.mustReconcile()
	require.Eventually(t, func() bool { return !h.agent.isBusy(idA) }, eventuallyWait, eventuallyTick)
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left, "a disk with data and no PV and no owner is wiped after a resync period")
}

func TestReconcile_AnOwnedDiskWhosePVWasDeletedGetsItsPVBackAndWaitsForTheControllersApproval(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ownedPV(t, disk, idA)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	tikvData(t, disk)
	h.mustReconcile() // the agent keeps the controller's record

	// `kubectl delete pv` while Bound, then the claim's deletion: the PV is
	// gone for good.
	h.deletePV(pv.Name)
	h.mustReconcile()
	require.False(t, h.agent.isBusy(idA))
	requireData(t, disk)
	creates := h.createActions()
	require.Len(t, creates, 1, "the owned disk gets its PV back")
	back := creates[0].GetObject().(*corev1.PersistentVolume)
	require.Equal(t, corev1.PersistentVolumeReclaimRetain, back.Spec.PersistentVolumeReclaimPolicy)
	require.Equal(t, "claim-uid", string(back.Spec.ClaimRef.UID), "bound to the recorded claim, which is gone: the binder marks it Released")
	require.True(t, provisioner.Owned(back))
	require.Equal(t, "7", back.Annotations[provisioner.AnnStoreID])
	require.Len(t, h.events.withReason(ReasonOwnedDiskRepublished), 1)

	// Released but not approved, even with Delete set by hand: no wipe.
	back = h.apiPV(back.Name)
	back.Status.Phase = corev1.VolumeReleased
	back.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
	h.updatePV(back)
	h.sync()
	p := &provisioner.Provisioner{Node: testNode, Client: h.client, Recycler: h.agent}
	require.Error(t, p.Delete(h.ctx, h.apiPV(back.Name)))
	requireData(t, disk)

	// The controller approves (store 7 Tombstone): wiped, record forgotten.
	back = h.apiPV(back.Name)
	back.Annotations[provisioner.AnnReleaseApproved] = "claim-uid"
	h.updatePV(back)
	h.sync()
	require.ErrorAs(t, p.Delete(h.ctx, h.apiPV(back.Name)), new(*controller.IgnoredError), "wiped, and the PV deleted by the agent")
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)
	_, owned, err := h.agent.ownerRecord(idA)
	require.NoError(t, err)
	require.False(t, owned)
}

func TestRecycle_TheNodesRecordForbidsAWipeEvenWhenThePVsOwnerAnnotationsWereStripped(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ownedPV(t, disk, idA)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	tikvData(t, disk)
	h.mustReconcile()

	// Someone strips the record, the claim goes, and Delete is set by hand.
	pv = h.apiPV(pv.Name)
	for k := range (provisioner.Ownership{}).Annotations() {
		delete(pv.Annotations, k)
	}
	pv.Status.Phase = corev1.VolumeReleased
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
	h.updatePV(pv)
	h.sync()
	p := &provisioner.Provisioner{Node: testNode, Client: h.client, Recycler: h.agent}
	require.Error(t, p.Delete(h.ctx, h.apiPV(pv.Name)))
	requireData(t, disk)
	require.NotEmpty(t, h.events.withReason(ReasonWipeRefused))

	// A forged approval for the PV does not help either when the PV is
	// bound to another claim than the recorded one.
	pv = h.apiPV(pv.Name)
	pv.Spec.ClaimRef.UID = "another-claim"
	pv.Annotations[provisioner.AnnReleaseApproved] = "another-claim"
	h.updatePV(pv)
	h.sync()
	require.Error(t, p.Delete(h.ctx, h.apiPV(pv.Name)))
	requireData(t, disk)
}

func TestReconcile_PutsAStrippedOwnershipRecordBackOnThePV(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ownedPV(t, disk, idA)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	h.mustReconcile()

	pv = h.apiPV(pv.Name)
	delete(pv.Annotations, provisioner.AnnStoreID)
	delete(pv.Annotations, provisioner.AnnOwnerClaim)
	h.updatePV(pv)
	h.mustReconcile()
	got := h.apiPV(pv.Name)
	require.True(t, provisioner.Owned(got))
	require.Equal(t, "7", got.Annotations[provisioner.AnnStoreID])
	require.Len(t, h.events.withReason(ReasonOwnerRestored), 1)
}
