package volumecontroller

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Config is what the controller is told by its flags.
type Config struct {
	Policy Policy
	// PDTemplate renders a cluster's PD URL from its pods' labels and namespace.
	PDTemplate pd.EndpointTemplate
	// PDOverrides maps "<namespace>/<instance>" to a PD URL.
	PDOverrides map[string]string
	// PollInterval is how often owners are re-read from PD.
	PollInterval time.Duration
	// PDCacheTTL bounds how stale a cached PD answer may be for decisions
	// (actions always re-read).
	PDCacheTTL time.Duration
	Workers    int
}

// Deps are the controller's seams.
type Deps struct {
	Client   kubernetes.Interface
	Dial     PDDialer
	Clock    clock.Clock
	Recorder record.EventRecorder
	Registry prometheus.Registerer
	// Dynamic reads and deletes TiDB Operator v2 objects (Cluster, TiKV
	// instances); nil leaves v2 clusters to --pd-endpoint overrides and
	// reports instead of acting.
	Dynamic dynamic.Interface
	// Caches, when set, replace the informers: the caller fills them and
	// drives reconciles with SyncPV (a simulation replaying a history, a
	// test deciding when caches catch up). Nil means informers, as deployed.
	Caches *Caches
}

// Indexes.
const (
	podsByClaim = "claim" // "<namespace>/<claim>"
	pvsByNode   = "node"
)

// Controller is the volume-controller.
type Controller struct {
	cfg     Config
	client  kubernetes.Interface
	dynamic dynamic.Interface
	v2      *v2Endpoints
	// diskInf caches LocalDisks (nil without a dynamic client).
	diskInf    cache.SharedIndexInformer
	dynFactory dynamicinformer.DynamicSharedInformerFactory
	clock      clock.Clock
	recorder   record.EventRecorder
	metrics    *metrics
	pd         *pdView

	factories []informers.SharedInformerFactory
	pvInf     cache.SharedIndexInformer
	podInf    cache.SharedIndexInformer
	// podV2Inf caches TiDB Operator v2's TiKV and PD pods by v2's own
	// labels, in case the v1 set is missing.
	podV2Inf   cache.SharedIndexInformer
	pvIndex    cache.Indexer   // pvInf's, or the caller's Caches.PVs
	podIndexes []cache.Indexer // podInf's and podV2Inf's, or the caller's Caches.Pods
	pvLister   corelisters.PersistentVolumeLister
	pvcLister  corelisters.PersistentVolumeClaimLister
	podLister  corelisters.PodLister
	nodeLister corelisters.NodeLister
	synced     []cache.InformerSynced

	queue workqueue.TypedRateLimitingInterface[string]

	mu       sync.Mutex
	goneAt   map[string]time.Time // node name → when it was first seen missing
	deadAt   map[string]time.Time // node name → when it was first seen dead by the rules
	warnings map[string]warning   // PV → last warning, so a standing refusal is one event
	health   map[string]string    // PV → last disk health reported to its claim and pod

	synced0 atomic.Bool
}

// New builds a controller. Informers start in Start; workers run in Run,
// which only the lease holder calls.
func New(cfg Config, deps Deps) (*Controller, error) {
	if cfg.PollInterval <= 0 || cfg.Workers <= 0 || cfg.PDCacheTTL <= 0 {
		return nil, fmt.Errorf("poll interval, PD cache TTL and workers must be positive")
	}
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	c := &Controller{
		cfg: cfg, client: deps.Client, dynamic: deps.Dynamic, clock: deps.Clock, recorder: deps.Recorder,
		v2:       &v2Endpoints{client: deps.Dynamic, clock: deps.Clock, cache: map[string]v2Endpoint{}},
		metrics:  newMetrics(deps.Registry),
		goneAt:   map[string]time.Time{},
		deadAt:   map[string]time.Time{},
		warnings: map[string]warning{},
		health:   map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "volumecontroller"}),
	}
	c.pd = newPDView(deps.Dial, cfg.PDCacheTTL, deps.Clock)
	if deps.Dynamic != nil {
		c.dynFactory = dynamicinformer.NewDynamicSharedInformerFactory(deps.Dynamic, 0)
		c.diskInf = c.dynFactory.ForResource(v1alpha1.Resource).Informer()
		c.synced = append(c.synced, c.diskInf.HasSynced)
	}

	if deps.Caches != nil {
		c.useCaches(deps.Caches)
		return c, nil
	}
	if err := c.informers(); err != nil {
		return nil, err
	}
	return c, nil
}

