package sim

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// TiDB Operator v2 (core.pingcap.com/v1alpha1), as far as tidb-localpv
// meets it: no StatefulSets; one TiKV instance object per store, whose pod
// and claim it creates directly and owns; the pod named
// <group>-tikv-<suffix> for instance <group>-<suffix>, the claim
// <volume>-<pod>, both labelled with v2's pingcap.com/* set and the v1
// app.kubernetes.io/* set; the store advertised as
// <pod>.<group>-tikv-peer.<namespace>:20160. An instance being deleted (or
// marked spec.offline) has its store deleted in PD; once PD reports the
// store Removed (or no longer lists it) the operator deletes the pod and
// the claims and drops its finalizer. Scale-in marks one instance offline
// and deletes it once its store is Removed. There is no failover: a dead
// node's instance stays until someone deletes it.
const (
	V2Group      = "core.pingcap.com"
	V2APIVersion = V2Group + "/v1alpha1"
	// V2Finalizer is the single finalizer v2 puts on everything it manages.
	V2Finalizer = "pingcap.com/finalizer"

	LabelV2ManagedBy = "pingcap.com/managed-by"
	LabelV2Component = "pingcap.com/component"
	LabelV2Cluster   = "pingcap.com/cluster"
	LabelV2Group     = "pingcap.com/group"
	LabelV2Instance  = "pingcap.com/instance"
	labelV2Revision  = "pingcap.com/instance-revision-hash"
	labelV2Volume    = "pingcap.com/volume-name"
	labelClusterID   = "tidb.pingcap.com/cluster-id"
	// LabelStoreID is the legacy label v2 still puts on TiKV pods and
	// claims once the store exists.
	LabelStoreID = "tidb.pingcap.com/store-id"

	v2ManagedBy  = "tidb-operator"
	v2DataVolume = "data"
	v2Revision   = "5d8b9c7f6"
)

// GVRs of v2's objects.
var (
	V2Clusters   = schema.GroupVersionResource{Group: V2Group, Version: "v1alpha1", Resource: "clusters"}
	V2PDGroups   = schema.GroupVersionResource{Group: V2Group, Version: "v1alpha1", Resource: "pdgroups"}
	V2TiKVGroups = schema.GroupVersionResource{Group: V2Group, Version: "v1alpha1", Resource: "tikvgroups"}
	V2TiKVs      = schema.GroupVersionResource{Group: V2Group, Version: "v1alpha1", Resource: "tikvs"}
)

//go:embed testdata/tidb-operator-v2-crds.yaml
var v2CRDs []byte

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// V2Options describe one TiDB Operator v2 cluster.
type V2Options struct {
	Namespace string
	// Cluster is the Cluster object's name; TiKVGroup and PDGroup default
	// to it (pods basic-tikv-xxxxxx, PD Service basic-pd).
	Cluster, TiKVGroup, PDGroup string
	Replicas                    int
	// StorageClass of the TiKV data volume (default tikv-ssd).
	StorageClass string
	PD           pdsim.Options
	// PDListen is the simulator's listen address ("" picks a free
	// loopback port).
	PDListen string
	// StatusPD is what the operator writes into the Cluster's status.pd;
	// "" writes the simulator's URL.
	StatusPD string
	// Resync is how often the operator reconciles (default 100 ms).
	Resync time.Duration
}

// V2 plays TiDB Operator v2 for one cluster and TiKV's part against the
// cluster's own PD simulator. Close stops both.
type V2 struct {
	Sim  *pdsim.Server
	URL  string
	Opts V2Options

	env      *Env
	dyn      dynamic.Interface
	pdc      *pd.Client
	progress io.Writer
	cancel   context.CancelFunc
	done     chan struct{}

	mu        sync.Mutex
	stores    map[string]uint64 // pod name → store ID
	deleted   map[string]int    // instance name → deletions the operator made
	lastError string
	retryAt   map[string]time.Time // instance → next DELETE after a refusal
}

// InstallV2CRDs creates the v2 CRDs (idempotent) and waits until they are
// served.
func (e *Env) InstallV2CRDs(ctx context.Context) error {
	dyn, err := dynamic.NewForConfig(e.Cluster.RESTConfig())
	if err != nil {
		return err
	}
	var names []string
	for _, doc := range strings.Split(string(v2CRDs), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return fmt.Errorf("v2 CRDs: %w", err)
		}
		u := &unstructured.Unstructured{Object: obj}
		names = append(names, u.GetName())
		if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", u.GetName(), err)
		}
	}
	for _, name := range names {
		if err := pollUntil(ctx, 30*time.Second, func() (bool, error) {
			u, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return fmt.Errorf("CRD %s never established: %w", name, err)
		}
	}
	return nil
}

