// Package daemon is the node agent: it prepares inventory devices, publishes
// one local PV per disk, re-adopts disks after restarts, and wipes and
// republishes released disks through the provisioner library.
package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	"k8s.io/utils/clock"
	utilexec "k8s.io/utils/exec"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// Config is what the agent is told by its flags.
type Config struct {
	NodeName string
	Roots    discovery.Roots
	// InventoryNamespace/InventoryName locate the inventory ConfigMap.
	InventoryNamespace string
	InventoryName      string
	// StateDir keeps block wipe records and the list of block disks the
	// agent has published.
	StateDir string
	// ResyncPeriod is the safety-net rescan; events drive the normal path.
	ResyncPeriod     time.Duration
	FSWipe           provisioner.FSWipeMode
	BlockWipeCommand []string
	// MountInfo, DevDir, ByIDDir and SysBlockDir are the host paths the agent
	// reads; tests point them elsewhere.
	MountInfo   string
	DevDir      string
	ByIDDir     string
	SysBlockDir string
	// DeleteWorkers is how many released PVs may be wiped at once.
	DeleteWorkers int
	// MissingDiskRetention is how long the LocalDisk of a disk that is gone
	// (and has no PV) is kept before it is removed.
	MissingDiskRetention time.Duration
	// HealthInterval is how often disk health is checked between the
	// events that trigger a check; SmartInterval how often smartctl runs
	// (where installed). Zero means the default.
	HealthInterval time.Duration
	SmartInterval  time.Duration
	// CapacityWarningPercent and InodesWarningPercent are the usage that
	// makes a disk's health Warning; zero means the default (90).
	CapacityWarningPercent float64
	InodesWarningPercent   float64
	// SysFS is where sysfs is mounted ("" is /sys).
	SysFS string
}

// Deps are the agent's seams to the API server and the operating system.
type Deps struct {
	Client   kubernetes.Interface
	Mounts   discovery.MountTable
	Mounter  *mount.SafeFormatAndMount
	Exec     utilexec.Interface
	Sizer    discovery.Sizer
	Registry prometheus.Registerer
	// Clock times how long a disk with data has had no PV; nil is the
	// real clock.
	Clock clock.Clock
	// Dynamic writes the node's LocalDisk objects; nil leaves them out.
	Dynamic dynamic.Interface
	// KernelLog opens the kernel log for disk errors; nil leaves health
	// to the checks alone.
	KernelLog func() (KernelLog, error)
	// Caches, when set, replace the informers: the caller fills them and
	// drives the agent with Reconcile and its Provisioner's Delete (a
	// simulation replaying a history). Such an agent is not Run.
	Caches *Caches
	// Recorder receives the agent's events; nil means the API server's
	// event sink, set up by Run.
	Recorder record.EventRecorder
}

// Caches are the stores the agent reads, for a caller that fills them
// itself: this node's PVs, the StorageClasses, the inventory ConfigMap and
// this node's Node object.
type Caches struct {
	PVs, StorageClasses, ConfigMaps, Nodes cache.Indexer
}

// NewCaches returns empty stores the agent's listers can read.
func NewCaches() *Caches {
	idx := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	return &Caches{PVs: idx(), StorageClasses: idx(), ConfigMaps: idx(), Nodes: idx()}
}

// OSDeps returns Deps backed by the real host.
func OSDeps(client kubernetes.Interface, cfg Config, reg prometheus.Registerer) Deps {
	ex := utilexec.New()
	return Deps{
		Client:   client,
		Mounts:   discovery.ProcMountTable{Path: cfg.MountInfo},
		Mounter:  mount.NewSafeFormatAndMount(mount.NewWithoutSystemd(""), ex),
		Exec:     ex,
		Sizer:    discovery.OSSizer{},
		Registry: reg,
		KernelLog: func() (KernelLog, error) {
			return discovery.OpenKmsg(discovery.DefaultKmsg)
		},
	}
}

const reconcileKey = "node"