// informers sets up the caches as deployed: watches of our PVs, TiKV and PD
// pods, claims and nodes, each change enqueueing the PVs it concerns.
func (c *Controller) informers() error {
	ours, err := labels.NewRequirement(provisioner.LabelDisk, selection.Exists, nil)
	if err != nil {
		return err
	}
	tidbPods, err := labels.NewRequirement(labelComponent, selection.In, []string{ComponentTiKV, ComponentPD})
	if err != nil {
		return err
	}
	pvF := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = labels.NewSelector().Add(*ours).String()
	}))
	// Only TiKV and PD pods are cached; before any destructive action the
	// claim's namespace is listed afresh, so a pod outside this cache that
	// mounts the claim still stops it.
	podF := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = labels.NewSelector().Add(*tidbPods).String()
	}))
	allF := informers.NewSharedInformerFactory(c.client, 0)
	v2Pods, err := labels.NewRequirement(labelV2Component, selection.In, []string{ComponentTiKV, ComponentPD})
	if err != nil {
		return err
	}
	podV2F := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = labels.NewSelector().Add(*v2Pods).String()
	}))
	c.factories = []informers.SharedInformerFactory{pvF, podF, podV2F, allF}
	c.podV2Inf = podV2F.Core().V1().Pods().Informer()
	if err := c.podV2Inf.AddIndexers(cache.Indexers{podsByClaim: claimsOfPod}); err != nil {
		return err
	}

	c.pvInf = pvF.Core().V1().PersistentVolumes().Informer()
	c.podInf = podF.Core().V1().Pods().Informer()
	pvcInf := allF.Core().V1().PersistentVolumeClaims().Informer()
	nodeInf := allF.Core().V1().Nodes().Informer()
	c.pvIndex = c.pvInf.GetIndexer()
	c.podIndexes = []cache.Indexer{c.podInf.GetIndexer(), c.podV2Inf.GetIndexer()}
	if err := c.pvInf.AddIndexers(cache.Indexers{pvsByNode: pvNode}); err != nil {
		return err
	}
	if err := c.podInf.AddIndexers(cache.Indexers{podsByClaim: claimsOfPod}); err != nil {
		return err
	}
	c.pvLister = pvF.Core().V1().PersistentVolumes().Lister()
	c.podLister = podF.Core().V1().Pods().Lister()
	c.pvcLister = allF.Core().V1().PersistentVolumeClaims().Lister()
	c.nodeLister = allF.Core().V1().Nodes().Lister()
	c.synced = append(c.synced, c.pvInf.HasSynced, c.podInf.HasSynced, c.podV2Inf.HasSynced, pvcInf.HasSynced, nodeInf.HasSynced)

	for inf, h := range map[cache.SharedIndexInformer]cache.ResourceEventHandler{
		c.pvInf: c.handler(c.enqueuePV), pvcInf: c.handler(c.enqueueClaim),
		c.podInf: c.handler(c.enqueuePod), c.podV2Inf: c.handler(c.enqueuePod),
		nodeInf: c.nodeHandler(),
	} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	return nil
}

// handler turns an enqueue function into event handlers; resyncs of an
// unchanged object are dropped.
func (c *Controller) handler(fn func(any)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: fn,
		UpdateFunc: func(old, cur any) {
			if o, ok := old.(metav1.Object); ok {
				if n, ok := cur.(metav1.Object); ok && o.GetResourceVersion() == n.GetResourceVersion() {
					return
				}
			}
			fn(cur)
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			fn(obj)
		},
	}
}

func pvNode(obj any) ([]string, error) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok {
		return nil, nil
	}
	return []string{pv.Labels[provisioner.LabelNode]}, nil
}

func claimsOfPod(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	var keys []string
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			keys = append(keys, pod.Namespace+"/"+v.PersistentVolumeClaim.ClaimName)
		}
	}
	return keys, nil
}

func (c *Controller) enqueuePV(obj any) {
	if pv, ok := obj.(*corev1.PersistentVolume); ok {
		c.queue.Add(pv.Name)
	}
}

func (c *Controller) enqueueClaim(obj any) {
	if pvc, ok := obj.(*corev1.PersistentVolumeClaim); ok && pvc.Spec.VolumeName != "" {
		c.queue.Add(pvc.Spec.VolumeName)
	}
}

func (c *Controller) enqueuePod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		if pvc, err := c.pvcLister.PersistentVolumeClaims(pod.Namespace).Get(v.PersistentVolumeClaim.ClaimName); err == nil && pvc.Spec.VolumeName != "" {
			c.queue.Add(pvc.Spec.VolumeName)
		}
	}
}

func (c *Controller) enqueueNode(obj any) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	pvs, err := c.pvIndex.ByIndex(pvsByNode, node.Name)
	if err != nil {
		return
	}
	for _, o := range pvs {
		c.enqueuePV(o)
	}
}

// Start starts the informers and waits for their caches; standbys run it
// too, so that a new leader acts on a warm cache at once.
func (c *Controller) Start(ctx context.Context) error {
	// With caller-filled Caches only the LocalDisk informer (given a
	// dynamic client) is started here.
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	if c.dynFactory != nil {
		c.dynFactory.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("caches did not sync")
	}
	c.synced0.Store(true)
	return nil
}

// Ready reports whether the caches have synced.
func (c *Controller) Ready() bool { return c.synced0.Load() }