func pollUntil(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := f()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StartV2 installs the CRDs, starts the cluster's PD simulator, creates the
// namespace, the Cluster, its PDGroup and TiKVGroup, and runs the operator
// until Close. The TiKV instances are created by the operator's first
// reconciles.
func (e *Env) StartV2(ctx context.Context, opts V2Options) (_ *V2, err error) {
	if opts.TiKVGroup == "" {
		opts.TiKVGroup = opts.Cluster
	}
	if opts.PDGroup == "" {
		opts.PDGroup = opts.Cluster
	}
	if opts.StorageClass == "" {
		opts.StorageClass = "tikv-ssd"
	}
	if opts.Resync <= 0 {
		opts.Resync = 100 * time.Millisecond
	}
	if opts.PD.Members == nil {
		opts.PD.Members = []string{opts.PDGroup + "-" + randomSuffix()}
	}
	if err := e.InstallV2CRDs(ctx); err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(e.Cluster.RESTConfig())
	if err != nil {
		return nil, err
	}
	progress := e.opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	v := &V2{Sim: pdsim.New(opts.PD), Opts: opts, env: e, dyn: dyn, progress: progress,
		stores: map[string]uint64{}, deleted: map[string]int{}, retryAt: map[string]time.Time{}, done: make(chan struct{})}
	if v.URL, err = v.Sim.Start(opts.PDListen); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = v.Sim.Close()
		}
	}()
	if v.pdc, err = pd.New(v.URL, pd.Options{}); err != nil {
		return nil, err
	}
	if err := v.createObjects(ctx); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	go v.run(runCtx)
	return v, nil
}

func (v *V2) createObjects(ctx context.Context) error {
	o := v.Opts
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Namespace}}
	if _, err := v.env.Cluster.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", o.Namespace, err)
	}
	clusterRef := map[string]any{"name": o.Cluster}
	cluster := v2Object("Cluster", o.Namespace, o.Cluster, map[string]any{})
	created, err := v.dyn.Resource(V2Clusters).Namespace(o.Namespace).Create(ctx, cluster, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Cluster %s: %w", o.Cluster, err)
	}
	statusPD := o.StatusPD
	if statusPD == "" {
		statusPD = v.URL
	}
	created.Object["status"] = map[string]any{"pd": statusPD, "id": strconv.FormatUint(v.Sim.ClusterID(), 10)}
	if _, err := v.dyn.Resource(V2Clusters).Namespace(o.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write status.pd of Cluster %s: %w", o.Cluster, err)
	}
	pdg := v2Object("PDGroup", o.Namespace, o.PDGroup, map[string]any{"cluster": clusterRef, "replicas": int64(1)})
	if _, err := v.dyn.Resource(V2PDGroups).Namespace(o.Namespace).Create(ctx, pdg, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create PDGroup %s: %w", o.PDGroup, err)
	}
	kvg := v2Object("TiKVGroup", o.Namespace, o.TiKVGroup, map[string]any{"cluster": clusterRef, "replicas": int64(o.Replicas)})
	if _, err := v.dyn.Resource(V2TiKVGroups).Namespace(o.Namespace).Create(ctx, kvg, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create TiKVGroup %s: %w", o.TiKVGroup, err)
	}
	return nil
}

func v2Object(kind, namespace, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(V2APIVersion)
	u.SetKind(kind)
	u.SetNamespace(namespace)
	u.SetName(name)
	return u
}

// Close stops the operator and the PD simulator.
func (v *V2) Close() {
	if v.cancel != nil {
		v.cancel()
		<-v.done
	}
	_ = v.Sim.Close()
}

// Scale sets the TiKVGroup's replicas, as a user edits the group.
func (v *V2) Scale(ctx context.Context, replicas int) error {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	_, err := v.dyn.Resource(V2TiKVGroups).Namespace(v.Opts.Namespace).Patch(ctx, v.Opts.TiKVGroup, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// Instances lists the group's TiKV instance objects, by name.
func (v *V2) Instances(ctx context.Context) ([]unstructured.Unstructured, error) {
	list, err := v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{LabelV2Group: v.Opts.TiKVGroup, LabelV2Cluster: v.Opts.Cluster}.String(),
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].GetName() < list.Items[j].GetName() })
	return list.Items, nil
}

