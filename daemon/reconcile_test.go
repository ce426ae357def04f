package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

const (
	idA = "fs-aaaaaaaaaaaaaaaaaaaaaaaa"
	idB = "fs-bbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestReconcile_GivesANewEmptyDiskAMarkerAndPublishesItsPV(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")

	h.mustReconcile()

	m := h.marker(disk)
	require.Equal(t, discovery.StateReady, m.State)
	require.True(t, strings.HasPrefix(m.ID, "fs-"), m.ID)
	creates := h.createActions()
	require.Len(t, creates, 1)
	pv := creates[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv, disk, m.ID)
	require.Equal(t, testCapacity, pv.Spec.Capacity.Storage().Value())
	require.Len(t, h.apiPVs(), 1)
	published := h.events.withReason(ReasonPublished)
	require.Len(t, published, 1)
	require.Equal(t, corev1.EventTypeNormal, published[0].Type)
	require.Contains(t, published[0].Message, disk)
}

func TestReconcile_ASecondPassChangesNothing(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	h.mustReconcile()
	marker := h.marker(disk)
	pvs := h.apiPVs()
	events := h.events.count()
	h.client.ClearActions()

	h.mustReconcile()
	h.mustReconcile()

	require.Empty(t, h.client.Actions(), "an unchanged node costs no API call at all")
	require.Equal(t, marker, h.marker(disk))
	require.Equal(t, pvs, h.apiPVs())
	require.Equal(t, events, h.events.count())
}

func TestReconcile_ReadoptsADiskWhosePVExistsWithoutWipingOrRepublishing(t *testing.T) {
	for _, phase := range []corev1.PersistentVolumePhase{corev1.VolumeBound, corev1.VolumeAvailable, corev1.VolumeReleased} {
		t.Run(string(phase), func(t *testing.T) {
			base := t.TempDir()
			disk := filepath.Join(base, "tikv", "disk0")
			pv := ourPV(t, disk, idA, phase)
			h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
			h.newDisk("disk0")
			writeMarker(t, disk, idA, discovery.StateReady)
			writeFile(t, filepath.Join(disk, "db", "000001.sst"))
			before := h.apiPV(pv.Name)

			h.mustReconcile() // the agent's first pass after a restart

			require.Empty(t, h.writes())
			require.Equal(t, before, h.apiPV(pv.Name), "the PV is unchanged")
			require.FileExists(t, filepath.Join(disk, "db", "000001.sst"), "an adopted disk is not wiped")
			require.Equal(t, discovery.Marker{Version: 1, ID: idA, State: discovery.StateReady}, h.marker(disk))
			require.False(t, h.agent.isBusy(idA))
		})
	}
}

func TestReconcile_WipesADiskWithDataWhosePVIsGoneBeforePublishingIt(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))
	writeFile(t, filepath.Join(disk, "LOCK"))
	var leftAtCreate []string
	h.client.PrependReactor("create", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		left, err := discovery.Contents(disk)
		require.NoError(t, err)
		leftAtCreate = append(leftAtCreate, strings.Join(left, ","))
		return false, nil, nil
	})

	h.mustReconcile()

	require.Empty(t, h.createActions(), "a disk holding data without a PV is not published")
	require.Eventually(t, func() bool { return !h.agent.isBusy(idA) }, eventuallyWait, eventuallyTick)
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)
	require.Equal(t, discovery.StateReady, h.marker(disk).State)
	require.Equal(t, idA, h.marker(disk).ID, "the disk keeps its identity")
	require.Len(t, h.events.withReason(ReasonWiped), 1)

	h.mustReconcile()

	require.Len(t, h.createActions(), 1)
	require.Equal(t, []string{""}, leftAtCreate, "the disk was empty when its PV was created")
	requirePublished(t, h.createActions()[0].GetObject().(*corev1.PersistentVolume), disk, idA)
}

