package model

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"

	"github.com/tidb-localpv/tidb-localpv/daemon"
	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// The real code under test: two volume-controller instances sharing a
// lease, and one agent per live node. Each talks to the API through its
// own clientset, whose hook checks every write of ours as it happens.

// ctrlInstance is one volume-controller process.
type ctrlInstance struct {
	name   string
	c      *volumecontroller.Controller
	caches *volumecontroller.Caches
	client *fake.Clientset
	ctx    context.Context
	cancel context.CancelFunc
	// last is the newest snapshot each cache has shown.
	last map[schema.GroupVersionResource]int
}

func (w *world) newCtrl(name string) (*ctrlInstance, error) {
	ci := &ctrlInstance{name: name, caches: volumecontroller.NewCaches(), last: map[schema.GroupVersionResource]int{}}
	ci.ctx, ci.cancel = context.WithCancel(context.Background())
	ci.cancel() // a standby: not leading
	ci.client = w.api.clientset(w.ourHook(name, func() context.Context { return ci.ctx }, func() {
		if w.rng.IntN(400) == 0 {
			w.logf("%s loses the lease in the middle of an action", name)
			w.stats.count("lease lost mid-action")
			ci.stop()
			w.leader, w.leaderLost = -1, w.clock.Now()
		}
	}))
	tmpl, err := pd.ParseEndpointTemplate(pd.DefaultEndpointTemplate)
	if err != nil {
		return nil, err
	}
	client := &pdClient{pd: w.pd, caller: name, check: w.checkOffline, offlined: w.offlined, log: func(c pdCall) {
		if c.err != nil {
			w.logf("  %s → PD %s: %v", c.caller, c.op, c.err)
		} else {
			w.logf("  %s → PD %s", c.caller, c.op)
		}
	}}
	ci.c, err = volumecontroller.New(volumecontroller.Config{
		Policy: w.policy, PDTemplate: tmpl, PollInterval: pollInterval,
		PDCacheTTL: 1, Workers: 1,
	}, volumecontroller.Deps{
		Client: ci.client, Clock: w.clock, Recorder: &recorder{w: w, who: name},
		Registry: prometheus.NewRegistry(), Caches: ci.caches,
		Dial: func(endpoint string) (volumecontroller.PD, error) {
			if endpoint != pdEndpoint {
				return nil, fmt.Errorf("unexpected PD endpoint %s", endpoint)
			}
			return client, nil
		},
	})
	return ci, err
}

func (ci *ctrlInstance) lead(w *world) {
	ci.ctx, ci.cancel = context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	w.logf("%s acquires the lease", ci.name)
}

func (ci *ctrlInstance) stop() { ci.cancel() }

// ctrlStep is the leader's poll: every PV it caches, synced in name order,
// from caches that may lag.
func (w *world) ctrlStep() {
	if w.leader < 0 {
		w.logf("no controller holds the lease")
		return
	}
	ci := w.ctrls[w.leader]
	w.informCtrl(ci)
	names := ci.caches.PVs.ListKeys()
	sort.Strings(names)
	w.logf("%s syncs %d PVs", ci.name, len(names))
	for _, name := range names {
		if ci.ctx.Err() != nil {
			return
		}
		if err := ci.c.SyncPV(ci.ctx, name); err != nil {
			w.logf("  sync %s: %v", name, err)
		}
	}
}

// informCtrl is a controller's informers catching up (with the lag they
// may have); standbys run them too.
func (w *world) informCtrl(ci *ctrlInstance) {
	fill(ci.caches.PVs, w.views(resPV, ci.last), func(o runtime.Object) bool {
		return o.(*corev1.PersistentVolume).Labels[provisioner.LabelDisk] != ""
	})
	fill(ci.caches.PVCs, w.views(resPVC, ci.last), nil)
	fill(ci.caches.Pods, w.views(resPod, ci.last), func(o runtime.Object) bool {
		c := o.(*corev1.Pod).Labels[labelComponent]
		return c == compTiKV || c == compPD
	})
	fill(ci.caches.Nodes, w.views(resNode, ci.last), nil)
}

