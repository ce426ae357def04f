package volumecontroller

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Issue 10: the dead-node signals Kubernetes already has, and stores that
// cannot drain.

func outOfService(n *corev1.Node) *corev1.Node {
	n = n.DeepCopy()
	n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: TaintOutOfService, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute})
	return n
}

func (w *world) setNode(n *corev1.Node) {
	w.t.Helper()
	_, err := w.client.CoreV1().Nodes().Update(w.ctx, n, metav1.UpdateOptions{})
	require.NoError(w.t, err)
	require.Eventually(w.t, func() bool {
		got, err := w.c.nodeLister.Get(n.Name)
		return err == nil && len(got.Spec.Taints) == len(n.Spec.Taints)
	}, 5*time.Second, time.Millisecond)
}

func TestSync_AnOutOfServiceTaintMarksTheNodeDeadWithoutTheGrace(t *testing.T) {
	objs := tikvObjects(true)
	w := newWorld(t, objs...)
	w.recordOwner()
	w.pd.set(7, "Disconnected")
	w.setNode(outOfService(objs[2].(*corev1.Node)))
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7}, w.pd.deletes, "offlined at once: the taint is an explicit word that the node is gone")
	require.NotEmpty(t, w.pv().Annotations[provisioner.AnnOfflinedAt])

	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
	require.Equal(t, 1, w.podDeletes())
}

func TestSync_ATaintRemovedBeforeTheActionCancelsIt(t *testing.T) {
	objs := tikvObjects(true)
	w := newWorld(t, objs...)
	w.recordOwner()
	w.pd.set(7, "Disconnected")
	w.setNode(outOfService(objs[2].(*corev1.Node)))
	// The cache still shows the taint; the fresh read right before acting
	// does not.
	w.client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, objs[2].DeepCopyObject(), nil
	})
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes)
}

func TestSync_APendingPodOfANodeDeletedWhileTheControllerWasAwayIsRecovered(t *testing.T) {
	objs := tikvObjects(true)
	pod := objs[3].(*corev1.Pod)
	// The StatefulSet recreated the pod; it is Pending: its PV's node is gone.
	pod.Spec.NodeName = ""
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable"}}}
	pv := objs[0].(*corev1.PersistentVolume)
	rec := provisioner.Ownership{Component: ComponentTiKV, Cluster: "demo", Pod: ns + "/" + podN, Claim: "pvc-uid", StoreID: 7, ClusterID: testClusterID, State: "Down"}
	for k, v := range rec.Annotations() {
		if v != "" {
			pv.Annotations[k] = v
		}
	}
	pv.Labels[provisioner.LabelComponent], pv.Labels[provisioner.LabelCluster] = "tikv", "demo"
	// The Node was deleted before this controller started: no deletion
	// event ever reaches it.
	w := newWorld(t, objs[0], objs[1], objs[3])
	w.pd.set(7, "Down")
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes, "the grace counts from when the controller first saw the node missing")
	w.clock.Step(2 * time.Minute)
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7}, w.pd.deletes)
	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
	var grace *int64
	for _, a := range w.client.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && a.GetResource().Resource == "pods" {
			grace = d.GetDeleteOptions().GracePeriodSeconds
		}
	}
	require.NotNil(t, grace, "the Pending pod is deleted so its StatefulSet recreates it with a new claim")
	require.Zero(t, *grace)
}

func TestSync_APVsNodeOnlyBrieflyNotReadyIsLeftAlone(t *testing.T) {
	objs := tikvObjects(true)
	w := newWorld(t, objs...)
	w.c.cfg.Policy.NotReadyThreshold = 10 * time.Minute
	w.recordOwner()
	n := objs[2].(*corev1.Node).DeepCopy()
	n.Status.Conditions[0].Status = corev1.ConditionFalse
	n.Status.Conditions[0].LastTransitionTime = metav1.NewTime(testNow.Add(-2 * time.Minute))
	_, err := w.client.CoreV1().Nodes().UpdateStatus(w.ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := w.c.nodeLister.Get("node-a")
		return err == nil && got.Status.Conditions[0].Status == corev1.ConditionFalse
	}, 5*time.Second, time.Millisecond)
	w.pd.set(7, "Disconnected")
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes)
	// Still NotReady past the threshold: dead.
	w.clock.Step(9 * time.Minute)
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7}, w.pd.deletes)
}

func TestSync_AnUndrainableOfflineStoreOnADeadNodeIsReportedAndNeverForced(t *testing.T) {
	objs := tikvObjects(true)
	w := newWorld(t, objs...)
	w.recordOwner()
	// Three stores, max-replicas 3: once store 7 is Offline only two are
	// up, and PD keeps it Offline forever.
	w.pd.mu.Lock()
	w.pd.stores[2] = pd.StoreInfo{ID: 2, Address: "demo-tikv-1.demo-tikv-peer.tidb.svc:20160", StateName: "Up", LastHeartbeat: testNow}
	w.pd.mu.Unlock()
	w.setNode(outOfService(objs[2].(*corev1.Node)))
	w.pd.set(7, "Offline")
	for range 3 {
		require.NoError(t, w.sync())
		w.clock.Step(time.Minute)
	}
	ev := w.events()
	require.Contains(t, ev, "cannot bury it: the number of up stores is 2 while max-replicas is 3")
	require.Contains(t, ev, "scale out")
	require.Empty(t, w.pd.deletes, "never offlined again, never forced")
	require.Empty(t, w.claimDeletes())
	require.Equal(t, 1.0, testutilValue(w.c.metrics.refusals.WithLabelValues("store-undrainable")), "one event while the reason stands")
}

func TestSync_ANodeBackWhileTheStoreWeOfflinedDrainsIsReportedWithTheCancelCommand(t *testing.T) {
	objs := tikvObjects(true)
	w := newWorld(t, objs...)
	w.recordOwner()
	w.pd.set(7, "Disconnected")
	w.setNode(outOfService(objs[2].(*corev1.Node)))
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7}, w.pd.deletes)

	// The taint is removed: the node is back; store 7 drains.
	w.setNode(objs[2].(*corev1.Node))
	require.NoError(t, w.sync())
	require.Contains(t, w.events(), "pd-ctl store cancel-delete 7")
	require.Empty(t, w.claimDeletes())
}

func TestSync_ALeaderTakingOverCountsTheDeadNodeGraceFromTheDeletionItSawAsStandby(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.pd.set(7, "Disconnected")
	// This replica stands by (informers only, no syncs) when the node goes.
	require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
	// The lister forgets the node before the deletion handler runs: wait
	// for the handler's note, not for the lister.
	require.Eventually(t, func() bool {
		w.c.mu.Lock()
		defer w.c.mu.Unlock()
		_, noted := w.c.goneAt["node-a"]
		return noted
	}, 5*time.Second, time.Millisecond)
	w.clock.Step(2 * time.Minute)
	// It takes over the lease: the node has been gone for two minutes.
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7}, w.pd.deletes)
}
