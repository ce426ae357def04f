package volumecontroller

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Findings of the model check (e2e/model), each minimised to the few
// steps that break a rule. The controller here reads Caches the test
// fills, as the model drives it.

type cachedWorld struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	pd     *fakePD
	clock  *clocktesting.FakeClock
	caches *Caches
	c      *Controller
}

func newCachedWorld(t *testing.T, objs ...runtime.Object) *cachedWorld {
	t.Helper()
	w := &cachedWorld{
		t: t, ctx: context.Background(), client: fake.NewClientset(objs...),
		pd:    &fakePD{cluster: testClusterID, stores: map[uint64]pd.StoreInfo{}},
		clock: clocktesting.NewFakeClock(testNow), caches: NewCaches(),
	}
	tmpl, err := pd.ParseEndpointTemplate(pd.DefaultEndpointTemplate)
	require.NoError(t, err)
	w.c, err = New(Config{Policy: testPolicy, PDTemplate: tmpl, PollInterval: 5 * time.Second, PDCacheTTL: time.Nanosecond, Workers: 1},
		Deps{Client: w.client, Clock: w.clock, Recorder: record.NewFakeRecorder(100), Registry: prometheus.NewRegistry(), Caches: w.caches,
			Dial: func(string) (PD, error) { return w.pd, nil }})
	require.NoError(t, err)
	t.Cleanup(w.c.ShutDown)
	return w
}

// sync fills the caches from the API, as caught-up informers would, and
// runs one reconcile of the PV.
func (w *cachedWorld) sync(pv string) {
	w.t.Helper()
	w.catchUp()
	w.c.pd.invalidate("http://demo-pd.tidb:2379")
	require.NoError(w.t, w.c.SyncPV(w.ctx, pv))
}

// catchUp shows the caches what the API holds, without a reconcile: what a
// standby's informers do while another instance leads.
func (w *cachedWorld) catchUp() {
	w.t.Helper()
	for _, c := range []struct {
		store cache.Indexer
		res   string
		kind  string
	}{
		{w.caches.PVs, "persistentvolumes", "PersistentVolume"},
		{w.caches.PVCs, "persistentvolumeclaims", "PersistentVolumeClaim"},
		{w.caches.Pods, "pods", "Pod"},
		{w.caches.Nodes, "nodes", "Node"},
	} {
		list, err := w.client.Tracker().List(corev1.SchemeGroupVersion.WithResource(c.res), corev1.SchemeGroupVersion.WithKind(c.kind), "")
		require.NoError(w.t, err)
		items, err := meta.ExtractList(list)
		require.NoError(w.t, err)
		objs := make([]any, len(items))
		for i, o := range items {
			objs[i] = o
		}
		require.NoError(w.t, c.store.Replace(objs, ""))
	}
}

func (w *cachedWorld) pv(name string) *corev1.PersistentVolume {
	w.t.Helper()
	pv, err := w.client.CoreV1().PersistentVolumes().Get(w.ctx, name, metav1.GetOptions{})
	require.NoError(w.t, err)
	return pv
}

func (w *cachedWorld) pvDeletes() int {
	n := 0
	for _, a := range w.client.Actions() {
		if a.GetVerb() == "delete" && a.GetResource().Resource == "persistentvolumes" {
			n++
		}
	}
	return n
}

// Model check, seed 26 (600 steps): a controller saw node-3's object gone,
// then led no longer while the node came back; an hour later the node was
// deleted again and the controller, leading again, deleted its PVs at
// once — the grace period counted from the first absence.
func TestSync_ANodeDeletedAgainAfterItCameBackGetsTheWholeGraceAgain(t *testing.T) {
	objs := tikvObjects(false)
	pv := objs[0].(*corev1.PersistentVolume)
	pv.Spec.ClaimRef, pv.Status.Phase = nil, corev1.VolumeAvailable
	node := objs[2].(*corev1.Node)
	w := newCachedWorld(t, pv, node)

	require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, node.Name, metav1.DeleteOptions{}))
	w.sync(pvName) // the grace starts
	_, err := w.client.CoreV1().Nodes().Create(w.ctx, node, metav1.CreateOptions{})
	require.NoError(t, err)
	w.clock.Step(time.Hour)
	w.catchUp() // back, seen by the caches; no reconcile ran meanwhile

	require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, node.Name, metav1.DeleteOptions{}))
	w.clock.Step(time.Second)
	w.sync(pvName)
	require.Zero(t, w.pvDeletes(), "the node has been gone for a second, not for the grace period")
}