// Deletions is how many times the operator itself deleted the instance
// (scale-in); deletions by others are not counted.
func (v *V2) Deletions(instance string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.deleted[instance]
}

// StoreOf returns the store registered for a pod.
func (v *V2) StoreOf(pod string) (uint64, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	id, ok := v.stores[pod]
	return id, ok
}

// V2PodName is the pod of a v2 instance: the instance name split at its
// last '-', the component in between (basic-5gzwgj → basic-tikv-5gzwgj).
func V2PodName(instance, component string) string {
	i := strings.LastIndexByte(instance, '-')
	if i < 0 {
		return instance + "-" + component
	}
	return instance[:i] + "-" + component + "-" + instance[i+1:]
}

// V2ClaimName is the claim of a v2 pod's volume: <volume>-<pod>.
func V2ClaimName(volume, pod string) string { return volume + "-" + pod }

// V2StoreAddress is what a v2 TiKV advertises: <pod>.<group>-tikv-peer.<ns>:20160.
func V2StoreAddress(pod, group, namespace string) string {
	return fmt.Sprintf("%s.%s-tikv-peer.%s:%d", pod, group, namespace, TiKVPort)
}

func randomSuffix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}

func (v *V2) logf(format string, args ...any) {
	fmt.Fprintf(v.progress, "tidb-operator-v2 %s/%s: %s\n", v.Opts.Namespace, v.Opts.Cluster, fmt.Sprintf(format, args...))
}