// Agent publishes and recycles the disks of one node.
type Agent struct {
	cfg  Config
	deps Deps

	factories []informers.SharedInformerFactory
	scInf     cache.SharedIndexInformer
	pvInf     cache.SharedIndexInformer
	pvIndex   cache.Indexer // pvInf's, or Caches.PVs: a published PV goes in at once
	pvLister  corelisters.PersistentVolumeLister
	scLister  storagelisters.StorageClassLister
	cmLister  corelisters.ConfigMapLister
	nodeList  corelisters.NodeLister
	synced    []cache.InformerSynced
	claimsInf cache.SharedIndexInformer

	queue    workqueue.TypedRateLimitingInterface[string]
	events   *reporter
	recorder record.EventRecorder
	scanner  *discovery.Scanner
	wiper    *provisioner.Wiper
	blocks   discovery.BlockIdentity
	metrics  *metrics
	io       *diskIO
	health   *healthMonitor

	mu        sync.Mutex
	busy      map[string]string // disk ID being wiped → its path, once located
	inventory []discovery.ValidEntry
	// diskIdx caches this node's LocalDisk objects (unstructured).
	diskIdx    cache.Indexer
	diskSynced cache.InformerSynced
	dynFactory dynamicinformer.DynamicSharedInformerFactory
	// wipes remembers each disk's last completed wipe for its LocalDisk.
	wipes map[string]*v1alpha1.Wipe
	// orphanSince is when a disk holding data was first confirmed (by a
	// fresh API read) to have no PV; it is wiped only a resync period later.
	orphanSince map[string]time.Time
	// orphanWipes counts the orphan wipes running in the background.
	orphanWipes sync.WaitGroup

	ready atomic.Bool
}