// pdMemberObjects is PD pod demo-pd-1 on a PV of node-a, its claim the
// StatefulSet's new one (UID pvc-new), the pod started at podStart.
func pdMemberObjects(ready bool) []runtime.Object {
	objs := tikvObjects(false)
	pv := objs[0].(*corev1.PersistentVolume)
	pvc := objs[1].(*corev1.PersistentVolumeClaim)
	pv.Spec.ClaimRef.Name, pv.Spec.ClaimRef.UID = "pd-demo-pd-1", "pvc-new"
	pvc.Name, pvc.UID = "pd-demo-pd-1", "pvc-new"
	pvc.Labels[labelComponent] = ComponentPD
	pod := tikvPod("pod-new", ready)
	pod.Name = "demo-pd-1"
	pod.Labels[labelComponent] = ComponentPD
	pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName = pvc.Name
	return append(objs, pod)
}

func pdMember(name string, id uint64, ns string) pd.Member {
	host := "http://" + name + ".demo-pd-peer." + ns + ".svc"
	return pd.Member{Name: name, MemberID: id, PeerURLs: []string{host + ":2380"}, ClientURLs: []string{host + ":2379"}}
}

// Model check, seed 1 (600 steps): demo-pd-1's node died and its claim was
// recreated; the new pod, on an empty disk, cannot join PD while the old
// member of the same name is listed, and crash-loops. PD lists "a member
// named after the pod", and the controller recorded it as the owner of the
// new, empty disk. Once the old member is deleted and the pod joins as a
// new member, the record says the disk's owner is gone: the new member's
// data would be released.
func TestSync_APDMemberLeftByThePodsPreviousDiskIsNotRecordedForItsNewClaim(t *testing.T) {
	w := newCachedWorld(t, pdMemberObjects(false)...)
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 1001, ns), pdMember("demo-pd-1", 1008, ns), pdMember("demo-pd-2", 1010, ns)}
	w.clock.Step(10 * time.Minute) // long enough for any grace
	w.sync(pvName)
	require.False(t, provisioner.Owned(w.pv(pvName)), "member 1008 keeps its data on the old disk; this pod has not come up")
}

// Model check, seed 10 (600 steps): while the PD endpoint reached another
// cluster's PD (a template resolving to namespace staging), the controller
// recorded that cluster's member demo-pd-0 — matched by name alone — as
// the owner of a disk of ours. Stores are confirmed only when their
// address names the pod, cluster and namespace; members are not.
func TestSync_APDMemberOfAnotherNamespaceIsNotRecorded(t *testing.T) {
	w := newCachedWorld(t, pdMemberObjects(true)...)
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 2001, "staging"), pdMember("demo-pd-1", 2002, "staging")}
	w.sync(pvName)
	require.False(t, provisioner.Owned(w.pv(pvName)), "the member's URLs name namespace staging, the pod is in %s", ns)
}

