package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

const (
	testNode     = "node-a"
	testHostname = "node-a.example.com" // differs from the node name on purpose
	testClass    = "tidb-localpv-tikv"
	invNamespace = "tidb-localpv"
	invName      = "tidb-localpv-inventory"
	testCapacity = int64(10 << 30)

	// eventuallyWait and eventuallyTick bound the waits for background wipes.
	eventuallyWait = 10 * time.Second
	eventuallyTick = 10 * time.Millisecond
)

// fakeMountTable is a mount table the test edits: temp directories listed
// as mount points stand for disks.
type fakeMountTable struct {
	mu     sync.Mutex
	mounts []discovery.Mount
}

func (f *fakeMountTable) Mounts() ([]discovery.Mount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mounts), nil
}

func (f *fakeMountTable) add(path, source, fsType string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts = append(f.mounts, discovery.Mount{MountPoint: path, Source: source, FSType: fsType, Root: "/"})
}

func (f *fakeMountTable) remove(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts = slices.DeleteFunc(f.mounts, func(m discovery.Mount) bool { return m.MountPoint == path })
}

type fakeSizer struct{}

func (fakeSizer) FilesystemSize(string) (int64, error)  { return testCapacity, nil }
func (fakeSizer) BlockDeviceSize(string) (int64, error) { return 2 * testCapacity, nil }

// recordedEvent is one event with the object it is about; record's
// FakeRecorder keeps only a string, which cannot tell an event on the
// inventory ConfigMap from one on a PV.
type recordedEvent struct {
	Object  runtime.Object
	Type    string
	Reason  string
	Message string
}

type eventLog struct {
	mu     sync.Mutex
	events []recordedEvent
}

var _ record.EventRecorder = (*eventLog)(nil)

func (l *eventLog) Event(obj runtime.Object, typ, reason, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, recordedEvent{Object: obj, Type: typ, Reason: reason, Message: msg})
}

func (l *eventLog) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	l.Event(obj, typ, reason, fmt.Sprintf(format, args...))
}

func (l *eventLog) AnnotatedEventf(obj runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	l.Eventf(obj, typ, reason, format, args...)
}

func (l *eventLog) withReason(reason string) []recordedEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []recordedEvent
	for _, e := range l.events {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func (l *eventLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// harness is an Agent built by New against a fake clientset, with its
// listers fed from the fake API's state (sample-controller style) so each
// test decides when the "informers" catch up.
type harness struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	agent  *Agent
	events *eventLog
	reg    *prometheus.Registry
	mounts *fakeMountTable // nil when the real mount table is used
	root   string          // the tidb-localpv-tikv class's discovery directory

	pvs, classes, configMaps, nodes cache.Indexer
}

type harnessConfig struct {
	// base holds the discovery directory and state; default t.TempDir().
	base    string
	objects []runtime.Object
	// noDefaults leaves out the Node and the StorageClass.
	noDefaults bool
	// realMounts reads /proc/self/mountinfo instead of a fake table.
	realMounts bool
	fsWipe     provisioner.FSWipeMode
	blockWipe  []string
}

func newHarness(t *testing.T, hc harnessConfig) *harness {
	t.Helper()
	if hc.base == "" {
		hc.base = t.TempDir()
	}
	if hc.fsWipe == "" {
		hc.fsWipe = provisioner.FSWipeAuto
	}
	root := filepath.Join(hc.base, "tikv")
	require.NoError(t, os.MkdirAll(root, 0o755))

	objs := hc.objects
	if !hc.noDefaults {
		objs = append([]runtime.Object{testNodeObject(), testStorageClass(nil)}, objs...)
	}
	client := fake.NewClientset(objs...)
	h := &harness{t: t, ctx: context.Background(), client: client, events: &eventLog{}, reg: prometheus.NewRegistry(), root: root}

	var mt discovery.MountTable = discovery.ProcMountTable{}
	if !hc.realMounts {
		h.mounts = &fakeMountTable{}
		mt = h.mounts
	}
	ex := utilexec.New()
	cfg := Config{
		NodeName:           testNode,
		Roots:              discovery.Roots{{Class: testClass, Dir: root}},
		InventoryNamespace: invNamespace,
		InventoryName:      invName,
		StateDir:           filepath.Join(hc.base, "state"),
		FSWipe:             hc.fsWipe,
		BlockWipeCommand:   hc.blockWipe,
		DevDir:             "/dev",
		ByIDDir:            "/dev/disk/by-id",
		SysBlockDir:        "/sys/class/block",
	}
	deps := Deps{
		Client:   client,
		Mounts:   mt,
		Mounter:  &mount.SafeFormatAndMount{Interface: mount.NewWithoutSystemd(""), Exec: ex},
		Exec:     ex,
		Sizer:    fakeSizer{},
		Registry: h.reg,
	}
	if hc.realMounts {
		deps.Sizer = discovery.OSSizer{}
	}
	a, err := New(cfg, deps)
	require.NoError(t, err)
	t.Cleanup(a.queue.ShutDown)
	// A test may end while an orphan wipe it started still runs; let it
	// finish before the temp dirs go.
	t.Cleanup(func() {
		require.Eventually(t, func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return len(a.busy) == 0
		}, eventuallyWait, eventuallyTick, "a wipe was still running when the test ended")
	})

	newIndexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	h.pvs, h.classes, h.configMaps, h.nodes = newIndexer(), newIndexer(), newIndexer(), newIndexer()
	a.pvLister = corelisters.NewPersistentVolumeLister(h.pvs)
	a.scLister = storagelisters.NewStorageClassLister(h.classes)
	a.cmLister = corelisters.NewConfigMapLister(h.configMaps)
	a.nodeList = corelisters.NewNodeLister(h.nodes)
	a.recorder = h.events
	a.events = newReporter(h.events)
	h.agent = a
	return h
}

