package sim

import (
	"context"
	_ "embed"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
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
	labelMemberID    = "tidb.pingcap.com/member-id"
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
	V2PDs        = schema.GroupVersionResource{Group: V2Group, Version: "v1alpha1", Resource: "pds"}
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
	// Replicas of the TiKVGroup.
	Replicas int
	// PDReplicas of the PDGroup: PD instances whose pods join the
	// simulator as members named after the instances. 0 leaves PD to the
	// simulator's own member (no PD pods).
	PDReplicas int
	// StorageClass of the TiKV data volume (default tidb-localpv-tikv); PD's is
	// PDStorageClass (default tidb-localpv-pd).
	StorageClass, PDStorageClass string
	PD                           pdsim.Options
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

// v2Component is what differs between v2's TiKV and PD instances here.
type v2Component struct {
	name, kind, groupKind string
	instances, groups     schema.GroupVersionResource
	group, class          string
	image, mountPath      string
}

func (v *V2) tikv() v2Component {
	return v2Component{name: "tikv", kind: "TiKV", groupKind: "TiKVGroup", instances: V2TiKVs, groups: V2TiKVGroups,
		group: v.Opts.TiKVGroup, class: v.Opts.StorageClass, image: "pingcap/tikv:v8.5.0", mountPath: "/var/lib/tikv"}
}

func (v *V2) pd() v2Component {
	return v2Component{name: "pd", kind: "PD", groupKind: "PDGroup", instances: V2PDs, groups: V2PDGroups,
		group: v.Opts.PDGroup, class: v.Opts.PDStorageClass, image: "pingcap/pd:v8.5.0", mountPath: "/var/lib/pd"}
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
		opts.StorageClass = "tidb-localpv-tikv"
	}
	if opts.PDStorageClass == "" {
		opts.PDStorageClass = "tidb-localpv-pd"
	}
	if opts.Resync <= 0 {
		opts.Resync = 100 * time.Millisecond
	}
	if opts.PD.Members == nil {
		// Without PD pods, one member stands for PD; with them, the
		// members are the PD pods that run, named after their instances.
		opts.PD.Members = []string{opts.PDGroup + "-" + randomSuffix()}
		if opts.PDReplicas > 0 {
			opts.PD.Members = []string{}
		}
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
	pdg := v2Object("PDGroup", o.Namespace, o.PDGroup, map[string]any{"cluster": clusterRef, "replicas": int64(o.PDReplicas)})
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

// Instances lists the TiKVGroup's instance objects, by name.
func (v *V2) Instances(ctx context.Context) ([]unstructured.Unstructured, error) {
	return v.instancesOf(ctx, v.tikv())
}

// PDInstances lists the PDGroup's instance objects, by name.
func (v *V2) PDInstances(ctx context.Context) ([]unstructured.Unstructured, error) {
	return v.instancesOf(ctx, v.pd())
}

func (v *V2) instancesOf(ctx context.Context, c v2Component) ([]unstructured.Unstructured, error) {
	list, err := v.dyn.Resource(c.instances).Namespace(v.Opts.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{LabelV2Group: c.group, LabelV2Cluster: v.Opts.Cluster}.String(),
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
