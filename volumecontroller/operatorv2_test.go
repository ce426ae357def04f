package volumecontroller

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// TiDB Operator v2: instance basic-5gzwgj of TiKVGroup basic in cluster
// demo; pod basic-tikv-5gzwgj; claim data-basic-tikv-5gzwgj.
const (
	v2Inst  = "basic-5gzwgj"
	v2Pod   = "basic-tikv-5gzwgj"
	v2Claim = "data-basic-tikv-5gzwgj"
	v2Addr  = "basic-tikv-5gzwgj.basic-tikv-peer.tidb:20160"
)

var tikvGVR = schema.GroupVersionResource{Group: "core.pingcap.com", Version: "v1alpha1", Resource: "tikvs"}

func v2Labels() map[string]string {
	return map[string]string{
		"pingcap.com/managed-by": "tidb-operator", "pingcap.com/cluster": "demo", "pingcap.com/component": "tikv",
		"pingcap.com/group": "basic", "pingcap.com/instance": v2Inst,
		"app.kubernetes.io/component": "tikv", "app.kubernetes.io/instance": "demo", "app.kubernetes.io/managed-by": "tidb-operator",
	}
}

func instanceRef(uid types.UID) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: "core.pingcap.com/v1alpha1", Kind: "TiKV", Name: v2Inst, UID: uid, Controller: ptr.To(true)}}
}

func v2Instance0(uid types.UID, annotations map[string]string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("core.pingcap.com/v1alpha1")
	u.SetKind("TiKV")
	u.SetNamespace(ns)
	u.SetName(v2Inst)
	u.SetUID(uid)
	u.SetFinalizers([]string{"pingcap.com/finalizer"})
	u.SetAnnotations(annotations)
	_ = unstructured.SetNestedField(u.Object, map[string]any{"name": "demo"}, "spec", "cluster")
	return u
}

func v2ClusterObject() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("core.pingcap.com/v1alpha1")
	u.SetKind("Cluster")
	u.SetNamespace(ns)
	u.SetName("demo")
	_ = unstructured.SetNestedField(u.Object, "http://basic-pd.tidb:2379", "status", "pd")
	return u
}

type v2World struct {
	*world
	dyn *dynamicfake.FakeDynamicClient
}

func newV2World(t *testing.T, inst *unstructured.Unstructured) *v2World {
	t.Helper()
	pv := tikvObjects(false)[0].(*corev1.PersistentVolume)
	pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: ns, Name: v2Claim, UID: "pvc-uid"}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: v2Claim, Namespace: ns, UID: "pvc-uid", Labels: v2Labels(), OwnerReferences: instanceRef("inst-uid")},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: pvName},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	pod := tikvPod("pod-uid", true)
	pod.Name, pod.Labels, pod.OwnerReferences = v2Pod, v2Labels(), instanceRef("inst-uid")
	pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName = v2Claim
	node := tikvObjects(false)[2]

	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		tikvGVR: "TiKVList",
		{Group: "core.pingcap.com", Version: "v1alpha1", Resource: "clusters"}: "ClusterList",
		{Group: "core.pingcap.com", Version: "v1alpha1", Resource: "pdgroups"}: "PDGroupList",
		v1alpha1.Resource: v1alpha1.ListKind,
	}, inst, v2ClusterObject())

	w := &world{
		t: t, client: fake.NewClientset(pv, pvc, pod, node),
		pd: &fakePD{cluster: testClusterID, stores: map[uint64]pd.StoreInfo{
			7: {ID: 7, Address: v2Addr, StateName: "Up", NodeState: pd.NodeServing, LastHeartbeat: testNow},
			1: {ID: 1, Address: "basic-tikv-aaaaaa.basic-tikv-peer.tidb:20160", StateName: "Up", NodeState: pd.NodeServing, LastHeartbeat: testNow},
		}},
		clock: clocktesting.NewFakeClock(testNow),
		rec:   record.NewFakeRecorder(200),
	}
	tmpl, err := pd.ParseEndpointTemplate(pd.DefaultEndpointTemplate)
	require.NoError(t, err)
	w.c, err = New(Config{Policy: testPolicy, PDTemplate: tmpl, PollInterval: 5 * time.Second, PDCacheTTL: time.Nanosecond, Workers: 1},
		Deps{Client: w.client, Dynamic: dyn, Clock: w.clock, Recorder: w.rec, Registry: prometheus.NewRegistry(),
			Dial: func(endpoint string) (PD, error) {
				require.Equal(t, "http://basic-pd.tidb:2379", endpoint, "a v2 cluster's PD is read from its Cluster object")
				return w.pd, nil
			}})
	require.NoError(t, err)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	t.Cleanup(w.cancel)
	require.NoError(t, w.c.Start(w.ctx))
	return &v2World{world: w, dyn: dyn}
}

