package model

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// actor is one kind of step, picked at random by weight.
type actor struct {
	name   string
	weight int
	run    func(w *world)
}

// actors: the two real ones (controller, agents) and everything the model
// plays around them.
var actors = []actor{
	{"controller", 14, (*world).ctrlStep},
	{"agent", 10, func(w *world) {
		var up []*node
		for _, n := range w.nodes {
			if n.alive && n.agent != nil {
				up = append(up, n)
			}
		}
		if n, ok := pick(w, up); ok {
			w.agentStep(n)
		}
	}},
	{"time passes", 14, (*world).advance},
	{"binder and scheduler", 9, func(w *world) { w.binderStep(); w.schedulerStep() }},
	{"statefulset controller", 6, (*world).stsStep},
	{"kubelets", 10, (*world).kubeletStep},
	{"protection, pod GC, node lifecycle", 6, (*world).protectionStep},
	{"TiDB Operator", 6, (*world).operatorStep},
	{"a person", 3, (*world).personStep},
	{"nodes", 3, (*world).nodeStep},
	{"PD", 2, (*world).pdStep},
	{"lease", 1, (*world).leaseStep},
	{"agent restart", 1, (*world).agentRestartStep},
}

// leaseDuration: a standby takes the lease over this long after the
// leader lost it.
const leaseDuration = 15 * time.Second

// Run plays one history and returns the first violation (nil if none).
func Run(cfg Config, stats *Stats) (*Violation, string, error) {
	w, err := newWorld(cfg, stats)
	if err != nil {
		return nil, "", err
	}
	defer w.close()
	total := 0
	for _, a := range actors {
		total += a.weight
	}
	stats.Histories++
	for w.step = 1; w.step <= cfg.Steps && w.fail == nil; w.step++ {
		r := w.rng.IntN(total)
		var a actor
		for _, a = range actors {
			if r < a.weight {
				break
			}
			r -= a.weight
		}
		w.hist.begin(w.step, w.clock.Now(), a.name)
		if w.pd.fault != faultNone && w.step >= w.faultUntil {
			w.pd.fault = faultNone
			w.logf("PD endpoint: fault over")
		}
		if w.leader < 0 && w.clock.Since(w.leaderLost) >= leaseDuration {
			w.leader = w.rng.IntN(len(w.ctrls))
			w.ctrls[w.leader].lead(w)
		}
		before := w.pvVersions()
		a.run(w)
		w.informAgents(before, a.name)
		for _, c := range w.pd.tick() {
			w.logf("%s", c)
		}
		w.afterStep()
		w.snapshot()
		for _, ci := range w.ctrls {
			w.informCtrl(ci) // informers run in every instance, leading or not
		}
		stats.Steps++
	}
	last := 40
	if cfg.FullHistory {
		last = len(w.hist.steps)
	}
	if w.fail != nil {
		return w.fail, w.hist.render(w.fail.Objects, last), nil
	}
	if cfg.FullHistory {
		return nil, w.hist.render(nil, last), nil
	}
	return nil, "", nil
}

// pvVersions maps each PV to its node and resourceVersion.
func (w *world) pvVersions() map[string][2]string {
	out := map[string][2]string{}
	for _, pv := range w.pvs() {
		out[pv.Name] = [2]string{pv.Labels[provisioner.LabelNode], pv.ResourceVersion}
	}
	return out
}

// informAgents is the agents' PV informers: a change to a node's PVs
// triggers a reconcile of its agent (if it runs), which may still see a
// cache a few steps old.
func (w *world) informAgents(before map[string][2]string, actor string) {
	if actor == "agent" {
		return // its own writes: the next event or resync brings it back
	}
	changed := map[string]bool{}
	after := w.pvVersions()
	for name, v := range after {
		if before[name] != v {
			changed[v[0]], changed[before[name][0]] = true, true
		}
	}
	for name, v := range before {
		if _, ok := after[name]; !ok {
			changed[v[0]] = true
		}
	}
	for _, n := range w.nodes {
		if changed[n.name] && n.alive && n.agent != nil {
			w.logf("(a PV of %s changed)", n.name)
			w.agentStep(n)
		}
	}
}

// advance moves the clock: mostly seconds, sometimes minutes, now and
// then past PD's max-store-down-time.
func (w *world) advance() {
	var d time.Duration
	switch r := w.rng.IntN(100); {
	case r < 70:
		d = time.Duration(1+w.rng.IntN(15)) * time.Second
	case r < 90:
		d = time.Duration(15+w.rng.IntN(105)) * time.Second
	case r < 98:
		d = time.Duration(2+w.rng.IntN(8)) * time.Minute
	default:
		d = time.Duration(30+w.rng.IntN(10)) * time.Minute
	}
	w.clock.Step(d)
	w.logf("%s pass", d)
	w.heartbeat()
}