// fill brings a cache through the states it has not shown yet.
func fill(idx cache.Indexer, states [][]runtime.Object, keep func(runtime.Object) bool) {
	for _, objs := range states {
		var items []any
		for _, o := range objs {
			if keep == nil || keep(o) {
				items = append(items, o.DeepCopyObject())
			}
		}
		if err := idx.Replace(items, ""); err != nil {
			panic(err)
		}
	}
}

// agentInstance is one agent process on a node.
type agentInstance struct {
	a      *daemon.Agent
	prov   *provisioner.Provisioner
	caches *daemon.Caches
	ctx    context.Context
	cancel context.CancelFunc
	last   map[schema.GroupVersionResource]int
}

func (w *world) startAgent(n *node) error {
	ai := &agentInstance{caches: daemon.NewCaches(), last: map[schema.GroupVersionResource]int{}}
	ai.ctx, ai.cancel = context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	who := "agent/" + n.name
	client := w.api.clientset(w.ourHook(who, func() context.Context { return ai.ctx }, func() {
		if w.inDelete && w.rng.IntN(8) == 0 {
			w.logf("%s crashes in the middle of a Delete", who)
			w.stats.count("agent crash mid-wipe")
			ai.cancel()
		}
	}))
	a, err := daemon.New(daemon.Config{
		NodeName:           n.name,
		Roots:              discovery.Roots{{Class: classTiKV, Dir: n.disksDir(classTiKV)}, {Class: classPD, Dir: n.disksDir(classPD)}},
		InventoryNamespace: "tidb-localpv", InventoryName: "tidb-localpv-inventory",
		StateDir: n.stateDir, ResyncPeriod: resyncPeriod, FSWipe: provisioner.FSWipeAuto,
		DevDir: "/nonexistent/dev", ByIDDir: "/nonexistent/by-id", SysBlockDir: "/nonexistent/sys",
	}, daemon.Deps{
		Client: client, Mounts: n.mounts, Sizer: sizer{}, Registry: prometheus.NewRegistry(),
		Clock: w.clock, Caches: ai.caches, Recorder: &recorder{w: w, who: who},
	})
	if err != nil {
		return err
	}
	ai.a = a
	ai.prov = &provisioner.Provisioner{Node: n.name, Client: client, Recycler: a}
	n.agent = ai
	return nil
}

func (n *node) disksDir(class string) string { return filepath.Join(n.base, "mnt", class) }

// stopAgent ends an agent process: its context goes, and a wipe it runs in
// the background stops at its next check, leaving the disk marked wiping.
func (w *world) stopAgent(n *node) {
	if n.agent == nil {
		return
	}
	n.agent.cancel()
	n.agent.a.WaitWipes()
	n.agent.a.ShutDown()
	n.agent = nil
}