// New builds an agent; Run starts it.
func New(cfg Config, deps Deps) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, fmt.Errorf("node name is required (--node-name or NODE_NAME)")
	}
	if err := cfg.Roots.Validate(); err != nil {
		return nil, err
	}
	if cfg.DeleteWorkers <= 0 {
		cfg.DeleteWorkers = 2
	}
	if cfg.MissingDiskRetention <= 0 {
		cfg.MissingDiskRetention = 24 * time.Hour
	}
	resync := cfg.ResyncPeriod
	client := deps.Client

	// The agent caches only its own node's PVs, so its memory and watch
	// traffic do not grow with the cluster.
	ownPVs := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{provisioner.LabelNode: cfg.NodeName}.String()
		}))
	inventory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithNamespace(cfg.InventoryNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.InventoryName).String()
		}))
	ownNode := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
		}))
	cluster := informers.NewSharedInformerFactory(client, resync)
	// The library insists on a claims informer for dynamic provisioning,
	// which the agent never does; a selector no PVC carries keeps it from
	// caching every claim in the cluster.
	noClaims := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = "tidb-localpv.io/agent-never-provisions=true"
		}))

	a := &Agent{
		cfg:  cfg,
		deps: deps,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "agent"}),
		// No Sizer: disks are measured by identify, bounded in time.
		scanner: &discovery.Scanner{Roots: cfg.Roots, Mounts: deps.Mounts},
		wiper: &provisioner.Wiper{
			Mounts: deps.Mounts, Mounter: deps.Mounter, Exec: deps.Exec,
			StateDir: cfg.StateDir, FSMode: cfg.FSWipe, BlockCommand: cfg.BlockWipeCommand,
		},
		blocks:  discovery.BlockIdentity{ByIDDir: cfg.ByIDDir, SysBlockDir: cfg.SysBlockDir},
		metrics: newMetrics(deps.Registry),
		io:      newDiskIO(),
		health: newHealthMonitor(cfg, func(ctx context.Context, name string, args ...string) ([]byte, error) {
			return deps.Exec.CommandContext(ctx, name, args...).Output()
		}),
		busy:        map[string]string{},
		orphanSince: map[string]time.Time{},
		wipes:       map[string]*v1alpha1.Wipe{},
		diskIdx:     cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
	}
	if a.deps.Clock == nil {
		a.deps.Clock = clock.RealClock{}
	}
	a.wiper.Claim = a.io.claimForWipe
	a.pvInf = ownPVs.Core().V1().PersistentVolumes().Informer()
	a.pvLister = ownPVs.Core().V1().PersistentVolumes().Lister()
	a.cmLister = inventory.Core().V1().ConfigMaps().Lister()
	a.nodeList = ownNode.Core().V1().Nodes().Lister()
	a.scLister = cluster.Storage().V1().StorageClasses().Lister()
	a.scInf = cluster.Storage().V1().StorageClasses().Informer()
	a.claimsInf = noClaims.Core().V1().PersistentVolumeClaims().Informer()
	a.pvIndex = a.pvInf.GetIndexer()
	if deps.Recorder != nil {
		a.recorder = deps.Recorder
		a.events = newReporter(deps.Recorder)
		a.events.clock = a.deps.Clock
	}
	if cs := deps.Caches; cs != nil {
		a.pvIndex = cs.PVs
		a.pvLister = corelisters.NewPersistentVolumeLister(cs.PVs)
		a.scLister = storagelisters.NewStorageClassLister(cs.StorageClasses)
		a.cmLister = corelisters.NewConfigMapLister(cs.ConfigMaps)
		a.nodeList = corelisters.NewNodeLister(cs.Nodes)
		return a, nil
	}

	enqueue := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.enqueue() },
		UpdateFunc: func(old, cur any) { a.enqueueIfChanged(old, cur) },
		DeleteFunc: func(any) { a.enqueue() },
	}
	for _, inf := range []cache.SharedIndexInformer{
		a.pvInf,
		inventory.Core().V1().ConfigMaps().Informer(),
		ownNode.Core().V1().Nodes().Informer(),
		a.scInf,
	} {
		if _, err := inf.AddEventHandler(enqueue); err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		a.synced = append(a.synced, inf.HasSynced)
	}
	a.synced = append(a.synced, a.claimsInf.HasSynced)
	if deps.Dynamic != nil {
		a.dynFactory = dynamicinformer.NewFilteredDynamicSharedInformerFactory(deps.Dynamic, resync, "", func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{provisioner.LabelNode: cfg.NodeName}.String()
		})
		inf := a.dynFactory.ForResource(v1alpha1.Resource).Informer()
		// An operator's return-to-service annotation is acted on at once.
		if _, err := inf.AddEventHandler(cache.FilteringResourceEventHandler{
			FilterFunc: func(obj any) bool {
				o, ok := obj.(metav1.Object)
				return ok && o.GetAnnotations()[provisioner.AnnReturnToService] != ""
			},
			Handler: enqueue,
		}); err != nil {
			return nil, fmt.Errorf("watch LocalDisks: %w", err)
		}
		a.diskIdx = inf.GetIndexer()
		a.synced = append(a.synced, inf.HasSynced)
	}
	a.factories = []informers.SharedInformerFactory{ownPVs, inventory, ownNode, cluster, noClaims}
	return a, nil
}

// enqueueIfChanged drops periodic resyncs of unchanged objects.
func (a *Agent) enqueueIfChanged(old, cur any) {
	o, ok1 := old.(metav1.Object)
	c, ok2 := cur.(metav1.Object)
	if ok1 && ok2 && o.GetResourceVersion() == c.GetResourceVersion() {
		return
	}
	a.enqueue()
}

func (a *Agent) enqueue() { a.queue.Add(reconcileKey) }

