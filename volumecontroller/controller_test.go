package volumecontroller

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// fakePD is a scriptable PD.
type fakePD struct {
	mu          sync.Mutex
	cluster     uint64
	stores      map[uint64]pd.StoreInfo
	members     []pd.Member
	err         error // every call fails with it (PD down, garbage)
	deleteErr   error
	deletes     []uint64
	maxReplicas int
	calls       int
}

func (f *fakePD) resetCalls() {
	f.mu.Lock()
	f.calls = 0
	f.mu.Unlock()
}

func (f *fakePD) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// testClusterID is a PD cluster ID above 2^53, as real ones are.
const testClusterID = uint64(7714128303309438701)

func (f *fakePD) ClusterID(context.Context) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return 0, f.err
	}
	return f.cluster, nil
}

func (f *fakePD) Stores(context.Context, ...pd.StoreState) ([]pd.StoreInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	var out []pd.StoreInfo
	for _, s := range f.stores {
		out = append(out, s)
	}
	return out, nil
}

func (f *fakePD) Store(_ context.Context, id uint64) (pd.StoreInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return pd.StoreInfo{}, f.err
	}
	s, ok := f.stores[id]
	if !ok {
		return pd.StoreInfo{}, pd.ErrStoreNotFound
	}
	return s, nil
}

func (f *fakePD) DeleteStore(_ context.Context, id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.deletes = append(f.deletes, id)
	if f.deleteErr != nil {
		return f.deleteErr
	}
	s := f.stores[id]
	s.StateName, s.State, s.NodeState = "Offline", pd.StoreOffline, pd.NodeRemoving
	f.stores[id] = s
	return nil
}

func (f *fakePD) Members(context.Context) (pd.Members, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return pd.Members{}, f.err
	}
	return pd.Members{ClusterID: f.cluster, Members: f.members}, nil
}

func (f *fakePD) MaxReplicas(context.Context) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return 0, f.err
	}
	if f.maxReplicas == 0 {
		return 3, nil
	}
	return f.maxReplicas, nil
}

func (f *fakePD) set(id uint64, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stores[id]
	s.StateName = state
	switch state {
	case "Tombstone":
		s.State, s.NodeState = pd.StoreTombstone, pd.NodeRemoved
	case "Offline":
		s.State, s.NodeState = pd.StoreOffline, pd.NodeRemoving
	default:
		s.State, s.NodeState = pd.StoreUp, pd.NodeServing
	}
	f.stores[id] = s
}

// world is one TiKV pod with its claim bound to a PV on node-a, and PD
// knowing it as store 7.
type world struct {
	t      *testing.T
	client *fake.Clientset
	pd     *fakePD
	clock  *clocktesting.FakeClock
	rec    *record.FakeRecorder
	c      *Controller
	ctx    context.Context
	cancel context.CancelFunc
}

// testNow is the fake clock's start; test pods started at podStart, and
// their stores heartbeat at testNow.
var (
	testNow  = time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC)
	podStart = time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
)

const (
	ns      = "tidb"
	pvName  = "tlpv-node-a-disk0-12345678"
	pvcName = "tikv-demo-tikv-3"
	podN    = "demo-tikv-3"
)

func tikvObjects(withPod bool) []runtime.Object {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, UID: "pv-uid", ResourceVersion: "1",
			Labels:      map[string]string{provisioner.LabelNode: "node-a", provisioner.LabelDisk: "fs-000000000001", provisioner.LabelHostname: "node-a"},
			Annotations: map[string]string{provisioner.AnnProvisionedBy: provisioner.Name}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt/tidb-localpv/tikv/disk0"}},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "tidb-localpv-tikv",
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: pvcName, UID: "pvc-uid"},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	lbl := map[string]string{labelComponent: "tikv", labelInstance: "demo"}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: pvcName, Namespace: ns, UID: "pvc-uid", Labels: lbl},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: pvName},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	objs := []runtime.Object{pv, pvc, node}
	if withPod {
		objs = append(objs, tikvPod("pod-uid", true))
	}
	return objs
}

func tikvPod(uid types.UID, ready bool) *corev1.Pod {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podN, Namespace: ns, UID: uid,
			Labels:          map[string]string{labelComponent: "tikv", labelInstance: "demo"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "demo-tikv", Controller: ptr.To(true), APIVersion: "apps/v1", UID: "sts"}}},
		Spec: corev1.PodSpec{NodeName: "node-a", Volumes: []corev1.Volume{{Name: "tikv",
			VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvcName}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: ptr.To(metav1.NewTime(podStart)), Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st,
			LastTransitionTime: metav1.NewTime(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC))}}},
	}
}