func (w *v2World) sync() error {
	w.t.Helper()
	w.waitCaches()
	w.c.pd.invalidate("http://basic-pd.tidb:2379")
	return w.c.sync(w.ctx, pvName)
}

func (w *v2World) instanceDeletes() []k8stesting.DeleteAction {
	var out []k8stesting.DeleteAction
	for _, a := range w.dyn.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && a.GetResource() == tikvGVR {
			out = append(out, d)
		}
	}
	return out
}

func (w *v2World) killNode() {
	require.NoError(w.t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
	require.Eventually(w.t, func() bool { _, err := w.c.nodeLister.Get("node-a"); return err != nil }, 5*time.Second, time.Millisecond)
	require.NoError(w.t, w.sync())
	w.clock.Step(2 * time.Minute)
}

func TestSyncV2_RecordsTheStoreAtTheInstancePodsAddress(t *testing.T) {
	w := newV2World(t, v2Instance0("inst-uid", nil))
	require.NoError(t, w.sync())
	pv := w.pv()
	require.Equal(t, "7", pv.Annotations[provisioner.AnnStoreID])
	require.Equal(t, "v2", pv.Annotations[provisioner.AnnTiDBOperator])
}

func TestSyncV2_APodWhoseStoreIDLabelIsWrongGetsTheStorePDConfirms(t *testing.T) {
	w := newV2World(t, v2Instance0("inst-uid", nil))
	pod, err := w.client.CoreV1().Pods(ns).Get(w.ctx, v2Pod, metav1.GetOptions{})
	require.NoError(t, err)
	pod.Labels[labelStoreID] = "1" // stamped wrongly: another pod's store
	_, err = w.client.CoreV1().Pods(ns).Update(w.ctx, pod, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		p, err := w.c.podLister.Pods(ns).Get(v2Pod)
		return err == nil && p.Labels[labelStoreID] == "1"
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, w.sync())
	require.Equal(t, "7", w.pv().Annotations[provisioner.AnnStoreID])
}

func TestSyncV2_ADeadNodesDisconnectedStoreGetsItsInstanceDeletedNotItsStore(t *testing.T) {
	w := newV2World(t, v2Instance0("inst-uid", nil))
	require.NoError(t, w.sync())
	w.killNode()
	require.NoError(t, w.sync())
	require.Empty(t, w.instanceDeletes(), "store still Up: the node object lies")

	w.pd.set(7, "Disconnected")
	w.pd.mu.Lock()
	s := w.pd.stores[7]
	s.Address = v2Addr
	w.pd.stores[7] = s
	w.pd.mu.Unlock()
	require.NoError(t, w.sync())
	dels := w.instanceDeletes()
	require.Len(t, dels, 1)
	require.Equal(t, v2Inst, dels[0].GetName())
	require.Equal(t, types.UID("inst-uid"), *dels[0].GetDeleteOptions().Preconditions.UID)
	require.Empty(t, w.pd.deletes, "TiDB Operator offlines the store itself")
	require.Empty(t, w.claimDeletes(), "TiDB Operator deletes the claim itself")
	require.Contains(t, w.events(), ReasonInstanceDeleted)
}

func TestSyncV2_AnInstanceRecreatedUnderTheSameNameIsNotDeleted(t *testing.T) {
	// The claim's owner is the old instance; the object now under that
	// name is a new one (another UID).
	w := newV2World(t, v2Instance0("new-inst-uid", nil))
	require.NoError(t, w.sync())
	w.killNode()
	w.pd.set(7, "Down")
	require.NoError(t, w.sync())
	require.Empty(t, w.instanceDeletes())
}

func TestSyncV2_AnInstanceTheOperatorIsAlreadyDeletingIsLeftToIt(t *testing.T) {
	for name, inst := range map[string]*unstructured.Unstructured{
		"defer-delete": v2Instance0("inst-uid", map[string]string{annV2DeferDelete: "true"}),
		"being deleted": func() *unstructured.Unstructured {
			u := v2Instance0("inst-uid", nil)
			u.SetDeletionTimestamp(ptr.To(metav1.NewTime(testNow)))
			return u
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			w := newV2World(t, inst)
			require.NoError(t, w.sync())
			w.killNode()
			w.pd.set(7, "Down")
			w.pd.mu.Lock()
			s := w.pd.stores[7]
			s.Address = v2Addr
			w.pd.stores[7] = s
			w.pd.mu.Unlock()
			require.NoError(t, w.sync())
			require.Empty(t, w.instanceDeletes())
			require.Zero(t, testutilValue(w.c.metrics.refusals.WithLabelValues("recheck")), "no fight, no error")
		})
	}
}

