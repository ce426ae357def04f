package daemon

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Model check (e2e/model), seed 662 at 600 steps: after the approved wipe
// of PD member demo-pd-1's disk, a reconcile whose cache still held the
// wiped PV kept its ownership record again. The disk came back to life
// with demo-pd-1's record on it; member demo-pd-2 then wrote its data
// there, the PV was deleted by hand, the agent republished it for
// demo-pd-1's claim, and the controller — demo-pd-1 being long gone —
// approved the wipe of demo-pd-2's live data.
func TestRecycle_AWipedDisksRecordIsNotKeptAgainFromAStaleCache(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ownedPV(t, disk, idA)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	tikvData(t, disk)
	h.mustReconcile()
	_, owned, err := h.agent.ownerRecord(idA)
	require.NoError(t, err)
	require.True(t, owned, "the agent keeps the controller's record")

	// The owner is gone: the controller approved the release and set Delete.
	pv = h.apiPV(pv.Name)
	pv.Status.Phase = corev1.VolumeReleased
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
	pv.Annotations[provisioner.AnnReleaseApproved] = "claim-uid"
	h.updatePV(pv)
	h.sync()
	p := &provisioner.Provisioner{Node: testNode, Client: h.client, Recycler: h.agent}
	require.Error(t, p.Delete(h.ctx, pv), "wiped and deleted: the library is told to ignore it")
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)

	// The pass Recycle triggers runs before the watch delivers the
	// deletion: its cache still holds the approved PV.
	require.NoError(t, h.agent.reconcile(h.ctx))
	_, owned, err = h.agent.ownerRecord(idA)
	require.NoError(t, err)
	require.False(t, owned, "the wiped disk holds nobody's data any more")
}