func newWorld(t *testing.T, objs ...runtime.Object) *world {
	t.Helper()
	return newWorldWith(t, nil, objs...)
}

// newWorldWith is newWorld with a dynamic client (LocalDisks, v2 objects).
func newWorldWith(t *testing.T, dyn dynamic.Interface, objs ...runtime.Object) *world {
	t.Helper()
	w := &world{
		t: t, client: fake.NewClientset(objs...),
		pd: &fakePD{cluster: testClusterID, stores: map[uint64]pd.StoreInfo{
			7: {ID: 7, Address: "demo-tikv-3.demo-tikv-peer.tidb.svc:20160", StateName: "Up", State: pd.StoreUp, NodeState: pd.NodeServing, LastHeartbeat: testNow},
			1: {ID: 1, Address: "demo-tikv-0.demo-tikv-peer.tidb.svc:20160", StateName: "Up", State: pd.StoreUp, NodeState: pd.NodeServing, LastHeartbeat: testNow},
		}},
		clock: clocktesting.NewFakeClock(testNow),
		rec:   record.NewFakeRecorder(200),
	}
	tmpl, err := pd.ParseEndpointTemplate(pd.DefaultEndpointTemplate)
	require.NoError(t, err)
	w.c, err = New(Config{
		Policy:     testPolicy,
		PDTemplate: tmpl, PollInterval: 5 * time.Second, PDCacheTTL: time.Nanosecond, Workers: 1,
	}, Deps{
		Client: w.client, Dynamic: dyn, Clock: w.clock, Recorder: w.rec, Registry: prometheus.NewRegistry(),
		Dial: func(endpoint string) (PD, error) {
			require.Equal(t, "http://demo-pd.tidb:2379", endpoint)
			return w.pd, nil
		},
	})
	require.NoError(t, err)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	t.Cleanup(w.cancel)
	require.NoError(t, w.c.Start(w.ctx))
	return w
}

// sync runs one reconcile of the PV once the caches show the current state.
func (w *world) sync() error {
	w.t.Helper()
	w.waitCaches()
	// The fake clock does not move, so the PD cache would never expire.
	w.c.pd.invalidate("http://demo-pd.tidb:2379")
	return w.c.sync(w.ctx, pvName)
}

// waitCaches waits until every informer has seen the fake clientset's
// latest PV, PVC and pod.
func (w *world) waitCaches() {
	w.t.Helper()
	require.Eventually(w.t, func() bool {
		pv, err := w.client.CoreV1().PersistentVolumes().Get(w.ctx, pvName, metav1.GetOptions{})
		if err != nil {
			return true
		}
		// The fake clientset does not bump resourceVersions: compare content.
		cached, err := w.c.pvLister.Get(pvName)
		return err == nil && equality.Semantic.DeepEqual(cached.ObjectMeta.Labels, pv.Labels) &&
			equality.Semantic.DeepEqual(cached.ObjectMeta.Annotations, pv.Annotations) &&
			equality.Semantic.DeepEqual(cached.Spec, pv.Spec) && cached.Status.Phase == pv.Status.Phase
	}, 5*time.Second, time.Millisecond)
}

func (w *world) pv() *corev1.PersistentVolume {
	pv, err := w.client.CoreV1().PersistentVolumes().Get(w.ctx, pvName, metav1.GetOptions{})
	require.NoError(w.t, err)
	return pv
}

func (w *world) claimDeletes() []k8stesting.DeleteAction {
	var out []k8stesting.DeleteAction
	for _, a := range w.client.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && a.GetResource().Resource == "persistentvolumeclaims" {
			out = append(out, d)
		}
	}
	return out
}

func (w *world) events() string {
	var b strings.Builder
	for {
		select {
		case e := <-w.rec.Events:
			b.WriteString(e + "\n")
		default:
			return b.String()
		}
	}
}

// recordOwner runs a sync with the pod Running and its store Up, so the
// store is recorded for the claim, then removes the pod (scale-in).
func (w *world) recordOwner() {
	w.t.Helper()
	require.NoError(w.t, w.sync())
	pv := w.pv()
	require.Equal(w.t, "7", pv.Annotations[provisioner.AnnStoreID])
	require.Equal(w.t, "pvc-uid", pv.Annotations[provisioner.AnnOwnerClaim])
}