func TestReconcile_FinishesAnInterruptedWipeBeforePublishing(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateWiping)
	writeFile(t, filepath.Join(disk, "db", "half-removed"))

	h.mustReconcile()
	require.Eventually(t, func() bool { return !h.agent.isBusy(idA) }, eventuallyWait, eventuallyTick)
	require.Empty(t, h.createActions())
	require.Equal(t, discovery.StateReady, h.marker(disk).State)

	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
}

func TestReconcile_WipesAnInterruptedWipeEvenWhenTheDiskLooksEmpty(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateWiping)

	h.mustReconcile()

	require.Empty(t, h.createActions(), "wiping means unverified: it is wiped (and verified) first")
	require.Eventually(t, func() bool { return !h.agent.isBusy(idA) }, eventuallyWait, eventuallyTick)
	require.Equal(t, discovery.StateReady, h.marker(disk).State)
	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
}

func TestReconcile_DoesNotWipeADiskWhoseIdentityAPVOnAnotherNodeStillNames(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	elsewhere := ourPV(t, "/mnt/tikv/disk0", idA, corev1.VolumeBound)
	elsewhere.Name = "tlpv-node-b-disk0-12345678"
	elsewhere.Labels[provisioner.LabelNode] = "node-b"
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{elsewhere}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))

	h.mustReconcile()

	require.False(t, h.agent.isBusy(idA), "no wipe was started")
	require.FileExists(t, filepath.Join(disk, "db", "000001.sst"))
	require.Empty(t, h.writes())
	conflicts := h.events.withReason(ReasonDiskConflict)
	require.Len(t, conflicts, 1)
	require.Contains(t, conflicts[0].Message, elsewhere.Name)
}

func TestReconcile_NeitherPublishesNorWipesAForeignDiskAndWarnsOnce(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	writeFile(t, filepath.Join(disk, "someone-elses", "data"))

	h.mustReconcile()
	h.mustReconcile()

	require.Empty(t, h.writes())
	require.FileExists(t, filepath.Join(disk, "someone-elses", "data"))
	_, ok, err := discovery.ReadMarker(disk)
	require.NoError(t, err)
	require.False(t, ok, "a foreign disk gets no identity")
	warnings := h.events.withReason(ReasonBadDisk)
	require.Len(t, warnings, 1, "a standing problem is one event, not one per pass")
	require.Equal(t, corev1.EventTypeWarning, warnings[0].Type)
	require.Contains(t, warnings[0].Message, disk)
	require.Contains(t, warnings[0].Message, "empty the disk")
	require.Equal(t, "Node", warnings[0].Object.(*corev1.ObjectReference).Kind)
}

func TestReconcile_DeletesTheAvailablePVOfAVanishedDiskWithAUIDPrecondition(t *testing.T) {
	base := t.TempDir()
	pv := ourPV(t, filepath.Join(base, "tikv", "disk9"), idA, corev1.VolumeAvailable)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	fresh := h.apiPV(pv.Name)

	h.mustReconcile()

	writes := h.writes()
	require.Len(t, writes, 1)
	del, ok := writes[0].(k8stesting.DeleteAction)
	require.True(t, ok, "%T", writes[0])
	require.Equal(t, pv.Name, del.GetName())
	pre := del.GetDeleteOptions().Preconditions
	require.NotNil(t, pre)
	require.NotNil(t, pre.UID)
	require.Equal(t, pv.UID, *pre.UID)
	require.NotNil(t, pre.ResourceVersion)
	require.Equal(t, fresh.ResourceVersion, *pre.ResourceVersion)
	require.Empty(t, h.apiPVs())
	require.Len(t, h.events.withReason(ReasonPVRemoved), 1)
}

