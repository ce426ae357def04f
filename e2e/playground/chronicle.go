package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tidb-localpv/tidb-localpv/daemon"
	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
)

// chronicleReasons are the Events the chronicle tells: everything the
// controller and the agents record. The control plane's own (Scheduled,
// SuccessfulCreate, …) are left out; the pod lines say the same shorter.
func chronicleReasons() []string {
	return []string{
		volumecontroller.ReasonOwnerRecorded, volumecontroller.ReasonStoreOfflined, volumecontroller.ReasonPDRefused,
		volumecontroller.ReasonReleased, volumecontroller.ReasonPodDeleted, volumecontroller.ReasonPVDeleted,
		volumecontroller.ReasonReleaseApproved, volumecontroller.ReasonRefused, volumecontroller.ReasonRecheckFailed,
		daemon.ReasonPublished, daemon.ReasonWiped, daemon.ReasonWipeFailed, daemon.ReasonDiskMissing,
		daemon.ReasonDiskFound, daemon.ReasonPVRemoved, daemon.ReasonDiskConflict, daemon.ReasonBadDisk,
	}
}

// chronicle prints, as it happens, what the controller chapters are about:
// controller and agent Events, our PVs' phases and recorded owners, the
// TiDB pods, and the stores as PD reports them. Each line is stamped
// relative to the chapter's moment zero, so the stream is the timeline.
type chronicle struct {
	print   func(string)
	pd      *pdsim.Server
	paths   *regexp.Regexp // a node's host root, shortened to "<node>:" in messages
	factory []informers.SharedInformerFactory
	stop    chan struct{}
	polling sync.WaitGroup

	mu       sync.Mutex
	zero     time.Time
	wall     bool                // stamp with the clock (while the user plays)
	told     map[string]bool     // reason + message already printed
	events   map[string][]string // reason → involved objects (kind/name#uid)
	stores   map[uint64]string   // last state name PD reported
	pvs      map[types.UID]pvView
	pods     map[types.UID]podView
	interest map[string]bool
}

type pvView struct {
	phase corev1.PersistentVolumePhase
	store string
}

type podView struct {
	phase    corev1.PodPhase
	node     string
	deleting bool
}

// startChronicle starts the watches (namespace default holds the TiDB pods
// and the Events of cluster-scoped objects) and the PD poller. What exists
// already is taken in silently: only changes are told.
func startChronicle(client kubernetes.Interface, pd *pdsim.Server, instance, workDir string, print func(string)) (*chronicle, error) {
	c := &chronicle{
		print: print, pd: pd, stop: make(chan struct{}), zero: time.Now(),
		paths:  regexp.MustCompile(regexp.QuoteMeta(workDir) + `/nodes/([^/\s]+)`),
		told:   map[string]bool{},
		events: map[string][]string{}, stores: map[uint64]string{},
		pvs: map[types.UID]pvView{}, pods: map[types.UID]podView{}, interest: map[string]bool{},
	}
	for _, r := range chronicleReasons() {
		c.interest[r] = true
	}
	evF := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(metav1.NamespaceDefault))
	podF := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(metav1.NamespaceDefault),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "app.kubernetes.io/instance=" + instance }))
	pvF := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = provisioner.LabelDisk }))
	c.factory = []informers.SharedInformerFactory{evF, podF, pvF}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{evF.Core().V1().Events().Informer(), cache.ResourceEventHandlerDetailedFuncs{
			AddFunc:    func(o any, initial bool) { c.event(o, initial) },
			UpdateFunc: func(_, o any) { c.event(o, false) },
		}},
		{podF.Core().V1().Pods().Informer(), cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(o any, initial bool) { c.pod(o, initial, false) }, UpdateFunc: func(_, o any) { c.pod(o, false, false) },
			DeleteFunc: func(o any) { c.pod(o, false, true) },
		}},
		{pvF.Core().V1().PersistentVolumes().Informer(), cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(o any, initial bool) { c.pv(o, initial, false) }, UpdateFunc: func(_, o any) { c.pv(o, false, false) },
			DeleteFunc: func(o any) { c.pv(o, false, true) },
		}},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			c.close()
			return nil, fmt.Errorf("chronicle: %w", err)
		}
	}
	for _, st := range pd.Stores() {
		c.stores[st.ID] = st.StateName
	}
	for _, f := range c.factory {
		f.Start(c.stop)
	}
	for _, f := range c.factory {
		for typ, ok := range f.WaitForCacheSync(c.stop) {
			if !ok {
				c.close()
				return nil, fmt.Errorf("chronicle: %v never synced", typ)
			}
		}
	}
	c.polling.Add(1)
	go c.pollPD()
	return c, nil
}

// close stops the watches and the poller and waits for them: nothing of
// the chronicle outlives the teardown.
func (c *chronicle) close() {
	if c == nil {
		return
	}
	close(c.stop)
	for _, f := range c.factory {
		f.Shutdown()
	}
	c.polling.Wait()
}

// mark makes now the chapter's moment zero.
func (c *chronicle) mark() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.zero, c.wall = time.Now(), false
	return c.zero
}

// live switches to clock stamps: the story is over, the user plays.
func (c *chronicle) live() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.wall = true
	c.mu.Unlock()
}