// personStep is an operator at a terminal.
func (w *world) personStep() {
	switch w.rng.IntN(10) {
	case 9:
		w.unmountOrMount()
	case 0, 1:
		if p, ok := pick(w, w.pods()); ok && p.DeletionTimestamp == nil {
			w.must(w.api.Delete(resPod, namespace, p.Name))
			w.logf("person: kubectl delete pod %s (UID %s)", p.Name, p.UID)
		}
	case 2:
		// The claim is recreated under the same name by its StatefulSet.
		if c, ok := pick(w, w.claims()); ok && c.DeletionTimestamp == nil {
			w.must(w.api.Delete(resPVC, namespace, c.Name))
			w.logf("person: kubectl delete pvc %s (UID %s)", c.Name, c.UID)
		}
	case 3:
		if pv, ok := pick(w, w.pvs()); ok && pv.DeletionTimestamp == nil {
			w.must(w.api.Delete(resPV, "", pv.Name))
			w.logf("person: kubectl delete pv %s (UID %s, %s)", pv.Name, pv.UID, pv.Status.Phase)
			w.abandon(pv)
		}
	case 4, 5:
		w.editPV()
	case 6:
		w.restoreLabels()
	case 7:
		// Manual recovery of a dead node's store.
		var dead []*pdStore
		for _, s := range w.pd.sortedStores() {
			if ph := w.pd.phase(s); ph == pd.PhaseDisconnected || ph == pd.PhaseDown {
				dead = append(dead, s)
			}
		}
		if s, ok := pick(w, dead); ok {
			err := w.pd.remove(s.id)
			w.logf("person: pd-ctl store delete %d: %v", s.id, err)
		}
	default:
		var running []*process
		for _, uid := range sortedKeys(w.procs) {
			running = append(running, w.procs[uid])
		}
		if p, ok := pick(w, running); ok {
			p.start = metav1.NewTime(w.clock.Now())
			if s, listed := w.pd.stores[p.store]; listed && p.set.comp == compTiKV {
				s.start = p.start.Time
			}
			w.logf("person: container of %s restarts", p.pod)
		}
	}
}

// unmountOrMount: someone unmounts a disk no program uses (the agent then
// finds its PV without a disk), or mounts one back.
func (w *world) unmountOrMount() {
	d, _ := pick(w, w.disks)
	m := d.node.mounts
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, mt := range m.mounts {
		if mt.MountPoint != d.path {
			continue
		}
		for _, p := range w.procs {
			if p.disk == d {
				return // busy
			}
		}
		m.mounts = slices.Delete(m.mounts, i, i+1)
		w.logf("person: umount %s", d.path)
		return
	}
	m.mounts = append(m.mounts, discovery.Mount{MountPoint: d.path, Source: "tmpfs", FSType: "tmpfs", Root: "/"})
	w.logf("person: mount %s", d.path)
}

// abandon notes that an operator gave a PV's disk up: the data on it, and
// what its pod writes while the PV lasts.
func (w *world) abandon(pv *corev1.PersistentVolume) {
	if d := w.diskOf(pv); d != nil {
		d.abandonedPV = string(pv.UID)
		for _, x := range d.data {
			x.abandoned = true
		}
	}
}

// editPV: a GitOps tool or kubectl changes a PV's metadata.
func (w *world) editPV() {
	pv, ok := pick(w, w.pvs())
	if !ok {
		return
	}
	switch w.rng.IntN(5) {
	case 0:
		k, _ := pick(w, []string{provisioner.LabelDisk, provisioner.LabelNode, provisioner.LabelComponent, provisioner.LabelCluster})
		if _, had := pv.Labels[k]; !had {
			return
		}
		delete(pv.Labels, k)
		w.logf("person: kubectl label pv %s %s-", pv.Name, k)
	case 1:
		for _, k := range []string{provisioner.AnnOwnerClaim, provisioner.AnnStoreID, provisioner.AnnPDMember, provisioner.AnnPDClusterID, provisioner.AnnOwnerState} {
			delete(pv.Annotations, k)
		}
		w.logf("person: strips the ownership annotations of PV %s", pv.Name)
	case 2:
		if _, had := pv.Annotations[provisioner.AnnReleaseApproved]; !had {
			return
		}
		delete(pv.Annotations, provisioner.AnnReleaseApproved)
		w.logf("person: removes the approval of PV %s", pv.Name)
	default:
		// GitOps puts back the metadata of an older version of the object.
		old := w.olderPV(pv)
		if old == nil {
			return
		}
		pv.Labels, pv.Annotations = old.Labels, old.Annotations
		w.logf("person: GitOps reverts the labels and annotations of PV %s to an older version", pv.Name)
	}
	w.put(pv)
}

func (w *world) olderPV(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
	s := w.snaps[w.rng.IntN(len(w.snaps))]
	for _, o := range s.objects[resPV] {
		if old := o.(*corev1.PersistentVolume); old.UID == pv.UID {
			return old.DeepCopy()
		}
	}
	return nil
}

