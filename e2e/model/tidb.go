package model

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// The workloads: what a TiKV, a PD member and a plain program do with the
// disk they are given — the model's ground truth is written here.

// process is the container of a pod the kubelet runs.
type process struct {
	pod   string
	uid   string
	set   *set
	node  *node
	disk  *disk
	start metav1.Time
	// state: running (heartbeats, Ready), waiting (PD refuses it for now),
	// crashloop (never comes up on this disk).
	state string
	why   string
	store uint64
	// cluster is the PD cluster the store or member belongs to.
	cluster uint64
}

func (p *process) address() string {
	return fmt.Sprintf("%s.%s-tikv-peer.%s.svc:20160", p.pod, cluster, namespace)
}

// kubeletStep runs each live node's pods: a pod whose claim's disk is
// mounted here starts its process; a pod being deleted stops and goes; a
// process whose pod is gone stops.
func (w *world) kubeletStep() {
	now := w.clock.Now()
	for _, n := range w.nodes {
		if !n.alive {
			continue
		}
		if w.getNode(n.name) == nil && now.Sub(n.objectGoneAt) >= 10*time.Second && w.rng.IntN(3) == 0 {
			// The kubelet notices its Node is gone and registers again.
			w.registerNode(n)
		}
		for _, p := range w.pods() {
			if p.Spec.NodeName != n.name {
				continue
			}
			if p.DeletionTimestamp != nil {
				w.stopProcess(string(p.UID))
				w.must(w.api.Delete(resPod, namespace, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}))
				w.logf("kubelet %s: pod %s (UID %s) stopped and gone", n.name, p.Name, p.UID)
				continue
			}
			proc := w.procs[string(p.UID)]
			if proc == nil {
				d := w.mountedDiskOf(p, n)
				if d == nil {
					continue // ContainerCreating: the volume is not there
				}
				proc = &process{pod: p.Name, uid: string(p.UID), set: w.setOf(p), node: n, disk: d, start: metav1.NewTime(now)}
				w.procs[proc.uid] = proc
				if p.Status.StartTime == nil {
					p.Status.StartTime = &proc.start
				}
				p.Status.Phase = corev1.PodRunning
				w.logf("kubelet %s: starts pod %s (UID %s) on %s", n.name, p.Name, p.UID, d.path)
			}
			w.runProcess(proc)
			setPodReady(p, proc.state == "running", now)
			w.put(p)
		}
		for _, uid := range sortedKeys(w.procs) {
			if w.procs[uid].node == n && w.podByUID(uid) == nil {
				w.stopProcess(uid)
			}
		}
	}
}

func (w *world) podByUID(uid string) *corev1.Pod {
	for _, p := range w.pods() {
		if string(p.UID) == uid {
			return p
		}
	}
	return nil
}

func (w *world) setOf(p *corev1.Pod) *set {
	for _, s := range w.sets {
		for i := range s.max {
			if s.podName(i) == p.Name {
				return s
			}
		}
	}
	panic("pod of no set: " + p.Name)
}

func (w *world) stopProcess(uid string) {
	if p, ok := w.procs[uid]; ok {
		w.logf("  process of %s stops", p.pod)
		delete(w.procs, uid)
	}
}

// mountedDiskOf is the disk the kubelet would mount for the pod's claim on
// node n: the local path of the PV the claim is bound to.
func (w *world) mountedDiskOf(p *corev1.Pod, n *node) *disk {
	c := w.getClaim(claimOf(p))
	if c == nil || c.Spec.VolumeName == "" {
		return nil
	}
	pv := w.getPV(c.Spec.VolumeName)
	if pv == nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != c.UID || pv.Spec.Local == nil {
		return nil
	}
	for _, d := range n.disks {
		if d.path == pv.Spec.Local.Path && d.mounted() {
			return d
		}
	}
	return nil
}

// runProcess is what the program makes of its disk and of PD.
func (w *world) runProcess(p *process) {
	switch p.set.comp {
	case compTiKV:
		w.runTiKV(p)
	case compPD:
		w.runPD(p)
	default:
		w.runWeb(p)
	}
}

func (w *world) setState(p *process, state, why string) {
	if p.state != state || p.why != why {
		w.logf("  %s: %s (%s)", p.pod, state, why)
	}
	p.state, p.why = state, why
}