// short shows a path below a node's host root as "<node>:<host path>".
func (c *chronicle) short(path string) string { return c.paths.ReplaceAllString(path, "$1:") }

// say prints a line of the story's own in the timeline. PD is read first:
// the story often acts on what it just read from PD, and the PD line must
// come before the action it caused.
func (c *chronicle) say(format string, args ...any) {
	for _, st := range c.pd.Stores() {
		c.store(st)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lineLocked("▶", fmt.Sprintf(format, args...))
}

func (c *chronicle) lineLocked(who, what string) {
	stamp := fmt.Sprintf("+%6.2fs", time.Since(c.zero).Seconds())
	if c.wall {
		stamp = time.Now().Format("15:04:05.00")
	}
	c.print(fmt.Sprintf("  %s  %-5s  %s", stamp, who, c.paths.ReplaceAllString(what, "$1:")))
}

// seen lists the objects (kind/name#uid) an Event with reason was recorded on.
func (c *chronicle) seen(reason string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events[reason])
}

func (c *chronicle) event(o any, initial bool) {
	ev, ok := o.(*corev1.Event)
	if !ok || initial || !c.interest[ev.Reason] {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	obj := ev.InvolvedObject.Kind + "/" + ev.InvolvedObject.Name
	// With the UID: a recycled disk's new PV has the old one's name.
	if id := obj + "#" + string(ev.InvolvedObject.UID); !slices.Contains(c.events[ev.Reason], id) {
		c.events[ev.Reason] = append(c.events[ev.Reason], id)
	}
	// The controller records one action on each object it concerns (PV,
	// claim, pod, Node) with the same message: one line says it.
	key := ev.Reason + "\x00" + ev.Message
	if c.told[key] {
		return
	}
	c.told[key] = true
	typ := ""
	if ev.Type == corev1.EventTypeWarning {
		typ = " (Warning)"
	}
	c.lineLocked("event", fmt.Sprintf("%s%s on %s: %s", ev.Reason, typ, obj, ev.Message))
}

func (c *chronicle) pod(o any, initial, deleted bool) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	was, known := c.pods[p.UID]
	now := podView{phase: p.Status.Phase, node: p.Spec.NodeName, deleting: p.DeletionTimestamp != nil}
	c.pods[p.UID] = now
	switch {
	case initial:
		return
	case deleted:
		delete(c.pods, p.UID)
		c.lineLocked("pod", fmt.Sprintf("%s deleted (was on %s)", p.Name, dash(p.Spec.NodeName)))
		return
	case !known:
		c.lineLocked("pod", fmt.Sprintf("%s created by its StatefulSet, %s", p.Name, p.Status.Phase))
		was = podView{phase: p.Status.Phase}
	}
	if now.node != was.node {
		c.lineLocked("pod", fmt.Sprintf("%s scheduled to %s", p.Name, now.node))
	}
	if now.phase != was.phase {
		c.lineLocked("pod", fmt.Sprintf("%s %s on %s", p.Name, now.phase, dash(now.node)))
	}
	if now.deleting && !was.deleting {
		c.lineLocked("pod", fmt.Sprintf("%s terminating (on %s)", p.Name, dash(now.node)))
	}
}

func (c *chronicle) pv(o any, initial, deleted bool) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	pv, ok := o.(*corev1.PersistentVolume)
	if !ok || !provisioner.IsOurs(pv) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The agent republishes a wiped disk under the same name: the UID
	// tells the old PV from the new one.
	name := fmt.Sprintf("%s (UID %s…)", pv.Name, string(pv.UID)[:8])
	was, known := c.pvs[pv.UID]
	now := pvView{phase: pv.Status.Phase, store: pv.Annotations[provisioner.AnnStoreID]}
	c.pvs[pv.UID] = now
	switch {
	case initial:
		return
	case deleted:
		delete(c.pvs, pv.UID)
		c.lineLocked("PV", name+" deleted")
		return
	case !known:
		// Its Published event tells the creation.
		return
	}
	if now.phase != was.phase {
		c.lineLocked("PV", fmt.Sprintf("%s %s → %s", name, was.phase, now.phase))
	}
	if now.store != was.store && now.store != "" {
		c.lineLocked("PV", fmt.Sprintf("%s owner recorded: %s, TiKV store %s", name, pv.Annotations[provisioner.AnnOwnerPod], now.store))
	}
}

// pollPD tells the stores' changes as PD reports them; PD has no watch.
func (c *chronicle) pollPD() {
	defer c.polling.Done()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		for _, st := range c.pd.Stores() {
			c.store(st)
		}
	}
}

func (c *chronicle) store(st pdsim.StoreSnapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	was, known := c.stores[st.ID]
	if known && was == st.StateName {
		return
	}
	c.stores[st.ID] = st.StateName
	pod, _, _ := strings.Cut(st.Address, ".")
	switch {
	case !known:
		c.lineLocked("PD", fmt.Sprintf("store %d registered by %s (%s), %s", st.ID, pod, st.Address, st.StateName))
	case st.StateName == "Offline":
		c.lineLocked("PD", fmt.Sprintf("store %d (%s) %s → Offline: its regions move to the other stores (%d left)", st.ID, pod, was, st.RegionCount))
	default:
		c.lineLocked("PD", fmt.Sprintf("store %d (%s) %s → %s", st.ID, pod, was, st.StateName))
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