// restoreLabels: someone follows the agent's event and labels a PV again.
func (w *world) restoreLabels() {
	for _, pv := range w.pvs() {
		d := w.diskOf(pv)
		if d == nil || (pv.Labels[provisioner.LabelDisk] != "" && pv.Labels[provisioner.LabelNode] != "") {
			continue
		}
		if pv.Labels == nil {
			pv.Labels = map[string]string{}
		}
		pv.Labels[provisioner.LabelDisk], pv.Labels[provisioner.LabelNode] = d.id, d.node.name
		w.put(pv)
		w.logf("person: kubectl label pv %s %s=%s %s=%s", pv.Name, provisioner.LabelDisk, d.id, provisioner.LabelNode, d.node.name)
		return
	}
}

// nodeStep: machines die and come back; Node objects are deleted by an
// autoscaler while the machine is fine, or by the cloud after it died,
// and re-created when its kubelet registers.
func (w *world) nodeStep() {
	now := w.clock.Now()
	var dead, alive []*node
	for _, n := range w.nodes {
		if n.alive {
			alive = append(alive, n)
		} else {
			dead = append(dead, n)
		}
	}
	if n, ok := pick(w, dead); ok && w.rng.IntN(3) == 0 {
		n.alive = true
		w.logf("node %s comes back", n.name)
		w.registerNode(n)
		w.must(w.startAgent(n))
		return
	}
	switch r := w.rng.IntN(20); {
	case r < 6:
		n, ok := pick(w, alive)
		if !ok || len(alive) < 3 {
			return
		}
		n.alive, n.diedAt = false, now
		w.stopAgent(n)
		for _, uid := range sortedKeys(w.procs) {
			if w.procs[uid].node == n {
				w.stopProcess(uid)
			}
		}
		w.logf("node %s dies", n.name)
	case r < 10:
		if n, ok := pick(w, alive); ok && w.getNode(n.name) != nil {
			w.must(w.api.Delete(resNode, "", n.name))
			n.objectGoneAt = now
			w.logf("autoscaler deletes Node %s (the machine is fine)", n.name)
		}
	case r < 17:
		if n, ok := pick(w, dead); ok && w.getNode(n.name) != nil {
			w.must(w.api.Delete(resNode, "", n.name))
			n.objectGoneAt = now
			w.logf("cloud controller deletes Node %s of a dead machine", n.name)
		}
	default:
		if n, ok := pick(w, alive); ok && w.getNode(n.name) == nil {
			w.registerNode(n)
		}
	}
}

// registerNode is a kubelet (re)registering: the Node object exists and
// is Ready.
func (w *world) registerNode(n *node) {
	obj := w.getNode(n.name)
	if obj == nil {
		w.must(w.createNodeObject(n))
		w.logf("kubelet %s registers its Node", n.name)
		return
	}
	if !nodeReady(obj) {
		setNodeReady(obj, true, w.clock.Now())
		w.put(obj)
		n.notReadySince = time.Time{}
		w.logf("node %s Ready", n.name)
	}
}

// pdStep: faults of PD's endpoint, remove-tombstone, pd-recover, rebuild.
func (w *world) pdStep() {
	switch r := w.rng.IntN(100); {
	case r < 50:
		// A fault lasts a few steps, sometimes long enough for a grace
		// period to pass.
		w.pd.fault = pdFault(1 + w.rng.IntN(int(faultOtherCluster)))
		w.faultUntil = w.step + 3 + w.rng.IntN(30)
		w.logf("PD endpoint: %s until step %d", w.pd.fault, w.faultUntil)
	case r < 88:
		w.logf("PD: remove-tombstone drops %d stores", w.pd.removeTombstones())
	case r < 99:
		w.pd.pdRecover()
		w.logf("PD: pd-recover (cluster %d); stores come back as their TiKVs report", w.pd.clusterID)
	default:
		id := 7714128303309439000 + w.rng.Uint64N(1000)
		w.pd.rebuild(id, []pd.Member{{Name: "pd-rebuilt", MemberID: 90000 + uint64(w.step)}})
		w.logf("PD: rebuilt as a new cluster %d", id)
	}
}

// leaseStep: the leader loses the lease (a standby takes over after the
// lease duration), or a controller process restarts.
func (w *world) leaseStep() {
	if w.rng.IntN(3) > 0 {
		if w.leader >= 0 {
			w.logf("%s loses the lease", w.ctrls[w.leader].name)
			w.ctrls[w.leader].stop()
			w.leader, w.leaderLost = -1, w.clock.Now()
		}
		return
	}
	i := w.rng.IntN(2)
	old := w.ctrls[i]
	old.stop()
	old.c.ShutDown()
	c, err := w.newCtrl(old.name)
	w.must(err)
	w.ctrls[i] = c
	if w.leader == i {
		w.leader, w.leaderLost = -1, w.clock.Now()
	}
	w.logf("%s restarts (a new process, standby)", old.name)
}

// agentRestartStep restarts a live node's agent (or starts a crashed one).
func (w *world) agentRestartStep() {
	n, _ := pick(w, w.nodes)
	if !n.alive {
		return
	}
	w.stopAgent(n)
	w.must(w.startAgent(n))
	w.logf("agent/%s restarts", n.name)
}

func (w *world) String() string { return fmt.Sprintf("seed %d", w.cfg.Seed) }