// Run runs the workers until ctx ends. ctx is the leader's context: when the
// lease is lost it is cancelled, and every worker and every action in flight
// (which checks ctx before each write) stops.
func (c *Controller) Run(ctx context.Context) {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	c.metrics.leader.Set(1)
	defer c.metrics.leader.Set(0)
	log := klog.FromContext(ctx)
	log.Info("volume-controller leading", "workers", c.cfg.Workers, "pollInterval", c.cfg.PollInterval)

	go wait.UntilWithContext(ctx, c.poll, c.cfg.PollInterval)
	for range c.cfg.Workers {
		go wait.UntilWithContext(ctx, c.worker, time.Second)
	}
	<-ctx.Done()
	log.Info("volume-controller stopped leading")
}

// SyncPV reconciles one PV exactly as a worker does, without the queue's
// retries: for a caller that fills Caches and drives reconciles itself. ctx
// is the leader's context, as in Run.
func (c *Controller) SyncPV(ctx context.Context, name string) error {
	return c.sync(ctx, name)
}

// ShutDown releases the work queue of a controller driven by SyncPV (Run
// shuts it down itself).
func (c *Controller) ShutDown() { c.queue.ShutDown() }

// poll re-reads every PV; PD has no watch API, so owners' states are polled.
func (c *Controller) poll(ctx context.Context) {
	pvs, err := c.pvLister.List(labels.Everything())
	if err != nil {
		return
	}
	counts := map[[2]string]float64{}
	for _, pv := range pvs {
		c.queue.Add(pv.Name)
		if comp := pv.Labels[provisioner.LabelComponent]; comp != "" && provisioner.Owned(pv) {
			counts[[2]string{comp, pv.Annotations[provisioner.AnnOwnerState]}]++
		}
	}
	c.metrics.owners.Reset()
	for k, n := range counts {
		c.metrics.owners.WithLabelValues(k[0], k[1]).Set(n)
	}
}

func (c *Controller) worker(ctx context.Context) {
	for c.processNext(ctx) {
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	start := c.clock.Now()
	err := c.sync(ctx, key)
	c.metrics.syncTime.Observe(c.clock.Since(start).Seconds())
	if err == nil {
		c.queue.Forget(key)
		return true
	}
	if ctx.Err() == nil {
		klog.FromContext(ctx).Error(err, "sync failed; retrying", "pv", key)
		c.queue.AddRateLimited(key)
	}
	return true
}

// nodeHandler keeps the dead-node grace honest in every replica, standbys
// included: a node that is there forgets any absence seen before, so a node
// deleted again after it came back gets the whole grace again; a deletion
// starts the grace at once, so a leader taking over later does not start it
// over.
func (c *Controller) nodeHandler() cache.ResourceEventHandlerFuncs {
	h := c.handler(c.enqueueNode)
	seen := func(obj any) {
		if node, ok := obj.(*corev1.Node); ok {
			c.mu.Lock()
			delete(c.goneAt, node.Name)
			c.mu.Unlock()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { seen(obj); h.OnAdd(obj, false) },
		UpdateFunc: func(old, cur any) { seen(cur); h.OnUpdate(old, cur) },
		DeleteFunc: func(obj any) { c.nodeDeleted(obj); h.OnDelete(obj) },
	}
}

// nodeDeleted notes when a Node was deleted.
func (c *Controller) nodeDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	node, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	c.mu.Lock()
	if _, seen := c.goneAt[node.Name]; !seen {
		c.goneAt[node.Name] = c.clock.Now()
	}
	c.mu.Unlock()
}

// nodeFacts says whether the node is there, for how long it has not
// been, and for how long it has been dead by the rules.
func (c *Controller) nodeFacts(name string) NodeFacts {
	f := c.nodePresence(name)
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if dead, _ := c.cfg.Policy.nodeDead(f); dead {
		since, ok := c.deadAt[name]
		if !ok {
			since = now
			c.deadAt[name] = now
		}
		f.DeadFor = now.Sub(since)
	} else {
		delete(c.deadAt, name)
	}
	return f
}

func (c *Controller) nodePresence(name string) NodeFacts {
	if name == "" {
		// A PV that lost its node label (kubectl label, GitOps) names no
		// node; that is not a deleted one.
		return NodeFacts{}
	}
	now := c.clock.Now()
	node, err := c.nodeLister.Get(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	if apierrors.IsNotFound(err) {
		since, ok := c.goneAt[name]
		if !ok {
			// First seen missing now (or before this controller started):
			// the grace period counts from here.
			since = now
			c.goneAt[name] = now
		}
		return NodeFacts{Gone: true, GoneFor: now.Sub(since)}
	}
	delete(c.goneAt, name)
	if err != nil {
		return NodeFacts{}
	}
	return nodeObjectFacts(node, now)
}

// nodeObjectFacts reads a Node object that exists.
func nodeObjectFacts(node *corev1.Node, now time.Time) NodeFacts {
	var f NodeFacts
	for _, t := range node.Spec.Taints {
		if t.Key == TaintOutOfService {
			f.OutOfService = true
		}
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
			f.NotReady, f.NotReadyFor = true, now.Sub(cond.LastTransitionTime.Time)
		}
	}
	return f
}