func TestSyncV2_AStoreUpAgainAtTheFreshReadStopsTheInstanceDeletion(t *testing.T) {
	w := newV2World(t, v2Instance0("inst-uid", nil))
	require.NoError(t, w.sync())
	w.killNode()
	w.pd.set(7, "Down")
	w.pd.mu.Lock()
	s := w.pd.stores[7]
	s.Address = v2Addr
	w.pd.stores[7] = s
	w.pd.mu.Unlock()
	// Right before the action, the store heartbeats again.
	w.dyn.PrependReactor("get", "tikvs", func(k8stesting.Action) (bool, runtime.Object, error) {
		w.pd.set(7, "Up")
		return false, nil, nil
	})
	require.NoError(t, w.sync())
	require.Empty(t, w.instanceDeletes())
}

// The release-with-pod re-check added from the model check judged "still
// stuck" by StatefulSet pods only, and instance deletion called it with a
// made-up decision: a v2 pod stuck on its buried store's disk, on a node
// that is fine, was never replaced.
func TestSyncV2_ABuriedStoresStuckPodOnALiveNodeGetsItsInstanceDeleted(t *testing.T) {
	w := newV2World(t, v2Instance0("inst-uid", nil))
	require.NoError(t, w.sync())
	pod, err := w.client.CoreV1().Pods(ns).Get(w.ctx, v2Pod, metav1.GetOptions{})
	require.NoError(t, err)
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.NewTime(testNow)}}
	_, err = w.client.CoreV1().Pods(ns).UpdateStatus(w.ctx, pod, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, idx := range w.c.podIndexes {
			o, ok, _ := idx.GetByKey(ns + "/" + v2Pod)
			if !ok || len(o.(*corev1.Pod).Status.Conditions) == 0 || o.(*corev1.Pod).Status.Conditions[0].Status != corev1.ConditionFalse {
				return false
			}
		}
		return true
	}, 5*time.Second, time.Millisecond, "the caches see the pod not Ready")
	w.pd.set(7, "Tombstone")
	w.clock.Step(testPolicy.StuckPodGrace + time.Second)
	require.NoError(t, w.sync())
	dels := w.instanceDeletes()
	require.Len(t, dels, 1, "%s", w.events())
	require.Equal(t, types.UID("inst-uid"), *dels[0].GetDeleteOptions().Preconditions.UID)
}
