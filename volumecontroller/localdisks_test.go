package volumecontroller

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

func localDiskObject(t *testing.T) *unstructured.Unstructured {
	ld := &v1alpha1.LocalDisk{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: v1alpha1.Kind},
		ObjectMeta: metav1.ObjectMeta{Name: pvName, UID: "ld-uid"},
		Spec:       v1alpha1.LocalDiskSpec{NodeName: "node-a", Path: "/mnt/tidb-localpv/tikv/disk0", StorageClassName: "tidb-localpv-tikv", DiskID: "fs-000000000001"},
		Status:     v1alpha1.LocalDiskStatus{Phase: v1alpha1.PhaseBound},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(ld)
	require.NoError(t, err)
	return &unstructured.Unstructured{Object: obj}
}

type diskWorld struct {
	*world
	dyn *dynamicfake.FakeDynamicClient
}

func newDiskWorld(t *testing.T, objs ...runtime.Object) *diskWorld {
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1alpha1.Resource: v1alpha1.ListKind}, localDiskObject(t))
	return &diskWorld{world: newWorldWith(t, dyn, objs...), dyn: dyn}
}

func (w *diskWorld) disk() *v1alpha1.LocalDisk {
	w.t.Helper()
	u, err := w.dyn.Resource(v1alpha1.Resource).Get(w.ctx, pvName, metav1.GetOptions{})
	require.NoError(w.t, err)
	ld, ok := toLocalDisk(u)
	require.True(w.t, ok)
	return ld
}

// waitDisk waits until the controller's LocalDisk cache shows the API.
func (w *diskWorld) waitDisk() {
	w.t.Helper()
	want := w.disk()
	require.Eventually(w.t, func() bool {
		got, ok := w.c.cachedDisk(pvName)
		return ok && (got.Status.Owner == nil) == (want.Status.Owner == nil)
	}, 5*time.Second, time.Millisecond)
}

func TestSync_TheOwnerIsRecordedOnTheLocalDiskAndOutlivesThePVsAnnotations(t *testing.T) {
	w := newDiskWorld(t, tikvObjects(true)...)
	w.recordOwner()
	owner := w.disk().Status.Owner
	require.NotNil(t, owner)
	require.Equal(t, uint64(7), owner.StoreID)
	require.Equal(t, "7714128303309438701", owner.PDClusterID)
	require.Equal(t, "pvc-uid", owner.ClaimUID)
	require.Equal(t, "store 7", owner.Name[len(owner.Name)-7:])
	w.waitDisk()

	// Someone strips every ownership annotation and label from the PV.
	pv := w.pv()
	for k := range (provisioner.Ownership{}).Annotations() {
		delete(pv.Annotations, k)
	}
	delete(pv.Labels, provisioner.LabelComponent)
	_, err := w.client.CoreV1().PersistentVolumes().Update(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	w.removePod()
	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1, "the LocalDisk's record still says whose data it is")
}

func TestSync_ADiskOnADeadNodeIsMarkedNodeLost(t *testing.T) {
	w := newDiskWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.waitDisk()
	require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool { _, err := w.c.nodeLister.Get("node-a"); return err != nil }, 5*time.Second, time.Millisecond)
	require.NoError(t, w.sync())
	require.Nil(t, w.disk().Status.NodeLost, "within the grace")
	w.clock.Step(2 * time.Minute)
	require.NoError(t, w.sync())
	require.NotNil(t, w.disk().Status.NodeLost)
	_ = corev1.VolumeBound
}