func TestReconcile_DoesNotDeleteAVanishedDisksPVThatWasBoundSinceTheCacheSawIt(t *testing.T) {
	base := t.TempDir()
	pv := ourPV(t, filepath.Join(base, "tikv", "disk9"), idA, corev1.VolumeAvailable)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.sync() // the cache sees it Available
	bound := ourPV(t, pv.Spec.Local.Path, idA, corev1.VolumeBound)
	h.updatePV(bound) // the binder was faster than the informer

	require.NoError(t, h.agent.reconcile(h.ctx))

	require.Empty(t, h.writes())
	require.Contains(t, h.apiPVs(), pv.Name)
}

func TestReconcile_DoesNotDeleteAVanishedDisksPVThatWasReplacedSinceTheCacheSawIt(t *testing.T) {
	base := t.TempDir()
	pv := ourPV(t, filepath.Join(base, "tikv", "disk9"), idA, corev1.VolumeAvailable)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.sync()
	replaced := pv.DeepCopy()
	replaced.UID = "uid-new"
	h.updatePV(replaced)

	require.NoError(t, h.agent.reconcile(h.ctx))

	require.Empty(t, h.writes())
}

func TestReconcile_FlagsTheBoundPVOfAVanishedDiskAndNeverDeletesIt(t *testing.T) {
	base := t.TempDir()
	pv := ourPV(t, filepath.Join(base, "tikv", "disk9"), idA, corev1.VolumeBound)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})

	h.mustReconcile()

	writes := h.writes()
	require.Len(t, writes, 2, "the disk-missing flag and the health annotations")
	for _, w := range writes {
		require.Equal(t, "patch", w.GetVerb())
	}
	got := h.apiPV(pv.Name)
	since, err := time.Parse(time.RFC3339, got.Annotations[provisioner.AnnDiskMissing])
	require.NoError(t, err, "the annotation records when the disk was first missed")
	require.WithinDuration(t, time.Now(), since, time.Minute)
	missing := h.events.withReason(ReasonDiskMissing)
	require.Len(t, missing, 1)
	require.Equal(t, corev1.EventTypeWarning, missing[0].Type)
	require.Equal(t, pv.Name, missing[0].Object.(*corev1.PersistentVolume).Name)

	h.client.ClearActions()
	h.mustReconcile()
	h.mustReconcile()
	require.Empty(t, h.writes(), "flagged once; never deleted")
	require.Contains(t, h.apiPVs(), pv.Name)
}

func TestReconcile_UnflagsABoundPVWhenItsDiskComesBack(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ourPV(t, disk, idA, corev1.VolumeBound)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.mustReconcile()
	require.Contains(t, h.apiPV(pv.Name).Annotations, provisioner.AnnDiskMissing)

	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	writeFile(t, filepath.Join(disk, "db", "000001.sst"))
	h.mustReconcile()

	require.NotContains(t, h.apiPV(pv.Name).Annotations, provisioner.AnnDiskMissing)
	require.Len(t, h.events.withReason(ReasonDiskFound), 1)
	require.FileExists(t, filepath.Join(disk, "db", "000001.sst"))
}

func TestReconcile_LeavesTheReleasedPVOfAVanishedDiskToTheLibrary(t *testing.T) {
	base := t.TempDir()
	pv := ourPV(t, filepath.Join(base, "tikv", "disk9"), idA, corev1.VolumeReleased)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})

	h.mustReconcile()

	require.Empty(t, h.writes())
}

func TestReconcile_IgnoresPVsOfOtherNodesAndOtherProvisioners(t *testing.T) {
	base := t.TempDir()
	other := ourPV(t, filepath.Join(base, "tikv", "disk9"), idA, corev1.VolumeAvailable)
	other.Labels[provisioner.LabelNode] = "node-b"
	notOurs := ourPV(t, filepath.Join(base, "tikv", "disk8"), idB, corev1.VolumeAvailable)
	notOurs.Annotations[provisioner.AnnProvisionedBy] = "local-volume-provisioner"
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{other, notOurs}})

	h.mustReconcile()

	require.Empty(t, h.writes())
}