func testNodeObject() *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: testNode, UID: "node-uid",
		Labels: map[string]string{provisioner.LabelHostname: testHostname},
	}}
}

func testStorageClass(reclaim *corev1.PersistentVolumeReclaimPolicy) *storagev1.StorageClass {
	mode := storagev1.VolumeBindingWaitForFirstConsumer
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: testClass},
		Provisioner:       "kubernetes.io/no-provisioner",
		ReclaimPolicy:     reclaim,
		VolumeBindingMode: &mode,
	}
}

func inventory(doc string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: invNamespace, Name: invName, UID: "cm-uid"},
		Data:       map[string]string{discovery.InventoryKey: doc},
	}
}

var (
	pvResource = corev1.SchemeGroupVersion.WithResource("persistentvolumes")
	pvKind     = corev1.SchemeGroupVersion.WithKind("PersistentVolume")
)

// sync makes the listers show what the fake API holds, as informers would
// once caught up. PVs are filtered by the node label like the agent's
// informer.
func (h *harness) sync() {
	h.t.Helper()
	replace := func(idx cache.Indexer, gvr schema.GroupVersionResource, gvk schema.GroupVersionKind, keep func(runtime.Object) bool) {
		list, err := h.client.Tracker().List(gvr, gvk, "")
		require.NoError(h.t, err)
		items, err := meta.ExtractList(list)
		require.NoError(h.t, err)
		var objs []any
		for _, o := range items {
			if keep == nil || keep(o) {
				objs = append(objs, o)
			}
		}
		require.NoError(h.t, idx.Replace(objs, ""))
	}
	replace(h.pvs, pvResource, pvKind, func(o runtime.Object) bool {
		return o.(*corev1.PersistentVolume).Labels[provisioner.LabelNode] == testNode
	})
	replace(h.classes, storagev1.SchemeGroupVersion.WithResource("storageclasses"), storagev1.SchemeGroupVersion.WithKind("StorageClass"), nil)
	replace(h.configMaps, corev1.SchemeGroupVersion.WithResource("configmaps"), corev1.SchemeGroupVersion.WithKind("ConfigMap"), nil)
	replace(h.nodes, corev1.SchemeGroupVersion.WithResource("nodes"), corev1.SchemeGroupVersion.WithKind("Node"), nil)
}

// reconcile runs one pass after the caches caught up.
func (h *harness) reconcile() error {
	h.t.Helper()
	h.sync()
	return h.agent.reconcile(h.ctx)
}

func (h *harness) mustReconcile() {
	h.t.Helper()
	require.NoError(h.t, h.reconcile())
}

// writes lists the API writes made since the last ClearActions.
func (h *harness) writes() []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range h.client.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete", "deletecollection", "apply":
			out = append(out, a)
		}
	}
	return out
}

func (h *harness) createActions() []k8stesting.CreateAction {
	var out []k8stesting.CreateAction
	for _, a := range h.writes() {
		if c, ok := a.(k8stesting.CreateAction); ok && a.GetVerb() == "create" && a.GetResource() == pvResource {
			out = append(out, c)
		}
	}
	return out
}