func (w *world) removePod() {
	require.NoError(w.t, w.client.CoreV1().Pods(ns).Delete(w.ctx, podN, metav1.DeleteOptions{}))
	require.Eventually(w.t, func() bool { _, err := w.c.podLister.Pods(ns).Get(podN); return err != nil }, 5*time.Second, time.Millisecond)
}

func TestSync_RecordsTheOwnerOnThePV(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	pv := w.pv()
	require.Equal(t, "tikv", pv.Labels[provisioner.LabelComponent])
	require.Equal(t, "demo", pv.Labels[provisioner.LabelCluster])
	require.Equal(t, ns+"/"+podN, pv.Annotations[provisioner.AnnOwnerPod])
	require.Equal(t, "Up", pv.Annotations[provisioner.AnnOwnerState])
	require.Empty(t, w.claimDeletes())

	// A second pass writes nothing.
	before := len(w.client.Actions())
	require.NoError(t, w.sync())
	for _, a := range w.client.Actions()[before:] {
		require.NotEqual(t, "patch", a.GetVerb(), "idempotent: %v", a)
	}
}

func TestSync_TombstoneWithoutPodReleasesTheClaimWithAUIDPrecondition(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())

	dels := w.claimDeletes()
	require.Len(t, dels, 1)
	require.Equal(t, pvcName, dels[0].GetName())
	require.Equal(t, types.UID("pvc-uid"), *dels[0].GetDeleteOptions().Preconditions.UID)
	pv := w.pv()
	require.Equal(t, corev1.PersistentVolumeReclaimDelete, pv.Spec.PersistentVolumeReclaimPolicy, "Retain is turned into Delete")
	require.Equal(t, "pvc-uid", pv.Annotations[provisioner.AnnReleaseApproved])
	require.Contains(t, w.events(), ReasonReleased)
}

func TestSync_StoreUpKeepsTheClaimEvenWithoutAPod(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
}

func TestSync_PDDownOrGarbageDestroysNothingAndSaysWhy(t *testing.T) {
	for name, perr := range map[string]error{
		"down":    errors.New("dial tcp: connection refused"),
		"garbage": pd.ErrInvalidResponse,
	} {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, tikvObjects(true)...)
			w.recordOwner()
			w.removePod()
			w.pd.set(7, "Tombstone")
			w.pd.err = perr
			require.NoError(t, w.sync())
			require.Empty(t, w.claimDeletes())
			require.Contains(t, w.events(), ReasonRefused)
			require.Equal(t, "Up", w.pv().Annotations[provisioner.AnnOwnerState], "the record keeps the last state PD showed")

			w.pd.err = nil // PD is back: recovery needs no human
			require.NoError(t, w.sync())
			require.Len(t, w.claimDeletes(), 1)
		})
	}
}

func TestSync_ClaimRecreatedUnderTheSameNameIsNotDeleted(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	// Between the (cached) decision and the action the claim is deleted and
	// recreated with the same name: the fresh read sees a new UID.
	w.client.PrependReactor("get", "persistentvolumeclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pvc := tikvObjects(false)[1].(*corev1.PersistentVolumeClaim).DeepCopy()
		pvc.UID = "a-new-claim"
		return true, pvc, nil
	})
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
}

func TestSync_APodOutsideTheCacheStillMountingTheClaimStopsTheRelease(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	// A debugging pod without TiDB labels (so not cached) mounts the claim.
	debug := tikvPod("debug-uid", true)
	debug.Name, debug.Labels, debug.OwnerReferences = "debug", nil, nil
	_, err := w.client.CoreV1().Pods(ns).Create(w.ctx, debug, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
}

func TestSync_LeaseLostMidActionStopsBeforeTheClaimIsDeleted(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	// The lease is lost right as the PV is stamped released, before the
	// claim is deleted.
	w.client.PrependReactor("patch", "persistentvolumes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if strings.Contains(string(a.(k8stesting.PatchAction).GetPatch()), provisioner.AnnReleaseApproved) {
			w.cancel()
		}
		return false, nil, nil
	})
	err := w.sync()
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, w.claimDeletes())
}

func TestSync_ClaimAlreadyDeletedByTheOperatorIsNotAnError(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	w.client.PrependReactor("delete", "persistentvolumeclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apiNotFound(a)
	})
	require.NoError(t, w.sync())
}

