package model

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Names of the simulated cluster.
const (
	namespace  = "tidb"
	cluster    = "demo"
	classTiKV  = "tikv-ssd"
	classPD    = "pd-ssd"
	compTiKV   = "tikv"
	compPD     = "pd"
	compWeb    = "web"
	pdEndpoint = "http://demo-pd.tidb:2379"

	labelComponent = "app.kubernetes.io/component"
	labelInstance  = "app.kubernetes.io/instance"
	labelStoreID   = "tidb.pingcap.com/store-id"
)

// Config shapes one history.
type Config struct {
	Seed  uint64
	Steps int
	// Dir holds the nodes' disks and state directories.
	Dir string
	// FullHistory returns the whole history, not only a failure's.
	FullHistory bool
}

// Policy is the controller's, with the shipped defaults.
var modelPolicy = volumecontroller.Policy{
	DeadNodeGrace:   60 * time.Second,
	StuckPodGrace:   3 * time.Minute,
	UnresolvedGrace: 5 * time.Minute,
}

const (
	pollInterval = 5 * time.Second
	resyncPeriod = time.Minute
	// podGCAfter: the pod garbage collector deletes pods of a node whose
	// object is gone after this quarantine.
	podGCAfter = 40 * time.Second
	// nodeMonitorGrace: a node that stopped reporting is marked NotReady.
	nodeMonitorGrace = 40 * time.Second
	// evictAfter: pods of a NotReady node are evicted (not-ready taint's
	// default toleration).
	evictAfter = 5 * time.Minute
	// keep is how many steps old a cache may be.
	keep = 6
)

// node is a simulated machine.
type node struct {
	name     string
	base     string
	alive    bool
	diedAt   time.Time
	stateDir string
	mounts   *mountTable
	disks    []*disk
	agent    *agentInstance
	// Truth about the Node object, for the dead-node rules: when it was
	// last deleted (zero while it exists) and since when it has been
	// NotReady (zero while Ready).
	objectGoneAt  time.Time
	notReadySince time.Time
}

// disk is a directory standing for a mounted disk.
type disk struct {
	node  *node
	class string
	name  string
	path  string
	id    string
	// data is the ground truth: what the simulated processes wrote.
	data []*datum
	// marker state last seen, to see wipes start.
	markerState discovery.State
	// unnamedSince is when the last PV naming the disk went (zero while
	// one does).
	unnamedSince time.Time
	// abandonedPV is the UID of a PV of the disk that a person deleted or
	// that TiDB Operator set to reclaimPolicy Delete: data written while
	// it exists is given up by its operator.
	abandonedPV string
}

// datum is data a process keeps on a disk: a real file named after its owner.
type datum struct {
	kind    string // tikv, pd, web
	cluster uint64
	id      uint64 // store ID, member ID; 0 for web
	claim   string // web: the claim UID the data belongs to
	file    string
	written int
	// recorded: the controller recorded this owner on a PV of the disk.
	recorded bool
	// abandoned: its operator gave the disk up (kubectl delete pv, or
	// TiDB Operator's reclaimPolicy Delete) while this data was on it.
	abandoned bool
}

func (d *datum) String() string {
	switch d.kind {
	case compTiKV:
		return fmt.Sprintf("store %d (cluster %d)", d.id, d.cluster)
	case compPD:
		return fmt.Sprintf("PD member %d (cluster %d)", d.id, d.cluster)
	}
	return "data of claim " + d.claim
}

// mountTable is one node's mount table.
type mountTable struct {
	mu     sync.Mutex
	mounts []discovery.Mount
}

func (m *mountTable) Mounts() ([]discovery.Mount, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.mounts), nil
}

// set is a StatefulSet (TiKV, PD, or a plain one).
type set struct {
	name     string // demo-tikv
	comp     string
	class    string
	volume   string // claim prefix: tikv, pd, data
	replicas int
	min, max int
	// scaleIn is TiDB Operator's scale-in in progress: the ordinal and the
	// store or member it is removing.
	scaleIn *scaleIn
}