// Ready reports whether the caches synced and one pass went over every disk
// of the node, whether or not each disk could be published.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Run runs the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	defer a.queue.ShutDown()
	log := klog.FromContext(ctx)
	if a.deps.Caches != nil {
		return fmt.Errorf("an agent built with Caches is driven by Reconcile, not Run")
	}

	if a.deps.Recorder == nil {
		// Not cancelled with ctx, so events of the shutdown still go out.
		broadcaster := record.NewBroadcaster(record.WithContext(context.WithoutCancel(ctx)))
		broadcaster.StartStructuredLogging(4)
		broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.deps.Client.CoreV1().Events("")})
		defer broadcaster.Shutdown()
		a.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "tidb-localpv-agent", Host: a.cfg.NodeName})
		a.events = newReporter(a.recorder)
		a.events.clock = a.deps.Clock
	}

	for _, f := range a.factories {
		f.Start(ctx.Done())
	}
	if a.dynFactory != nil {
		a.dynFactory.Start(ctx.Done())
	}
	log.Info("waiting for caches", "node", a.cfg.NodeName)
	if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
		return fmt.Errorf("caches did not sync")
	}

	watcher := discovery.NewWatcher(a.cfg.Roots, a.cfg.MountInfo)
	errs := make(chan error, 2)
	go func() { errs <- watcher.Run(ctx) }()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-watcher.Notify:
				a.enqueue()
			}
		}
	}()
	go wait.UntilWithContext(ctx, func(context.Context) { a.enqueue() }, a.cfg.ResyncPeriod)
	go a.runHealth(ctx)

	pc := controller.NewProvisionController(a.deps.Client, provisioner.Name,
		&provisioner.Provisioner{Node: a.cfg.NodeName, Client: a.deps.Client, Recycler: a},
		controller.LeaderElection(false),
		controller.VolumesInformer(a.pvInf),
		controller.ClaimsInformer(a.claimsInf),
		controller.ClassesInformer(a.scInf),
		controller.Threadiness(a.cfg.DeleteWorkers),
		controller.MetricsPort(0),
		// Failed wipes are retried with backoff without limit: the disk stays
		// Released and visible, which is safer than giving up silently.
		controller.FailedDeleteThreshold(0),
	)
	// Run blocks forever by design; its workers stop with ctx.
	go pc.Run(ctx)

	a.enqueue()
	go wait.UntilWithContext(ctx, a.worker, time.Second)
	log.Info("agent started", "node", a.cfg.NodeName, "roots", a.cfg.Roots)

	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		return err
	}
}

// Reconcile runs one pass, exactly as the agent's worker does on an event
// (without the queue's retries), for a caller that fills Caches and drives
// the agent step by step. Orphan wipes it starts run on in the background;
// WaitWipes waits for them.
func (a *Agent) Reconcile(ctx context.Context) error { return a.reconcile(ctx) }

// WaitWipes blocks until the background wipes started so far have ended.
func (a *Agent) WaitWipes() { a.orphanWipes.Wait() }

// ShutDown releases the work queue of an agent driven by Reconcile (Run
// shuts it down itself).
func (a *Agent) ShutDown() { a.queue.ShutDown() }

func (a *Agent) worker(ctx context.Context) {
	for a.processNext(ctx) {
	}
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	err := a.reconcile(ctx)
	if err == nil {
		a.queue.Forget(key)
		return true
	}
	klog.FromContext(ctx).Error(err, "reconcile failed; retrying", "node", a.cfg.NodeName)
	a.queue.AddRateLimited(key)
	return true
}

// tryBusy claims a disk for a wipe; false means another wipe holds it.
func (a *Agent) tryBusy(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, held := a.busy[id]; held {
		return false
	}
	a.busy[id] = ""
	return true
}

// holdPath records where the disk being wiped is, so that a reconcile pass
// leaves that path alone: mid-reformat the disk is briefly a blank
// filesystem without its marker, which must not be taken for a new disk.
func (a *Agent) holdPath(id, path string) {
	a.mu.Lock()
	a.busy[id] = path
	a.mu.Unlock()
}

func (a *Agent) release(id string) {
	a.mu.Lock()
	delete(a.busy, id)
	a.mu.Unlock()
}

func (a *Agent) isBusy(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, held := a.busy[id]
	return held
}

func (a *Agent) pathBusy(path string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.busy {
		if p == path {
			return true
		}
	}
	return false
}