func TestSync_ReadyPodOnATombstoneStoreWaitsThenAStuckOneIsRecreated(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes(), "a Ready pod is TiDB Operator's to scale away")

	// The pod restarts on the buried store's data and never becomes Ready.
	_, err := w.client.CoreV1().Pods(ns).UpdateStatus(w.ctx, tikvPod("pod-uid", false), metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		p, err := w.c.podLister.Pods(ns).Get(podN)
		return err == nil && p.Status.Conditions[0].Status == corev1.ConditionFalse
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
	var podDeleted bool
	for _, a := range w.client.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && a.GetResource().Resource == "pods" && d.GetName() == podN {
			podDeleted = true
			require.Equal(t, types.UID("pod-uid"), *d.GetDeleteOptions().Preconditions.UID)
		}
	}
	require.True(t, podDeleted)
}

func TestSync_DeadNodeOfflinesTheStoreThenReleasesClaimAndPod(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool { _, err := w.c.nodeLister.Get("node-a"); return err != nil }, 5*time.Second, time.Millisecond)

	// Store still Up: PD may not have noticed its silence yet; once that
	// would have shown, the node object lies; nothing happens either way.
	require.NoError(t, w.sync())
	w.clock.Step(2 * time.Minute)
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes)
	require.NotContains(t, w.events(), "Up in PD", "the node has just died by the rules: PD notices silence after 20 s")
	w.clock.Step(StoreSilenceGrace)
	require.NoError(t, w.sync())
	require.Contains(t, w.events(), "Up in PD")

	// Store stops heartbeating: offlined once; PD refusing is asked again
	// and reported once while it stands, never forced.
	w.pd.set(7, "Disconnected")
	w.pd.deleteErr = &pd.RefusedError{Status: 400, Message: "not enough stores"}
	require.NoError(t, w.sync())
	require.NoError(t, w.sync())
	ev := w.events()
	require.Equal(t, 2, strings.Count(ev, ReasonPDRefused), "one report, on the PV and on the node: %s", ev)
	w.pd.deleteErr = nil
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7, 7, 7}, w.pd.deletes)
	require.NoError(t, w.sync()) // Offline now: waits, does not ask again
	require.Len(t, w.pd.deletes, 3)

	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
}

func TestSync_StoreUpOnADeletedNodeIsNeverOfflined(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool { _, err := w.c.nodeLister.Get("node-a"); return err != nil }, 5*time.Second, time.Millisecond)
	require.NoError(t, w.sync())
	w.clock.Step(time.Hour)
	// The cache says Down, but PD, asked afresh right before acting, says Up.
	w.pd.set(7, "Down")
	w.pd.mu.Lock()
	orig := w.pd.stores[7]
	w.pd.mu.Unlock()
	w.client.PrependReactor("get", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		w.pd.set(7, "Up")
		return false, nil, nil
	})
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes, "store was %s in the cache but Up when re-checked", orig.StateName)
}

func TestSync_ReleasedClaimOfALiveStoreIsNotApproved(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	// Someone deletes the claim by hand while store 7 is Up.
	pv := w.pv()
	pv.Status.Phase = corev1.VolumeReleased
	_, err := w.client.CoreV1().PersistentVolumes().UpdateStatus(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.sync())
	require.Empty(t, w.pv().Annotations[provisioner.AnnReleaseApproved])
	require.Contains(t, w.events(), "keeps its data")

	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Equal(t, "pvc-uid", w.pv().Annotations[provisioner.AnnReleaseApproved])
}

func apiNotFound(a k8stesting.Action) error {
	return &notFound{a.GetResource().Resource}
}

type notFound struct{ res string }

func (n *notFound) Error() string { return n.res + " not found" }
func (n *notFound) Status() metav1.Status {
	return metav1.Status{Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: 404}
}