type scaleIn struct {
	ordinal int
	store   uint64
	member  string
}

func (s *set) podName(i int) string   { return fmt.Sprintf("%s-%d", s.name, i) }
func (s *set) claimName(i int) string { return fmt.Sprintf("%s-%s-%d", s.volume, s.name, i) }

// world is one history.
type world struct {
	cfg   Config
	rng   *rand.Rand
	clock *clocktesting.FakeClock
	api   *apiServer
	kube  *fake.Clientset // the model's own actors
	pd    *modelPD
	other *modelPD
	// faultUntil is the step PD's endpoint fault ends at.
	faultUntil int
	nodes      []*node
	disks      []*disk
	sets       []*set
	procs      map[string]*process // by pod UID

	policy volumecontroller.Policy
	ctrls  [2]*ctrlInstance
	leader int // index into ctrls, -1 for none
	// leaderLost is when the last leader lost the lease.
	leaderLost time.Time
	// inDelete: the library's Delete is running (an agent may crash in it).
	inDelete bool
	// done is invariant 3's ledger: destructive action → step.
	done map[string]int

	snaps []snapshot
	seq   int

	hist  *history
	stats *Stats
	fail  *Violation
	step  int
}

// snapshot is the API's state after a step, for caches that lag.
type snapshot struct {
	seq     int
	objects map[schema.GroupVersionResource][]runtime.Object
}

func newWorld(cfg Config, stats *Stats) (*world, error) {
	w := &world{
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		clock:  clocktesting.NewFakeClock(time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC)),
		procs:  map[string]*process{},
		leader: -1,
		done:   map[string]int{},
		policy: modelPolicy,
		hist:   &history{},
		stats:  stats,
	}
	if w.rng.IntN(2) == 0 {
		// The opt-in NotReady rule, in half the histories.
		w.policy.NotReadyThreshold = 5 * time.Minute
	}
	w.api = newAPIServer(w.clock)
	w.kube = w.api.clientset(nil)
	// Cluster IDs exceed 2^53, as real ones do.
	w.pd = newModelPD(w.clock, 7714128303309438000+w.rng.Uint64N(1000))
	w.other = newModelPD(w.clock, 6917529027641081000+w.rng.Uint64N(1000))
	w.pd.other = w.other
	w.seedOtherCluster()

	w.sets = []*set{
		{name: "demo-tikv", comp: compTiKV, class: classTiKV, volume: "tikv", replicas: 4 + w.rng.IntN(2), min: 3, max: 6},
		{name: "demo-pd", comp: compPD, class: classPD, volume: "pd", replicas: 3, min: 1, max: 3},
		{name: "web", comp: compWeb, class: classTiKV, volume: "data", replicas: 1, min: 0, max: 2},
	}
	ctx := context.Background()
	for _, sc := range []string{classTiKV, classPD} {
		retain := corev1.PersistentVolumeReclaimRetain
		mode := storagev1.VolumeBindingWaitForFirstConsumer
		if _, err := w.kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
			ObjectMeta: metav1.ObjectMeta{Name: sc}, Provisioner: "kubernetes.io/no-provisioner",
			ReclaimPolicy: &retain, VolumeBindingMode: &mode,
		}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	for i := range 4 {
		n := &node{name: fmt.Sprintf("node-%d", i+1), alive: true, mounts: &mountTable{}}
		base := filepath.Join(cfg.Dir, n.name)
		n.base = base
		n.stateDir = filepath.Join(base, "state")
		for _, c := range []struct {
			class string
			count int
		}{{classTiKV, 2}, {classPD, 1}} {
			for j := range c.count {
				d := &disk{node: n, class: c.class, name: fmt.Sprintf("disk%d", j)}
				d.path = filepath.Join(base, "mnt", c.class, d.name)
				d.id = fmt.Sprintf("fs-%012x%012x", w.rng.Uint64N(1<<48), w.rng.Uint64N(1<<48))
				if err := os.MkdirAll(d.path, 0o755); err != nil {
					return nil, err
				}
				// A marker with a seeded ID keeps PV names, and so every
				// sorted iteration, the same on a replay.
				if err := discovery.WriteMarker(d.path, discovery.Marker{ID: d.id, State: discovery.StateReady, Created: w.clock.Now()}); err != nil {
					return nil, err
				}
				d.markerState = discovery.StateReady
				d.unnamedSince = w.clock.Now()
				n.mounts.mounts = append(n.mounts.mounts, discovery.Mount{MountPoint: d.path, Source: "tmpfs", FSType: "tmpfs", Root: "/"})
				n.disks = append(n.disks, d)
				w.disks = append(w.disks, d)
			}
		}
		w.nodes = append(w.nodes, n)
		if err := w.createNodeObject(n); err != nil {
			return nil, err
		}
	}
	for i := range w.ctrls {
		c, err := w.newCtrl(fmt.Sprintf("controller-%c", 'a'+i))
		if err != nil {
			return nil, err
		}
		w.ctrls[i] = c
	}
	w.leader = 0
	w.ctrls[0].lead(w)
	for _, n := range w.nodes {
		if err := w.startAgent(n); err != nil {
			return nil, err
		}
	}
	w.snapshot()
	return w, nil
}