func TestReconcile_PublishesADiskReplacedAtTheSamePathOnlyOnceTheOldBoundPVIsGone(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	old := ourPV(t, disk, idA, corev1.VolumeBound)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{old}})
	h.newDisk("disk0") // a new, empty disk where disk A was

	h.mustReconcile()

	id := h.marker(disk).ID
	require.NotEqual(t, idA, id, "a replaced disk is a new disk")
	require.Empty(t, h.createActions(), "two PVs must not name one path")
	conflict := h.events.withReason(ReasonDiskConflict)
	require.Len(t, conflict, 1)
	require.Contains(t, conflict[0].Message, old.Name)
	require.Contains(t, h.apiPV(old.Name).Annotations, provisioner.AnnDiskMissing)

	h.mustReconcile()
	require.Empty(t, h.createActions(), "still waiting while the old PV is bound")

	h.deletePV(old.Name) // the claim was released and the PV went
	h.mustReconcile()

	creates := h.createActions()
	require.Len(t, creates, 1)
	pv := creates[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv, disk, id)
	require.NotEqual(t, old.Name, pv.Name)
}

func TestReconcile_PublishesADiskReplacedAtTheSamePathOnTheNextPassWhenTheOldPVWasAvailable(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	old := ourPV(t, disk, idA, corev1.VolumeAvailable)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{old}})
	h.newDisk("disk0")

	h.mustReconcile()

	require.NotContains(t, h.apiPVs(), old.Name, "the vanished disk's free PV goes")
	require.Empty(t, h.createActions(), "this pass's cache still had the old PV on the path")

	h.mustReconcile()

	creates := h.createActions()
	require.Len(t, creates, 1)
	requirePublished(t, creates[0].GetObject().(*corev1.PersistentVolume), disk, h.marker(disk).ID)
}

func TestReconcile_WithoutTheStorageClassPublishesNothingAndSaysWhy(t *testing.T) {
	h := newHarness(t, harnessConfig{noDefaults: true, objects: []runtime.Object{testNodeObject()}})
	disk := h.newDisk("disk0")

	h.mustReconcile()
	h.mustReconcile()

	require.Empty(t, h.writes())
	missing := h.events.withReason(ReasonMissingClass)
	require.Len(t, missing, 1)
	require.Equal(t, corev1.EventTypeWarning, missing[0].Type)
	require.Contains(t, missing[0].Message, testClass)
	require.Contains(t, missing[0].Message, disk)

	require.NoError(t, h.client.Tracker().Add(testStorageClass(nil)))
	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
}

func TestReconcile_TakesTheReclaimPolicyFromTheStorageClass(t *testing.T) {
	retain := corev1.PersistentVolumeReclaimRetain
	h := newHarness(t, harnessConfig{noDefaults: true, objects: []runtime.Object{testNodeObject(), testStorageClass(&retain)}})
	h.newDisk("disk0")

	h.mustReconcile()

	require.Len(t, h.createActions(), 1)
	require.Equal(t, retain, h.createActions()[0].GetObject().(*corev1.PersistentVolume).Spec.PersistentVolumeReclaimPolicy)
}

func TestReconcile_PublishesTheNodeNameAsHostnameWhenTheNodeObjectIsNotCached(t *testing.T) {
	h := newHarness(t, harnessConfig{noDefaults: true, objects: []runtime.Object{testStorageClass(nil)}})
	h.newDisk("disk0")

	h.mustReconcile()

	require.Len(t, h.createActions(), 1)
	require.Equal(t, testNode, h.createActions()[0].GetObject().(*corev1.PersistentVolume).Labels[provisioner.LabelHostname])
}

func TestReconcile_SkipsDirectoriesThatAreNotMountPoints(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	require.NoError(t, os.Mkdir(filepath.Join(h.root, "plain"), 0o755))

	h.mustReconcile()

	require.Empty(t, h.writes())
	_, ok, err := discovery.ReadMarker(filepath.Join(h.root, "plain"))
	require.NoError(t, err)
	require.False(t, ok, "a directory of the root disk is never touched")
}