// runTiKV: a TiKV finds its store on the disk, or joins PD as a new one.
func (w *world) runTiKV(p *process) {
	var mine, foreign *datum
	for _, x := range p.disk.data {
		if x.kind != compTiKV {
			continue
		}
		if x.cluster == w.pd.clusterID {
			mine = x
		} else {
			foreign = x
		}
	}
	switch {
	case mine != nil:
		p.store, p.cluster = mine.id, mine.cluster
		s, listed := w.pd.stores[mine.id]
		switch {
		case listed && s.state == pd.StoreTombstone:
			w.setState(p, "crashloop", fmt.Sprintf("store %d is tombstone", mine.id))
		case listed:
			w.pd.heartbeat(mine.id)
			w.setState(p, "running", fmt.Sprintf("store %d", mine.id))
		case w.pd.lost[mine.id] != nil:
			w.setState(p, "waiting", fmt.Sprintf("store %d waits for the recovered PD", mine.id))
		default:
			w.setState(p, "crashloop", fmt.Sprintf("store %d is gone from PD", mine.id))
		}
	case foreign != nil:
		w.setState(p, "crashloop", fmt.Sprintf("cluster ID mismatch: the disk holds store %d of cluster %d", foreign.id, foreign.cluster))
	default:
		id, err := w.pd.register(p.address(), p.start.Time)
		if err != nil {
			w.setState(p, "waiting", err.Error())
			return
		}
		p.store, p.cluster = id, w.pd.clusterID
		w.write(p.disk, &datum{kind: compTiKV, cluster: w.pd.clusterID, id: id, file: fmt.Sprintf("tikv-store-%d-%d", w.pd.clusterID, id)})
		w.setState(p, "running", fmt.Sprintf("registered store %d", id))
	}
}

// runPD: a PD member finds its data, or joins as a new member.
func (w *world) runPD(p *process) {
	var mine, foreign *datum
	for _, x := range p.disk.data {
		switch {
		case x.kind != compPD:
		case x.cluster == w.pd.clusterID:
			mine = x
		default:
			foreign = x
		}
	}
	switch {
	case mine == nil && foreign != nil:
		w.setState(p, "crashloop", fmt.Sprintf("cluster ID mismatch: the disk holds member %d of cluster %d", foreign.id, foreign.cluster))
	case mine != nil && w.pd.removed[storeKey{mine.cluster, mine.id}]:
		w.setState(p, "crashloop", fmt.Sprintf("member %d was removed", mine.id))
	case mine != nil:
		w.setState(p, "running", fmt.Sprintf("member %d", mine.id))
	default:
		if _, taken := w.pd.member(p.pod); taken {
			w.setState(p, "crashloop", "a member named "+p.pod+" already exists")
			return
		}
		m := w.pd.addMember(p.pod, namespace)
		w.write(p.disk, &datum{kind: compPD, cluster: w.pd.clusterID, id: m.MemberID, file: fmt.Sprintf("pd-member-%d-%d", w.pd.clusterID, m.MemberID)})
		w.setState(p, "running", fmt.Sprintf("joined as member %d", m.MemberID))
	}
}

// runWeb: a plain program writes its claim's data once.
func (w *world) runWeb(p *process) {
	c := w.getClaim(claimOf(w.getPod(p.pod)))
	if c == nil {
		return
	}
	for _, x := range p.disk.data {
		if x.kind == compWeb && x.claim == string(c.UID) {
			w.setState(p, "running", "data there")
			return
		}
	}
	w.write(p.disk, &datum{kind: compWeb, claim: string(c.UID), file: "web-" + string(c.UID)})
	w.setState(p, "running", "wrote its data")
}

// write puts a datum on a disk as a real file.
func (w *world) write(d *disk, x *datum) {
	x.written = w.step
	for _, pv := range w.pvs() {
		if string(pv.UID) == d.abandonedPV {
			x.abandoned = true
		}
	}
	if err := os.WriteFile(filepath.Join(d.path, x.file), []byte(x.String()), 0o644); err != nil {
		panic(err)
	}
	d.data = append(d.data, x)
	w.logf("  %s now holds %s", d.path, x)
}