// apiPVs lists the PVs the fake API holds, by name.
func (h *harness) apiPVs() map[string]*corev1.PersistentVolume {
	h.t.Helper()
	list, err := h.client.Tracker().List(pvResource, pvKind, "")
	require.NoError(h.t, err)
	out := map[string]*corev1.PersistentVolume{}
	for _, pv := range list.(*corev1.PersistentVolumeList).Items {
		out[pv.Name] = pv.DeepCopy()
	}
	return out
}

func (h *harness) apiPV(name string) *corev1.PersistentVolume {
	h.t.Helper()
	pv, ok := h.apiPVs()[name]
	require.True(h.t, ok, "PV %s not in the API", name)
	return pv
}

// updatePV and deletePV change the fake API as another actor would (the PV
// binder, an operator), without recording an action of the agent's.
func (h *harness) updatePV(pv *corev1.PersistentVolume) {
	h.t.Helper()
	require.NoError(h.t, h.client.Tracker().Update(pvResource, pv, ""))
}

func (h *harness) deletePV(name string) {
	h.t.Helper()
	require.NoError(h.t, h.client.Tracker().Delete(pvResource, "", name))
}

// gauge reads an unlabelled gauge from the agent's registry.
func (h *harness) gauge(name string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(h.t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			require.Len(h.t, mf.GetMetric(), 1)
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	h.t.Fatalf("no metric %s", name)
	return 0
}

// newDisk makes a directory under the class root and lists it as a mount
// point; the directory is the disk.
func (h *harness) newDisk(name string) string {
	h.t.Helper()
	require.NotNil(h.t, h.mounts, "newDisk needs the fake mount table")
	p := filepath.Join(h.root, name)
	require.NoError(h.t, os.MkdirAll(p, 0o755))
	h.mounts.add(p, "tmpfs", "tmpfs")
	return p
}

func (h *harness) marker(path string) discovery.Marker {
	h.t.Helper()
	m, ok, err := discovery.ReadMarker(path)
	require.NoError(h.t, err)
	require.True(h.t, ok, "no marker in %s", path)
	return m
}

func writeMarker(t *testing.T, path, id string, state discovery.State) {
	t.Helper()
	require.NoError(t, discovery.WriteMarker(path, discovery.Marker{ID: id, State: state}))
}

func writeFile(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte("user data"), 0o644))
}

// ourPV is a PV as the agent would have published it for the disk at path.
func ourPV(t *testing.T, path, id string, phase corev1.PersistentVolumePhase) *corev1.PersistentVolume {
	t.Helper()
	d := discovery.Disk{Class: testClass, Name: filepath.Base(path), Path: path, Mode: corev1.PersistentVolumeFilesystem, Capacity: testCapacity}
	pv, err := provisioner.RenderPV(d, provisioner.Identity{ID: id}, provisioner.Node{Name: testNode, Hostname: testHostname}, testStorageClass(nil))
	require.NoError(t, err)
	pv.UID = types.UID("uid-" + id)
	pv.ResourceVersion = "5"
	pv.Status.Phase = phase
	if phase == corev1.VolumeBound || phase == corev1.VolumeReleased {
		pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "tikv-db-tikv-0", UID: "claim-uid"}
	}
	return pv
}

// requirePublished checks the PV the agent made for a disk against the
// contract of DESIGN rule 4.
func requirePublished(t *testing.T, pv *corev1.PersistentVolume, path, id string) {
	t.Helper()
	require.Equal(t, provisioner.PVName(testNode, filepath.Base(path), id), pv.Name)
	require.Equal(t, map[string]string{
		provisioner.LabelHostname: testHostname,
		provisioner.LabelNode:     testNode,
		provisioner.LabelDisk:     id,
	}, pv.Labels)
	require.Equal(t, provisioner.Name, pv.Annotations[provisioner.AnnProvisionedBy])
	require.Equal(t, path, pv.Spec.Local.Path)
	require.Equal(t, testClass, pv.Spec.StorageClassName)
	require.Equal(t, corev1.PersistentVolumeReclaimDelete, pv.Spec.PersistentVolumeReclaimPolicy)
	require.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, pv.Spec.AccessModes)
	require.Equal(t, corev1.PersistentVolumeFilesystem, *pv.Spec.VolumeMode)
	require.Equal(t, []string{testHostname}, pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values)
	require.Equal(t, provisioner.LabelHostname, pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Key)
}