func (v *V2) run(ctx context.Context) {
	defer close(v.done)
	t := time.NewTicker(v.Opts.Resync)
	defer t.Stop()
	for {
		if err := v.reconcile(ctx); err != nil && ctx.Err() == nil {
			// Report each distinct failure once: reconciles retry anyway.
			v.mu.Lock()
			repeat := v.lastError == err.Error()
			v.lastError = err.Error()
			v.mu.Unlock()
			if !repeat {
				v.logf("reconcile: %v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// instanceState is what one reconcile reads about an instance.
type instanceState struct {
	obj      *unstructured.Unstructured
	pod      *corev1.Pod
	store    *pd.StoreInfo
	deleting bool
	offline  bool
}

func (v *V2) reconcile(ctx context.Context) error {
	o := v.Opts
	core := v.env.Cluster.Client.CoreV1()
	nodes, err := core.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	nodeThere := map[string]bool{}
	for _, n := range nodes.Items {
		nodeThere[n.Name] = true
	}
	sel := labels.Set{LabelV2ManagedBy: v2ManagedBy, LabelV2Cluster: o.Cluster, LabelV2Component: "tikv"}.String()
	pods, err := core.Pods(o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	v.playTiKV(pods.Items, nodeThere)

	stores, err := v.pdc.Stores(ctx)
	if err != nil && !errors.Is(err, pd.ErrNotBootstrapped) {
		return err
	}
	byPod := map[string]*corev1.Pod{}
	for i := range pods.Items {
		byPod[pods.Items[i].Name] = &pods.Items[i]
	}
	insts, err := v.Instances(ctx)
	if err != nil {
		return err
	}
	var states []*instanceState
	for i := range insts {
		obj := &insts[i]
		podName := V2PodName(obj.GetName(), "tikv")
		offline, _, _ := unstructured.NestedBool(obj.Object, "spec", "offline")
		st := &instanceState{obj: obj, pod: byPod[podName], deleting: obj.GetDeletionTimestamp() != nil, offline: offline}
		addr := V2StoreAddress(podName, o.TiKVGroup, o.Namespace)
		for j := range stores {
			// The newest store at the address is the instance's (PD hands
			// a restarted TiKV on a fresh disk a new ID).
			if stores[j].Address == addr && (st.store == nil || stores[j].ID > st.store.ID) {
				st.store = &stores[j]
			}
		}
		states = append(states, st)
	}
	var errs []error
	for _, st := range states {
		errs = append(errs, v.reconcileInstance(ctx, st))
	}
	errs = append(errs, v.reconcileGroup(ctx, states))
	return errors.Join(errs...)
}

// playTiKV is TiKV's side: a Running pod on a node that is there registers
// its store and heartbeats; any other stops heartbeating.
func (v *V2) playTiKV(pods []corev1.Pod, nodeThere map[string]bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	alive := map[string]bool{}
	for _, pod := range pods {
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil || !nodeThere[pod.Spec.NodeName] {
			continue
		}
		if id, ok := v.stores[pod.Name]; ok {
			if s, ok := v.Sim.Store(id); ok && s.StateName == "Tombstone" {
				// A buried store's TiKV exits and PD refuses its disk for
				// good; v2 never reuses a pod name on another disk.
				continue
			}
		}
		alive[pod.Name] = true
		id := v.Sim.RegisterStore(V2StoreAddress(pod.Name, v.Opts.TiKVGroup, v.Opts.Namespace))
		v.stores[pod.Name] = id
		_ = v.Sim.ResumeHeartbeats(id)
	}
	for name, id := range v.stores {
		if !alive[name] {
			_ = v.Sim.StopHeartbeats(id)
		}
	}
}

func (v *V2) reconcileInstance(ctx context.Context, st *instanceState) error {
	name := st.obj.GetName()
	if err := v.syncStatus(ctx, st); err != nil {
		return err
	}
	if st.deleting && !st.offline {
		// v2 first marks a deleted instance offline, then offlines its store.
		v.logf("instance %s is being deleted: setting spec.offline", name)
		return v.setOffline(ctx, st.obj, true)
	}
	if !st.offline {
		if st.store != nil && st.store.NodeState == pd.NodeRemoving {
			// Scale-in cancelled: ask PD to keep the store.
			v.logf("instance %s is online again: cancelling the offline of store %d", name, st.store.ID)
			return v.cancelOffline(ctx, st.store.ID)
		}
		return v.ensurePod(ctx, st)
	}
	switch {
	case st.store == nil || st.store.NodeState == pd.NodeRemoved || st.store.State == pd.StoreTombstone:
		if !st.deleting {
			// Scale-in: the store is gone from PD, so the instance goes.
			uid, rv := st.obj.GetUID(), st.obj.GetResourceVersion()
			err := v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).Delete(ctx, name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
			if err == nil {
				v.mu.Lock()
				v.deleted[name]++
				v.mu.Unlock()
				v.logf("store of instance %s is Removed: deleted the instance", name)
			}
			return ignoreGoneOrConflict(err)
		}
		return v.finalize(ctx, st)
	case st.store.NodeState == pd.NodeRemoving:
		return nil // PD moves the data away
	default:
		v.mu.Lock()
		wait := time.Now().Before(v.retryAt[name])
		v.mu.Unlock()
		if wait {
			return nil
		}
		err := v.pdc.DeleteStore(ctx, st.store.ID)
		var refused *pd.RefusedError
		switch {
		case errors.As(err, &refused):
			v.mu.Lock()
			v.retryAt[name] = time.Now().Add(time.Second)
			v.mu.Unlock()
			return fmt.Errorf("offline store %d of %s: %w", st.store.ID, name, err)
		case err == nil || errors.Is(err, pd.ErrStoreNotFound) || errors.Is(err, pd.ErrStoreRemoved):
			v.logf("instance %s is offline: deleted store %d in PD", name, st.store.ID)
			return nil
		}
		return err
	}
}

// finalize is v2's finalizer on a deleted instance whose store is gone:
// delete the pod and the claims, wait until they are gone, then let the
// instance go.
func (v *V2) finalize(ctx context.Context, st *instanceState) error {
	core := v.env.Cluster.Client.CoreV1()
	ns := v.Opts.Namespace
	sel := labels.Set{LabelV2ManagedBy: v2ManagedBy, LabelV2Instance: st.obj.GetName(), LabelV2Cluster: v.Opts.Cluster, LabelV2Component: "tikv"}.String()
	pods, err := core.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	pvcs, err := core.PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	waiting := false
	for _, p := range pods.Items {
		waiting = true
		if p.DeletionTimestamp == nil {
			if err := ignoreGoneOrConflict(core.Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})); err != nil {
				return err
			}
			v.logf("instance %s: deleted pod %s", st.obj.GetName(), p.Name)
		}
	}
	for _, c := range pvcs.Items {
		waiting = true
		if c.DeletionTimestamp == nil {
			if err := ignoreGoneOrConflict(core.PersistentVolumeClaims(ns).Delete(ctx, c.Name, metav1.DeleteOptions{})); err != nil {
				return err
			}
			v.logf("instance %s: deleted claim %s", st.obj.GetName(), c.Name)
		}
	}
	if waiting {
		return nil
	}
	var keep []string
	for _, f := range st.obj.GetFinalizers() {
		if f != V2Finalizer {
			keep = append(keep, f)
		}
	}
	if len(keep) == len(st.obj.GetFinalizers()) {
		return nil
	}
	obj := st.obj.DeepCopy()
	obj.SetFinalizers(keep)
	if _, err := v.dyn.Resource(V2TiKVs).Namespace(ns).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return ignoreGoneOrConflict(err)
	}
	v.logf("instance %s: pod and claims gone, finalizer removed", st.obj.GetName())
	return nil
}

// syncStatus mirrors the store into the instance's status (id, PD node
// state) and the legacy store-id label onto its pod and claim.
func (v *V2) syncStatus(ctx context.Context, st *instanceState) error {
	if st.store == nil {
		return nil
	}
	id, state := strconv.FormatUint(st.store.ID, 10), st.store.NodeState.String()
	if st.store.State == pd.StoreTombstone {
		state = pd.NodeRemoved.String()
	}
	curID, _, _ := unstructured.NestedString(st.obj.Object, "status", "id")
	curState, _, _ := unstructured.NestedString(st.obj.Object, "status", "state")
	if curID != id || curState != state {
		obj := st.obj.DeepCopy()
		obj.Object["status"] = map[string]any{"id": id, "state": state}
		updated, err := v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err != nil {
			return ignoreGoneOrConflict(err)
		}
		st.obj = updated
	}
	if st.pod == nil || st.pod.DeletionTimestamp != nil || st.pod.Labels[LabelStoreID] == id || st.store.State != pd.StoreUp {
		return nil
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, LabelStoreID, id))
	core := v.env.Cluster.Client.CoreV1()
	if _, err := core.Pods(v.Opts.Namespace).Patch(ctx, st.pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return ignoreGoneOrConflict(err)
	}
	_, err := core.PersistentVolumeClaims(v.Opts.Namespace).Patch(ctx, V2ClaimName(v2DataVolume, st.pod.Name), types.MergePatchType, patch, metav1.PatchOptions{})
	return ignoreGoneOrConflict(err)
}

func (v *V2) setOffline(ctx context.Context, obj *unstructured.Unstructured, offline bool) error {
	// Setting offline also drops defer-delete, so the deletion can still
	// be cancelled (as v2's scale-in does).
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"core.pingcap.com/defer-delete":null}},"spec":{"offline":%t}}`, offline)
	_, err := v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).Patch(ctx, obj.GetName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return ignoreGoneOrConflict(err)
}

func (v *V2) cancelOffline(ctx context.Context, id uint64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/pd/api/v1/store/%d/state?state=Up", v.URL, id), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("cancel offline of store %d: PD answered %s", id, resp.Status)
	}
	return nil
}

// ensurePod creates the claim and the pod of an instance that has none,
// as v2 does for every live instance (a pod deleted by anyone comes back
// with the same claim).
func (v *V2) ensurePod(ctx context.Context, st *instanceState) error {
	if st.pod != nil || st.deleting {
		return nil
	}
	o := v.Opts
	inst := st.obj
	podName := V2PodName(inst.GetName(), "tikv")
	claim := V2ClaimName(v2DataVolume, podName)
	owner := metav1.OwnerReference{APIVersion: V2APIVersion, Kind: "TiKV", Name: inst.GetName(), UID: inst.GetUID(),
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}
	lbl := map[string]string{
		LabelV2ManagedBy: v2ManagedBy, LabelV2Component: "tikv", LabelV2Cluster: o.Cluster,
		LabelV2Group: o.TiKVGroup, LabelV2Instance: inst.GetName(), labelV2Revision: v2Revision,
		// The v1 set, which v2 keeps writing for compatibility.
		"app.kubernetes.io/component": "tikv", "app.kubernetes.io/instance": o.Cluster,
		"app.kubernetes.io/managed-by": v2ManagedBy, "app.kubernetes.io/name": "tidb-cluster",
		labelClusterID: strconv.FormatUint(v.Sim.ClusterID(), 10),
	}
	core := v.env.Cluster.Client.CoreV1()
	pvcLabels := map[string]string{labelV2Volume: v2DataVolume}
	for k, val := range lbl {
		pvcLabels[k] = val
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claim, Namespace: o.Namespace, Labels: pvcLabels, OwnerReferences: []metav1.OwnerReference{owner}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(o.StorageClass),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
	if _, err := core.PersistentVolumeClaims(o.Namespace).Create(ctx, pvc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create claim %s: %w", claim, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: o.Namespace, Labels: lbl, OwnerReferences: []metav1.OwnerReference{owner}},
		Spec: corev1.PodSpec{
			Hostname:  podName,
			Subdomain: o.TiKVGroup + "-tikv-peer",
			Containers: []corev1.Container{{
				Name: "tikv", Image: "pingcap/tikv:v8.5.0",
				VolumeMounts: []corev1.VolumeMount{{Name: v2DataVolume, MountPath: "/var/lib/tikv"}},
			}},
			Volumes: []corev1.Volume{{Name: v2DataVolume, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	if _, err := core.Pods(o.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pod %s: %w", podName, err)
	}
	v.logf("instance %s: created pod %s and claim %s", inst.GetName(), podName, claim)
	return nil
}

// reconcileGroup keeps the group at its replicas: a new instance (new
// name) when one is gone; on scale-in, one instance marked offline (it is
// deleted once its store is Removed); on scale-out during a scale-in, the
// offline mark taken back.
func (v *V2) reconcileGroup(ctx context.Context, states []*instanceState) error {
	o := v.Opts
	g, err := v.dyn.Resource(V2TiKVGroups).Namespace(o.Namespace).Get(ctx, o.TiKVGroup, metav1.GetOptions{})
	if err != nil {
		return err
	}
	replicas, _, _ := unstructured.NestedInt64(g.Object, "spec", "replicas")
	var active, offline []*instanceState
	for _, st := range states {
		switch {
		case st.deleting:
		case st.offline:
			offline = append(offline, st)
		default:
			active = append(active, st)
		}
	}
	switch {
	case int64(len(active)) > replicas:
		// Scale-in: the newest instance goes.
		sort.Slice(active, func(i, j int) bool {
			ti, tj := active[i].obj.GetCreationTimestamp(), active[j].obj.GetCreationTimestamp()
			return ti.Before(&tj) || (ti.Equal(&tj) && active[i].obj.GetName() < active[j].obj.GetName())
		})
		victim := active[len(active)-1]
		v.logf("scale-in to %d: setting spec.offline on instance %s", replicas, victim.obj.GetName())
		return v.setOffline(ctx, victim.obj, true)
	case int64(len(active)) < replicas && len(offline) > 0:
		v.logf("scale-out to %d: taking back the offline of instance %s", replicas, offline[0].obj.GetName())
		return v.setOffline(ctx, offline[0].obj, false)
	case int64(len(states)) < replicas:
		return v.createInstance(ctx, g)
	}
	return nil
}

func (v *V2) createInstance(ctx context.Context, group *unstructured.Unstructured) error {
	o := v.Opts
	name := o.TiKVGroup + "-" + randomSuffix()
	inst := v2Object("TiKV", o.Namespace, name, map[string]any{
		"cluster":   map[string]any{"name": o.Cluster},
		"subdomain": o.TiKVGroup + "-tikv-peer",
		"offline":   false,
	})
	inst.SetFinalizers([]string{V2Finalizer})
	inst.SetLabels(map[string]string{
		LabelV2ManagedBy: v2ManagedBy, LabelV2Component: "tikv", LabelV2Cluster: o.Cluster,
		LabelV2Group: o.TiKVGroup, labelV2Revision: v2Revision,
	})
	inst.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: V2APIVersion, Kind: "TiKVGroup", Name: group.GetName(),
		UID: group.GetUID(), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}})
	if _, err := v.dyn.Resource(V2TiKVs).Namespace(o.Namespace).Create(ctx, inst, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create TiKV instance %s: %w", name, err)
	}
	v.logf("group %s: created instance %s", o.TiKVGroup, name)
	return nil
}

func ignoreGoneOrConflict(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// InstanceGet reads one TiKV instance object.
func (v *V2) InstanceGet(ctx context.Context, name string) (*unstructured.Unstructured, error) {
	return v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).Get(ctx, name, metav1.GetOptions{})
}