// heartbeat: time passed; every running TiKV heartbeated all along, and
// one store lost by a pd-recover comes back.
func (w *world) heartbeat() {
	recovered := false
	for _, uid := range sortedKeys(w.procs) {
		p := w.procs[uid]
		if p.set.comp != compTiKV || p.store == 0 || p.cluster != w.pd.clusterID {
			continue
		}
		switch {
		case p.state == "running":
			w.pd.heartbeat(p.store)
		case p.state == "waiting" && !recovered && w.pd.recoverStore(p.store):
			recovered = true
			w.logf("PD: store %d is back after pd-recover", p.store)
		}
	}
}

// operatorStep is TiDB Operator v1: scale-in (offline the store or delete
// the member, wait for Tombstone, remove the pod), its PVC reclaim,
// restoring Retain on PVs, stamping store-id labels, scale-out.
func (w *world) operatorStep() {
	s := w.sets[w.rng.IntN(2)] // TiKV or PD
	switch w.rng.IntN(7) {
	case 0, 1:
		w.scaleIn(s)
	case 2:
		if s.scaleIn == nil && s.replicas < s.max {
			s.replicas++
			w.logf("operator: scales %s out to %d", s.name, s.replicas)
		}
	case 3:
		// PVC reclaim of a scaled-in ordinal whose pod is gone; with
		// enablePVReclaim the PV is set to Delete first.
		for i := s.replicas; i < s.max; i++ {
			c := w.getClaim(s.claimName(i))
			if c == nil || c.DeletionTimestamp != nil || w.getPod(s.podName(i)) != nil {
				continue
			}
			if pv := w.getPV(c.Spec.VolumeName); pv != nil && w.rng.IntN(2) == 0 {
				pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
				w.put(pv)
				w.abandon(pv)
				w.logf("operator: sets PV %s to Delete", pv.Name)
			}
			w.must(w.api.Delete(resPVC, namespace, c.Name))
			w.logf("operator: deletes claim %s (UID %s) of scaled-in %s", c.Name, c.UID, s.podName(i))
			return
		}
	case 4:
		// The operator keeps its PVs at pvReclaimPolicy (Retain), also
		// while a claim is being released.
		var ours []*corev1.PersistentVolume
		for _, pv := range w.pvs() {
			if pv.Spec.ClaimRef != nil && pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete && pv.Labels[provisioner.LabelComponent] != compWeb {
				ours = append(ours, pv)
			}
		}
		if pv, ok := pick(w, ours); ok {
			pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
			w.put(pv)
			w.logf("operator: sets PV %s back to Retain", pv.Name)
		}
	default:
		// store-id labels, from whatever store PD lists at the pod's
		// address — possibly its previous incarnation's.
		p := w.getPod(s.podName(w.rng.IntN(s.max)))
		if p == nil || s.comp != compTiKV {
			return
		}
		var ids []uint64
		addr := (&process{pod: p.Name}).address()
		for _, st := range w.pd.sortedStores() {
			if st.address == addr {
				ids = append(ids, st.id)
			}
		}
		if id, ok := pick(w, ids); ok {
			p.Labels[labelStoreID] = strconv.FormatUint(id, 10)
			w.put(p)
			w.logf("operator: labels pod %s store-id %d", p.Name, id)
		}
	}
}

func (w *world) scaleIn(s *set) {
	if s.scaleIn == nil {
		if s.replicas <= s.min {
			return
		}
		k := s.replicas - 1
		pod := s.podName(k)
		if s.comp == compPD {
			if w.pd.deleteMember(pod) {
				w.logf("operator: deletes PD member %s", pod)
			}
			s.replicas = k
			w.logf("operator: scales %s in to %d", s.name, k)
			return
		}
		addr := (&process{pod: pod}).address()
		for _, st := range w.pd.sortedStores() {
			if st.address == addr && st.state != pd.StoreTombstone {
				if err := w.pd.remove(st.id); err != nil {
					w.logf("operator: scale-in of %s: PD refuses to delete store %d: %v", pod, st.id, err)
					return
				}
				w.logf("operator: scale-in of %s deletes store %d", pod, st.id)
				s.scaleIn = &scaleIn{ordinal: k, store: st.id}
				return
			}
		}
		s.replicas = k
		w.logf("operator: scales %s in to %d (no store)", s.name, k)
		return
	}
	st, listed := w.pd.stores[s.scaleIn.store]
	if listed && st.state != pd.StoreTombstone {
		return // still draining
	}
	s.replicas = s.scaleIn.ordinal
	w.logf("operator: store %d is gone; scales %s in to %d", s.scaleIn.store, s.name, s.replicas)
	s.scaleIn = nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