// agentStep is one pass of a node's agent: a reconcile (waiting for the
// orphan wipes it starts), then what the provisioner library does with the
// Released PVs of reclaimPolicy Delete it caches: Delete each.
func (w *world) agentStep(n *node) {
	ai := n.agent
	who := "agent/" + n.name
	fill(ai.caches.PVs, w.views(resPV, ai.last), func(o runtime.Object) bool {
		return o.(*corev1.PersistentVolume).Labels[provisioner.LabelNode] == n.name
	})
	fill(ai.caches.StorageClasses, w.views(resSC, ai.last), nil)
	fill(ai.caches.Nodes, w.views(resNode, ai.last), func(o runtime.Object) bool {
		return o.(*corev1.Node).Name == n.name
	})
	w.logf("%s reconciles", who)
	err := ai.a.Reconcile(ai.ctx)
	ai.a.WaitWipes()
	if err != nil {
		w.logf("  reconcile: %v", err)
	}
	w.checkWipes("orphan", nil)
	var released []*corev1.PersistentVolume
	for _, o := range ai.caches.PVs.List() {
		pv := o.(*corev1.PersistentVolume)
		if pv.Status.Phase == corev1.VolumeReleased && pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete &&
			pv.DeletionTimestamp == nil && pv.Annotations[provisioner.AnnProvisionedBy] == provisioner.Name {
			released = append(released, pv)
		}
	}
	sort.Slice(released, func(i, j int) bool { return released[i].Name < released[j].Name })
	for _, pv := range released {
		if ai.ctx.Err() != nil {
			break
		}
		w.logf("  library: Delete %s", pv.Name)
		before := w.getPV(pv.Name)
		w.inDelete = true
		err := ai.prov.Delete(ai.ctx, pv)
		w.inDelete = false
		var ignored *controller.IgnoredError
		switch {
		case errors.As(err, &ignored):
			w.logf("    %s", ignored.Reason)
		case err != nil:
			w.logf("    %v", err)
		}
		w.checkWipes("delete", before)
	}
	if ai.ctx.Err() != nil {
		w.logf("%s is down (its context ended)", who)
		w.stopAgent(n)
	}
}

type sizer struct{}

func (sizer) FilesystemSize(string) (int64, error)  { return 100 << 30, nil }
func (sizer) BlockDeviceSize(string) (int64, error) { return 100 << 30, nil }

// ourHook is the clientset hook of one process of ours: a request after its
// context ended fails as client-go's would; interrupt may end it on a read
// (the lease lost, the process killed mid-action); every write that
// succeeds goes to the invariants with the object as it was before.
func (w *world) ourHook(who string, ctx func() context.Context, interrupt func()) hook {
	return func(a k8stesting.Action, next k8stesting.ReactionFunc) (bool, runtime.Object, error) {
		if err := ctx().Err(); err != nil {
			return true, nil, err
		}
		switch a.GetVerb() {
		case "get", "list":
			interrupt()
			return next(a)
		}
		before := w.objectOf(a)
		handled, obj, err := next(a)
		if err == nil {
			w.onOurWrite(who, a, before)
		} else {
			w.logf("  %s %s %s %s: %v", who, a.GetVerb(), a.GetResource().Resource, nameOf(a), err)
		}
		return handled, obj, err
	}
}

// objectOf is the stored object an action names, before the action.
func (w *world) objectOf(a k8stesting.Action) runtime.Object {
	name := nameOf(a)
	if name == "" {
		return nil
	}
	o, err := w.api.Get(a.GetResource(), a.GetNamespace(), name)
	if err != nil {
		return nil
	}
	return o
}

func nameOf(a k8stesting.Action) string {
	switch a := a.(type) {
	case k8stesting.GetAction:
		return a.GetName()
	case k8stesting.DeleteAction:
		return a.GetName()
	case k8stesting.PatchAction:
		return a.GetName()
	case k8stesting.CreateAction:
		if m, ok := a.GetObject().(interface{ GetName() string }); ok {
			return m.GetName()
		}
	case k8stesting.UpdateAction:
		if m, ok := a.GetObject().(interface{ GetName() string }); ok {
			return m.GetName()
		}
	}
	return ""
}

// recorder puts our events into the history.
type recorder struct {
	w   *world
	who string
}

func (r *recorder) Event(obj runtime.Object, typ, reason, msg string) {
	name := ""
	if m, ok := obj.(interface{ GetName() string }); ok {
		name = m.GetName()
	} else if ref, ok := obj.(*corev1.ObjectReference); ok {
		name = ref.Kind + "/" + ref.Name
	}
	r.w.hist.event(fmt.Sprintf("  event %s %s %s on %s: %s", r.who, typ, reason, name, msg))
	if reason == daemon.ReasonWiped {
		r.w.stats.count("disks recycled (Wiped events)")
	}
}

func (r *recorder) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	r.Event(obj, typ, reason, fmt.Sprintf(format, args...))
}

func (r *recorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	r.Eventf(obj, typ, reason, format, args...)
}
