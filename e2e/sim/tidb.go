package sim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
)

// Names of the controller's objects, as in manifests/.
const (
	ControllerAccount    = "tidb-localpv-controller"
	controllerDeployment = "manifests/controller-deployment.yaml"
	// TiKVPort is the port TiKV advertises.
	TiKVPort = 20160
)

// PD is a simulated PD for the TiDB clusters of the env, kept in step with
// the cluster's pods the way real TiKV and PD processes would: a Running
// TiKV pod registers its store (under its advertised address) and
// heartbeats; a TiKV pod that is gone, or whose node is gone, stops
// heartbeating; a Running PD pod joins as a member. Member removal and store
// offlining are left to the test, as TiDB Operator does them.
type PD struct {
	Sim *pdsim.Server
	URL string

	mu     sync.Mutex
	stores map[string]uint64 // namespace/pod → store ID
	// crashed are pods whose TiKV process died (e.g. on a failed disk):
	// they stay Running in Kubernetes, their store stops heartbeating.
	crashed map[types.UID]bool
	stop    chan struct{}
	resync  func()
}

// Crash makes the TiKV process of a pod die, as TiKV does on a disk that
// turned read-only: the pod stays, its store stops heartbeating. A new
// pod of the same name (a new UID) runs normally.
func (p *PD) Crash(pod *corev1.Pod) {
	p.mu.Lock()
	p.crashed[pod.UID] = true
	p.mu.Unlock()
	p.resync()
}

// Close stops the registrar and the simulator.
func (p *PD) Close() {
	close(p.stop)
	_ = p.Sim.Close()
}

// StartPD starts a PD simulator and its registrar for the env's pods; the
// caller closes it.
func (e *Env) StartPD(ctx context.Context, opts pdsim.Options) (*PD, error) {
	if opts.Members == nil {
		opts.Members = []string{} // members are the PD pods that run
	}
	p := &PD{Sim: pdsim.New(opts), stores: map[string]uint64{}, crashed: map[types.UID]bool{}, stop: make(chan struct{})}
	url, err := p.Sim.Start(e.pdListenAddress())
	if err != nil {
		return nil, err
	}
	p.URL = url

	f := informers.NewSharedInformerFactoryWithOptions(e.Cluster.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			// TiDB Operator v2's pods carry the v1 labels too; their
			// cluster has its own PD (see StartV2).
			o.LabelSelector = "app.kubernetes.io/component in (tikv,pd),!pingcap.com/managed-by"
		}))
	nf := informers.NewSharedInformerFactory(e.Cluster.Client, 0)
	pods := f.Core().V1().Pods().Informer()
	nodes := nf.Core().V1().Nodes().Informer()
	sync := func() { p.sync(pods.GetStore(), nodes.GetStore()) }
	p.resync = sync
	h := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { sync() }, UpdateFunc: func(any, any) { sync() }, DeleteFunc: func(any) { sync() }}
	for _, inf := range []cache.SharedIndexInformer{pods, nodes} {
		if _, err := inf.AddEventHandler(h); err != nil {
			p.Close()
			return nil, err
		}
	}
	for _, factory := range []informers.SharedInformerFactory{f, nf} {
		factory.Start(p.stop)
		factory.WaitForCacheSync(p.stop)
	}
	return p, nil
}

// StoreAddress is what TiKV in a pod advertises to PD.
func StoreAddress(pod *corev1.Pod) string {
	return fmt.Sprintf("%s.%s-tikv-peer.%s.svc:%d", pod.Name, pod.Labels["app.kubernetes.io/instance"], pod.Namespace, TiKVPort)
}

// StoreOf returns the store ID registered for a pod.
func (p *PD) StoreOf(namespace, pod string) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.stores[namespace+"/"+pod]
	return id, ok
}

// sync plays every TiKV and PD pod's side against the simulator.
func (p *PD) sync(pods, nodes cache.Store) {
	p.mu.Lock()
	defer p.mu.Unlock()
	alive := map[string]bool{}
	for _, o := range pods.List() {
		pod := o.(*corev1.Pod)
		_, nodeThere, _ := nodes.GetByKey(pod.Spec.NodeName)
		running := pod.Status.Phase == corev1.PodRunning && pod.DeletionTimestamp == nil && nodeThere && !p.crashed[pod.UID]
		if !running {
			continue
		}
		key := pod.Namespace + "/" + pod.Name
		switch pod.Labels["app.kubernetes.io/component"] {
		case "tikv":
			alive[key] = true
			// The same address while the store lives is the same store;
			// after burial PD hands out a new ID, as it does for a TiKV
			// started on a fresh disk.
			id := p.Sim.RegisterStore(StoreAddress(pod))
			if old, ok := p.stores[key]; !ok || old != id {
				p.stores[key] = id
			}
			_ = p.Sim.ResumeHeartbeats(id)
		case "pd":
			_, _ = p.Sim.AddMemberAt(pod.Name, fmt.Sprintf("%s.%s-pd-peer.%s.svc", pod.Name, pod.Labels["app.kubernetes.io/instance"], pod.Namespace))
		}
	}
	for key, id := range p.stores {
		if !alive[key] {
			// Gone pod, or gone node: heartbeats stop; a buried store refuses
			// them anyway.
			_ = p.Sim.StopHeartbeats(id)
		}
	}
}

// StartController runs one volume-controller replica with the Deployment's
// arguments, as its ServiceAccount, plus extra flags (PD endpoints, short
// timings for tests).
func (e *Env) StartController(ctx context.Context, name string, extra ...string) (*cluster.Process, error) {
	args, err := ReadContainerArgs(filepath.Join(e.opts.RepoRoot, controllerDeployment))
	if err != nil {
		return nil, err
	}
	if args, err = Rebase(args, e.opts.WorkDir); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(e.opts.WorkDir, "controller.kubeconfig")
	if _, err := os.Stat(kubeconfig); err != nil {
		if err := e.Cluster.ServiceAccountKubeconfig(ctx, Namespace, ControllerAccount, kubeconfig); err != nil {
			return nil, err
		}
	}
	args = append(args, "--kubeconfig="+kubeconfig)
	args = append(args, extra...)
	env := append(os.Environ(), "POD_NAMESPACE="+Namespace, "POD_NAME="+name)
	return e.StartProcess(name, e.Binary, args, env)
}