// seedOtherCluster gives the PD a wrong endpoint reaches stores of its own,
// in another namespace.
func (w *world) seedOtherCluster() {
	for i := range 4 {
		id, _ := w.other.register(fmt.Sprintf("demo-tikv-%d.demo-tikv-peer.staging.svc:20160", i), w.clock.Now())
		w.other.stores[id].nodeState = pd.NodeServing
	}
	w.other.addMember("demo-pd-0", "staging")
}

func (w *world) close() {
	for _, n := range w.nodes {
		w.stopAgent(n)
	}
	for _, c := range w.ctrls {
		c.stop()
		c.c.ShutDown()
	}
}

func (w *world) createNodeObject(n *node) error {
	_, err := w.kube.CoreV1().Nodes().Create(context.Background(), &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{provisioner.LabelHostname: n.name}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(w.clock.Now()),
		}}},
	}, metav1.CreateOptions{})
	if err == nil {
		n.objectGoneAt, n.notReadySince = time.Time{}, time.Time{}
	}
	return err
}

func (w *world) nodeByName(name string) *node {
	for _, n := range w.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// diskAt finds the disk a PV names: by its node label and path, or by its
// disk ID.
func (w *world) diskOf(pv *corev1.PersistentVolume) *disk {
	for _, d := range w.disks {
		if d.id == pv.Labels[provisioner.LabelDisk] {
			return d
		}
	}
	if pv.Spec.Local == nil {
		return nil
	}
	for _, d := range w.disks {
		if d.path == pv.Spec.Local.Path {
			return d
		}
	}
	return nil
}

// nodeDeadByRules is the design's dead node, from the truth the model
// keeps: the Node object deleted for the grace, or (opt-in) NotReady past
// the threshold.
func (w *world) nodeDeadByRules(n *node) bool {
	now := w.clock.Now()
	if !n.objectGoneAt.IsZero() && now.Sub(n.objectGoneAt) >= modelPolicy.DeadNodeGrace {
		return true
	}
	th := w.policy.NotReadyThreshold
	return th > 0 && !n.notReadySince.IsZero() && now.Sub(n.notReadySince) >= th
}

// list returns the API's objects of a resource, sorted.
func (w *world) list(gvr schema.GroupVersionResource) []runtime.Object {
	gvk := corev1.SchemeGroupVersion.WithKind(kindOf(gvr))
	if gvr.Group == storagev1.GroupName {
		gvk = storagev1.SchemeGroupVersion.WithKind(kindOf(gvr))
	}
	l, err := w.api.List(gvr, gvk, "")
	if err != nil {
		panic(err)
	}
	items, err := meta.ExtractList(l)
	if err != nil {
		panic(err)
	}
	return items
}

var resSC = storagev1.SchemeGroupVersion.WithResource("storageclasses")

func kindOf(gvr schema.GroupVersionResource) string {
	switch gvr {
	case resPV:
		return "PersistentVolume"
	case resPVC:
		return "PersistentVolumeClaim"
	case resPod:
		return "Pod"
	case resNode:
		return "Node"
	case resSC:
		return "StorageClass"
	}
	panic(gvr.String())
}

func (w *world) pvs() []*corev1.PersistentVolume {
	var out []*corev1.PersistentVolume
	for _, o := range w.list(resPV) {
		out = append(out, o.(*corev1.PersistentVolume))
	}
	return out
}

func (w *world) claims() []*corev1.PersistentVolumeClaim {
	var out []*corev1.PersistentVolumeClaim
	for _, o := range w.list(resPVC) {
		out = append(out, o.(*corev1.PersistentVolumeClaim))
	}
	return out
}

func (w *world) pods() []*corev1.Pod {
	var out []*corev1.Pod
	for _, o := range w.list(resPod) {
		out = append(out, o.(*corev1.Pod))
	}
	return out
}

func (w *world) getPV(name string) *corev1.PersistentVolume {
	o, err := w.api.Get(resPV, "", name)
	if err != nil {
		return nil
	}
	return o.(*corev1.PersistentVolume)
}

func (w *world) getClaim(name string) *corev1.PersistentVolumeClaim {
	o, err := w.api.Get(resPVC, namespace, name)
	if err != nil {
		return nil
	}
	return o.(*corev1.PersistentVolumeClaim)
}

func (w *world) getPod(name string) *corev1.Pod {
	o, err := w.api.Get(resPod, namespace, name)
	if err != nil {
		return nil
	}
	return o.(*corev1.Pod)
}

func (w *world) getNode(name string) *corev1.Node {
	o, err := w.api.Get(resNode, "", name)
	if err != nil {
		return nil
	}
	return o.(*corev1.Node)
}

// snapshot keeps the API's state after a step for lagging caches.
func (w *world) snapshot() {
	w.seq++
	s := snapshot{seq: w.seq, objects: map[schema.GroupVersionResource][]runtime.Object{}}
	for _, gvr := range []schema.GroupVersionResource{resPV, resPVC, resPod, resNode, resSC} {
		s.objects[gvr] = w.list(gvr)
	}
	w.snaps = append(w.snaps, s)
	if len(w.snaps) > keep {
		w.snaps = w.snaps[1:]
	}
}

// views picks what a cache shows of a resource: usually the latest state,
// sometimes one a few steps old — never older than what it showed before
// (an informer does not go back in time). It returns every state from the
// one after the last shown up to the chosen one, in order: a watch
// delivers each change, and handlers must see a node that came back and
// went again.
func (w *world) views(gvr schema.GroupVersionResource, last map[schema.GroupVersionResource]int) [][]runtime.Object {
	i := len(w.snaps) - 1
	if w.rng.IntN(4) == 0 {
		i = w.rng.IntN(len(w.snaps))
	}
	for i < len(w.snaps)-1 && w.snaps[i].seq < last[gvr] {
		i++
	}
	var out [][]runtime.Object
	for j := 0; j <= i; j++ {
		if w.snaps[j].seq > last[gvr] || (j == i && w.snaps[j].seq == last[gvr]) {
			out = append(out, w.snaps[j].objects[gvr])
		}
	}
	last[gvr] = w.snaps[i].seq
	return out
}

func (w *world) logf(format string, args ...any) {
	w.hist.add(fmt.Sprintf(format, args...))
}

// pick returns a random element.
func pick[T any](w *world, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[w.rng.IntN(len(xs))], true
}