// Model check, seed 61 (600 steps, with the known findings patched out): a
// person removed tidb-localpv.io/node from the PV of a PD disk whose
// member had been deleted; a minute later the controller took the missing
// label for a deleted node, released the claim and force-deleted the pod —
// grace 0, as for a dead node — though the pod ran on a live node.
func TestSync_APVThatLostItsNodeLabelIsNotOnADeadNode(t *testing.T) {
	objs := tikvObjects(true)
	w := newCachedWorld(t, objs...)
	w.pd.stores[7] = pd.StoreInfo{ID: 7, Address: "demo-tikv-3.demo-tikv-peer.tidb.svc:20160", StateName: "Up", State: pd.StoreUp, NodeState: pd.NodeServing, LastHeartbeat: testNow}
	w.sync(pvName)
	require.True(t, provisioner.Owned(w.pv(pvName)))

	w.pd.set(7, "Tombstone") // buried; the operator has not scaled the pod in yet
	pv := w.pv(pvName)
	delete(pv.Labels, provisioner.LabelNode)
	_, err := w.client.CoreV1().PersistentVolumes().Update(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	for range 3 {
		w.clock.Step(2 * time.Minute)
		w.sync(pvName)
	}
	for _, a := range w.client.Actions() {
		require.NotEqual(t, "delete", a.GetVerb(), "the pod is Ready on a live node: %v", a)
	}
}

// Model check, seed 514 (600 steps): pod demo-tikv-1 stayed Pending for
// half an hour, then started on its disk just as its store turned
// Tombstone (a scale-in in progress, which the design says to wait for).
// The controller's cache still showed the pod not Ready since its
// creation: a stuck pod. The fresh read before the release checked only
// the pod's UID, and the claim and the Ready pod were deleted.
func TestSync_AStuckPodIsReCheckedFreshBeforeItsClaimIsReleased(t *testing.T) {
	w := newCachedWorld(t, tikvObjects(true)...)
	w.pd.stores[7] = pd.StoreInfo{ID: 7, Address: "demo-tikv-3.demo-tikv-peer.tidb.svc:20160", StateName: "Up", State: pd.StoreUp, NodeState: pd.NodeServing, LastHeartbeat: testNow}
	w.sync(pvName)
	require.True(t, provisioner.Owned(w.pv(pvName)))
	w.pd.set(7, "Tombstone")

	setReady := func(ready bool, since time.Time) {
		pod, err := w.client.CoreV1().Pods(ns).Get(w.ctx, podN, metav1.GetOptions{})
		require.NoError(t, err)
		pod.Status.Conditions[0].Status = map[bool]corev1.ConditionStatus{true: corev1.ConditionTrue, false: corev1.ConditionFalse}[ready]
		pod.Status.Conditions[0].LastTransitionTime = metav1.NewTime(since)
		_, err = w.client.CoreV1().Pods(ns).UpdateStatus(w.ctx, pod, metav1.UpdateOptions{})
		require.NoError(t, err)
	}
	setReady(false, podStart)
	w.catchUp() // the cache: not Ready for six hours
	setReady(true, testNow)
	w.c.pd.invalidate("http://demo-pd.tidb:2379")
	require.NoError(t, w.c.SyncPV(w.ctx, pvName)) // decided on the cache
	for _, a := range w.client.Actions() {
		require.NotEqual(t, "delete", a.GetVerb(), "the pod is Ready now: %v", a)
	}
}

// Model check, seed 1796104972508720020: demo-pd-1 on a fresh disk crash-
// looped while its previous disk's member of the same name was listed; the
// operator deleted that member, the pod joined as member 1010 and turned
// Ready — all within the PD cache's lifetime. The controller recorded the
// deleted member from its cached list as the new disk's owner: once that
// member counted as gone, the live member's disk would be released.
func TestSync_APDMemberIsRecordedFromAnAnswerYoungerThanThePodsReadiness(t *testing.T) {
	w := newCachedWorld(t, pdMemberObjects(false)...)
	w.c.pd = newPDView(func(string) (PD, error) { return w.pd, nil }, 30*time.Second, w.clock)
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 1001, ns), pdMember("demo-pd-1", 1008, ns)}
	w.catchUp()
	require.NoError(t, w.c.SyncPV(w.ctx, pvName)) // caches PD's answer
	require.False(t, provisioner.Owned(w.pv(pvName)))

	w.clock.Step(2 * time.Second)
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 1001, ns), pdMember("demo-pd-1", 1010, ns)}
	pod, err := w.client.CoreV1().Pods(ns).Get(w.ctx, "demo-pd-1", metav1.GetOptions{})
	require.NoError(t, err)
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(w.clock.Now().Truncate(time.Second))}}
	_, err = w.client.CoreV1().Pods(ns).UpdateStatus(w.ctx, pod, metav1.UpdateOptions{})
	require.NoError(t, err)
	w.catchUp()
	require.NoError(t, w.c.SyncPV(w.ctx, pvName))
	require.Equal(t, "1010", w.pv(pvName).Annotations[provisioner.AnnPDMemberID], "the member the pod joined as, not the one its previous disk left")
}