func TestSync_DeadNodesFreePVIsDeletedUnlessTheNodeComesBackBeforeTheAction(t *testing.T) {
	for _, comesBack := range []bool{false, true} {
		t.Run(map[bool]string{false: "node stays gone", true: "node returns between decision and action"}[comesBack], func(t *testing.T) {
			objs := tikvObjects(false)
			pv := objs[0].(*corev1.PersistentVolume)
			pv.Spec.ClaimRef = nil
			pv.Status.Phase = corev1.VolumeAvailable
			w := newWorld(t, pv, objs[2]) // the PV and node-a, no claim
			require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
			require.Eventually(t, func() bool { _, err := w.c.nodeLister.Get("node-a"); return err != nil }, 5*time.Second, time.Millisecond)
			require.NoError(t, w.sync()) // grace starts
			w.clock.Step(30 * time.Second)
			require.NoError(t, w.sync())
			require.NotNil(t, w.pv(), "within the grace period the PV stays")

			w.clock.Step(time.Minute)
			if comesBack {
				w.client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, objs[2].DeepCopyObject(), nil
				})
			}
			require.NoError(t, w.sync())
			var deletes []k8stesting.DeleteAction
			for _, a := range w.client.Actions() {
				if d, ok := a.(k8stesting.DeleteAction); ok && a.GetResource().Resource == "persistentvolumes" {
					deletes = append(deletes, d)
				}
			}
			if comesBack {
				require.Empty(t, deletes)
				return
			}
			require.Len(t, deletes, 1)
			pre := deletes[0].GetDeleteOptions().Preconditions
			require.Equal(t, types.UID("pv-uid"), *pre.UID)
			require.NotNil(t, pre.ResourceVersion)
		})
	}
}

// markClaimDeleting makes the claim look as it does right after a release:
// deleted, held by the pvc-protection finalizer.
func (w *world) markClaimDeleting(at time.Time) {
	pvc, err := w.client.CoreV1().PersistentVolumeClaims(ns).Get(w.ctx, pvcName, metav1.GetOptions{})
	require.NoError(w.t, err)
	pvc.DeletionTimestamp = ptr.To(metav1.NewTime(at))
	pvc.Finalizers = []string{"kubernetes.io/pvc-protection"}
	_, err = w.client.CoreV1().PersistentVolumeClaims(ns).Update(w.ctx, pvc, metav1.UpdateOptions{})
	require.NoError(w.t, err)
}

func TestSync_AClaimAlreadyBeingDeletedIsNotReleasedTwice(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	w.markClaimDeleting(w.clock.Now())
	before := w.c.metrics.refusals.WithLabelValues("recheck")
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes(), "the claim was released already")
	require.NotContains(t, w.events(), ReasonReleased)
	require.Zero(t, testutilValue(before), "an action already done is not a refusal")
}

func TestSync_ReleasedClaimOnADeadNode_DeletesOnlyThePodThatHoldsIt(t *testing.T) {
	for _, c := range []struct {
		name       string
		podIsOlder bool
	}{{"the stuck pod that holds the claim is deleted", true}, {"the StatefulSet's replacement is left alone", false}} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, tikvObjects(true)...)
			w.recordOwner()
			require.NoError(t, w.client.CoreV1().Nodes().Delete(w.ctx, "node-a", metav1.DeleteOptions{}))
			require.Eventually(t, func() bool { _, err := w.c.nodeLister.Get("node-a"); return err != nil }, 5*time.Second, time.Millisecond)
			require.NoError(t, w.sync())
			w.clock.Step(2 * time.Minute)
			w.pd.set(7, "Tombstone")
			// TiDB Operator (or an earlier pass) deleted the claim; the pod was
			// created before (it holds the claim) or after (a replacement).
			deletedAt := time.Now().Add(-time.Minute)
			pod, err := w.client.CoreV1().Pods(ns).Get(w.ctx, podN, metav1.GetOptions{})
			require.NoError(t, err)
			pod.CreationTimestamp = metav1.NewTime(deletedAt.Add(-time.Minute))
			if !c.podIsOlder {
				pod.CreationTimestamp = metav1.NewTime(deletedAt.Add(30 * time.Second))
			}
			_, err = w.client.CoreV1().Pods(ns).Update(w.ctx, pod, metav1.UpdateOptions{})
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				p, err := w.c.podLister.Pods(ns).Get(podN)
				return err == nil && p.CreationTimestamp.Equal(&pod.CreationTimestamp)
			}, 5*time.Second, time.Millisecond)
			w.markClaimDeleting(deletedAt)
			require.NoError(t, w.sync())
			require.Empty(t, w.claimDeletes())
			var podDeletes int
			for _, a := range w.client.Actions() {
				if a.GetVerb() == "delete" && a.GetResource().Resource == "pods" {
					podDeletes++
				}
			}
			if c.podIsOlder {
				require.Equal(t, 1, podDeletes)
			} else {
				require.Zero(t, podDeletes)
			}
		})
	}
}

func testutilValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
