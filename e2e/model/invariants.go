package model

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// The invariants, checked at the moment an action of ours happens (through
// the clientset hooks and the PD client) and after every step:
//
//  1. no wipe, release approval, claim deletion or pod deletion by our code
//     touches a disk whose data is still needed;
//  2. a store is offlined only while Disconnected or Down and its node is
//     dead by the rules — never while Up;
//  3. no destructive action of ours happens twice on the same object;
//  4. every action of ours matches a rule of docs/design.md.
const (
	inv1 = "1 (no destruction of needed data)"
	inv2 = "2 (offline only a Disconnected/Down store of a dead node)"
	inv3 = "3 (no destructive action twice)"
	inv4 = "4 (every action matches a rule)"
)

// Violation is a broken invariant.
type Violation struct {
	Seed      uint64
	Step      int
	Invariant string
	Message   string
	// Objects are the names the message is about, to pick the steps of the
	// history that touched them.
	Objects []string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("seed %d, step %d: invariant %s: %s", v.Seed, v.Step, v.Invariant, v.Message)
}

func (w *world) violate(inv, msg string, objects ...string) {
	w.logf("VIOLATION of invariant %s: %s", inv, msg)
	w.logf("  PD (cluster %d, fault %s): %s", w.pd.clusterID, w.pd.fault, w.pd.summary())
	if w.fail == nil {
		w.fail = &Violation{Seed: w.cfg.Seed, Step: w.step, Invariant: inv, Message: msg, Objects: objects}
	}
}

// needed is the ground truth: is this data still somebody's? A store's
// data is needed until PD buried the store (whatever happened to PD since:
// a rebuilt or recovered PD does not make data unneeded); a member's until
// it was deleted from PD; a plain volume's while its claim lives.
func (w *world) needed(d *datum) bool {
	switch d.kind {
	case compTiKV:
		return !w.pd.buried[storeKey{d.cluster, d.id}]
	case compPD:
		return !w.pd.removed[storeKey{d.cluster, d.id}]
	}
	for _, c := range w.claims() {
		if string(c.UID) == d.claim {
			return c.DeletionTimestamp == nil
		}
	}
	return false
}

// neededOn lists the data on a disk that is still needed.
func (w *world) neededOn(d *disk) []*datum {
	var out []*datum
	for _, x := range d.data {
		if w.needed(x) {
			out = append(out, x)
		}
	}
	return out
}

func describe(ds []*datum) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return strings.Join(s, ", ")
}

// ledger keeps invariant 3: each destructive action once per object.
func (w *world) once(key, what string, objects ...string) {
	if prev, dup := w.done[key]; dup {
		w.violate(inv3, fmt.Sprintf("%s, already done at step %d", what, prev), objects...)
		return
	}
	w.done[key] = w.step
}

// checkOffline is invariant 2, at the moment a DELETE reaches PD.
func (w *world) checkOffline(caller string, target *modelPD, id uint64) {
	w.stats.count("offline requests")
	what := fmt.Sprintf("%s asked PD to offline store %d", caller, id)
	if target != w.pd {
		w.violate(inv2, what+" in another cluster's PD", storeName(id))
		return
	}
	s, ok := target.stores[id]
	if !ok {
		w.violate(inv2, what+", which PD does not list", storeName(id))
		return
	}
	if ph := target.phase(s); ph != pd.PhaseDisconnected && ph != pd.PhaseDown {
		w.violate(inv2, fmt.Sprintf("%s while it is %s", what, ph), storeName(id))
		return
	}
	d := w.diskOfStore(target.clusterID, id)
	if d == nil {
		w.violate(inv2, what+", whose data the model finds on no disk", storeName(id))
		return
	}
	if !w.nodeDeadByRules(d.node) {
		w.violate(inv2, fmt.Sprintf("%s, but its node %s is not dead by the rules (Node object %s)", what, d.node.name, w.nodeObjectState(d.node)), storeName(id), d.node.name)
	}
}

// offlined keeps the ledger of the offlines PD accepted.
func (w *world) offlined(caller string, target *modelPD, id uint64) {
	w.stats.count("stores offlined")
	w.once(fmt.Sprintf("offline %d/%d/%d", target.clusterID, target.epoch, id), fmt.Sprintf("%s offlined store %d", caller, id), storeName(id))
}

// nodeObjectState says what the model knows of a Node object, for messages.
func (w *world) nodeObjectState(n *node) string {
	now := w.clock.Now()
	switch {
	case !n.objectGoneAt.IsZero():
		return fmt.Sprintf("deleted %s ago", now.Sub(n.objectGoneAt))
	case !n.notReadySince.IsZero():
		return fmt.Sprintf("NotReady for %s", now.Sub(n.notReadySince))
	}
	return "Ready"
}

func storeName(id uint64) string { return fmt.Sprintf("store %d", id) }

func (w *world) diskOfStore(cluster, id uint64) *disk {
	for _, d := range w.disks {
		for _, x := range d.data {
			if x.kind == compTiKV && x.cluster == cluster && x.id == id {
				return d
			}
		}
	}
	return nil
}

// onOurWrite checks one successful write of ours, as it happened; before
// is the object as it was (nil for a create).
func (w *world) onOurWrite(who string, a k8stesting.Action, before runtime.Object) {
	ctrl := !strings.HasPrefix(who, "agent/")
	res := a.GetResource()
	name := nameOf(a)
	w.logf("  %s %s %s %s", who, a.GetVerb(), res.Resource, name)
	switch {
	case a.GetVerb() == "delete" && res == resPVC && ctrl:
		w.checkClaimDelete(who, before.(*corev1.PersistentVolumeClaim))
	case a.GetVerb() == "delete" && res == resPod && ctrl:
		w.checkPodDelete(who, before.(*corev1.Pod))
	case a.GetVerb() == "delete" && res == resPV:
		w.checkPVDelete(who, ctrl, before.(*corev1.PersistentVolume))
	case a.GetVerb() == "patch" && res == resPV:
		after := w.getPV(name)
		if after == nil {
			return
		}
		if ctrl {
			w.checkCtrlPVPatch(who, before.(*corev1.PersistentVolume), after)
		} else {
			w.checkAgentPVPatch(who, before.(*corev1.PersistentVolume), after)
		}
	case a.GetVerb() == "create" && res == resPV && !ctrl:
		if pv := w.getPV(name); pv != nil {
			w.checkPublish(who, pv)
		}
	default:
		w.violate(inv4, fmt.Sprintf("%s made a write no rule provides for: %s %s %s", who, a.GetVerb(), res.Resource, name), name)
	}
}

// checkClaimDelete: a release (design "Ownership and release").
func (w *world) checkClaimDelete(who string, c *corev1.PersistentVolumeClaim) {
	if c.DeletionTimestamp != nil {
		return // a no-op on a claim already being deleted
	}
	w.stats.count("claims released")
	what := fmt.Sprintf("%s deleted claim %s (UID %s)", who, c.Name, c.UID)
	w.once("delete claim "+string(c.UID), what, c.Name)
	pv := w.getPV(c.Spec.VolumeName)
	if pv == nil {
		w.violate(inv4, what+" whose PV "+c.Spec.VolumeName+" does not exist", c.Name)
		return
	}
	objs := []string{c.Name, pv.Name}
	d := w.diskOf(pv)
	if d != nil {
		if need := w.neededOn(d); len(need) > 0 {
			w.violate(inv1, fmt.Sprintf("%s, whose disk %s holds needed data: %s", what, d.path, describe(need)), append(objs, datumNames(need)...)...)
			return
		}
	}
	rec, _ := provisioner.OwnershipOf(pv)
	switch {
	case !provisioner.Owned(pv) || rec.Claim != string(c.UID):
		w.violate(inv4, what+" with no owner recorded for it on PV "+pv.Name, objs...)
	case !provisioner.ReleaseApproved(pv):
		w.violate(inv4, what+" without approving the release on PV "+pv.Name, objs...)
	case rec.Component != compTiKV && rec.Component != compPD:
		w.violate(inv4, what+", a "+rec.Component+" claim", objs...)
	case !w.goneByRules(rec):
		w.violate(inv4, fmt.Sprintf("%s while %s is not gone by the rules (%s)", what, rec.Owner(), w.ownerTruth(rec)), append(objs, ownerName(rec))...)
	}
	for _, p := range w.pods() {
		if mountsClaim(p, c.Name) && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && !w.stuck(p, pv) {
			w.violate(inv4, fmt.Sprintf("%s while pod %s mounts it and is not stuck", what, p.Name), append(objs, p.Name)...)
		}
	}
}

// checkPodDelete: a stuck pod on a released disk.
func (w *world) checkPodDelete(who string, p *corev1.Pod) {
	key := "delete pod "
	if p.DeletionTimestamp != nil {
		if cur := w.getPod(p.Name); cur != nil && cur.UID == p.UID {
			return // a no-op on a pod already terminating
		}
		// A graceful deletion that a dead kubelet never finishes is
		// finished by force: a second, different action.
		key = "force-delete pod "
	}
	w.stats.count("stuck pods deleted")
	what := fmt.Sprintf("%s deleted pod %s (UID %s)", who, p.Name, p.UID)
	w.once(key+string(p.UID), what, p.Name)
	if !onStatefulSet(p) || (p.Labels[labelComponent] != compTiKV && p.Labels[labelComponent] != compPD) {
		w.violate(inv4, what+", not a TiKV or PD StatefulSet pod", p.Name)
	}
	stuck := false
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		claim := v.PersistentVolumeClaim.ClaimName
		c := w.getClaim(claim)
		if c != nil && c.DeletionTimestamp == nil {
			w.violate(inv4, fmt.Sprintf("%s while its claim %s is not released", what, claim), p.Name, claim)
		}
		var pv *corev1.PersistentVolume
		if c != nil {
			pv = w.getPV(c.Spec.VolumeName)
		}
		if pv == nil {
			continue
		}
		stuck = stuck || w.stuck(p, pv)
		if d := w.diskOf(pv); d != nil {
			if need := w.neededOn(d); len(need) > 0 {
				w.violate(inv1, fmt.Sprintf("%s, whose disk %s holds needed data: %s", what, d.path, describe(need)), append([]string{p.Name, pv.Name}, datumNames(need)...)...)
			}
		}
	}
	if !stuck {
		w.violate(inv4, what+", which is not stuck (Ready, or not long enough not Ready, and its disk's node not dead)", p.Name)
	}
}

// stuck: the design's stuck pod — a StatefulSet pod not Ready for the
// stuck-pod grace, or one whose disk's node is dead (it can run nowhere
// else).
func (w *world) stuck(p *corev1.Pod, pv *corev1.PersistentVolume) bool {
	if n := w.nodeByName(pv.Labels[provisioner.LabelNode]); n != nil && w.nodeDeadByRules(n) {
		return true
	}
	if !onStatefulSet(p) {
		return false
	}
	since := p.CreationTimestamp.Time
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return false
			}
			since = c.LastTransitionTime.Time
		}
	}
	return w.clock.Since(since) >= w.policy.StuckPodGrace
}

func onStatefulSet(p *corev1.Pod) bool {
	for _, r := range p.OwnerReferences {
		if r.Kind == "StatefulSet" && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

func mountsClaim(p *corev1.Pod, claim string) bool {
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			return true
		}
	}
	return false
}

// goneByRules: the owner is gone per PD as the design defines it — the
// store Tombstone, or absent from its own cluster's PD after it was last
// recorded leaving; the member no longer listed in its own cluster.
func (w *world) goneByRules(rec provisioner.Ownership) bool {
	if rec.ClusterID != w.pd.clusterID {
		return false
	}
	if rec.Component == compPD {
		for _, m := range w.pd.members {
			if m.MemberID == rec.MemberID || (rec.MemberID == 0 && m.Name == rec.Member) {
				return false
			}
		}
		return true
	}
	s, ok := w.pd.stores[rec.StoreID]
	if ok {
		return s.state == pd.StoreTombstone
	}
	return rec.State == "Tombstone"
}

// ownerTruth says what the model knows of a recorded owner.
func (w *world) ownerTruth(rec provisioner.Ownership) string {
	if rec.ClusterID != w.pd.clusterID {
		return fmt.Sprintf("recorded in PD cluster %d, PD is cluster %d", rec.ClusterID, w.pd.clusterID)
	}
	if rec.Component == compPD {
		return fmt.Sprintf("members %v", w.pd.members)
	}
	if s, ok := w.pd.stores[rec.StoreID]; ok {
		return fmt.Sprintf("PD shows it %s", w.pd.phase(s))
	}
	return fmt.Sprintf("PD does not list it; recorded state %q", rec.State)
}

func ownerName(rec provisioner.Ownership) string {
	if rec.Component == compPD {
		return rec.Member
	}
	return storeName(rec.StoreID)
}

func datumNames(ds []*datum) []string {
	var out []string
	for _, d := range ds {
		if d.kind == compTiKV {
			out = append(out, storeName(d.id))
		}
	}
	return out
}

// checkPVDelete: the controller deletes the PV of a dead node's free or
// released disk; the agent the PV of a disk that is not on its node, or
// of a disk it has just wiped.
func (w *world) checkPVDelete(who string, ctrl bool, pv *corev1.PersistentVolume) {
	if pv.DeletionTimestamp != nil {
		return
	}
	w.stats.count("PVs deleted")
	what := fmt.Sprintf("%s deleted PV %s (UID %s, %s)", who, pv.Name, pv.UID, pv.Status.Phase)
	w.once("delete pv "+string(pv.UID), what, pv.Name)
	d := w.diskOf(pv)
	if ctrl {
		n := w.nodeByName(pv.Labels[provisioner.LabelNode])
		switch {
		case n == nil || n.objectGoneAt.IsZero() || !w.nodeDeadByRules(n):
			w.violate(inv4, what+" of a node whose object is not deleted past the grace", pv.Name)
		case pv.Status.Phase != corev1.VolumeAvailable && pv.Status.Phase != corev1.VolumeReleased:
			w.violate(inv4, what+" in phase "+string(pv.Status.Phase), pv.Name)
		case provisioner.Owned(pv) && !provisioner.ReleaseApproved(pv):
			w.violate(inv4, what+", whose recorded owner was not found gone", pv.Name)
		}
		return
	}
	present := d != nil && d.mounted()
	switch pv.Status.Phase {
	case corev1.VolumeReleased:
		if left := d.onDisk(); present && len(left) > 0 {
			w.violate(inv4, fmt.Sprintf("%s whose disk still holds %s", what, describe(left)), pv.Name)
		}
	default:
		if present || pv.Spec.ClaimRef != nil {
			w.violate(inv4, what+": a bound or present disk's PV", pv.Name)
		}
	}
}

// checkCtrlPVPatch: the controller records owners, approves releases and
// turns reclaim policies to Delete; nothing else.
func (w *world) checkCtrlPVPatch(who string, before, after *corev1.PersistentVolume) {
	objs := []string{after.Name}
	rec, _ := provisioner.OwnershipOf(after)
	if provisioner.Owned(after) {
		old, _ := provisioner.OwnershipOf(before)
		if !provisioner.Owned(before) || old.StoreID != rec.StoreID || old.MemberID != rec.MemberID || old.Claim != rec.Claim || old.ClusterID != rec.ClusterID {
			w.stats.count("owners recorded")
			w.checkRecord(fmt.Sprintf("%s recorded %s for claim %s on PV %s", who, rec.Owner(), rec.ClaimName, after.Name), after, rec)
		}
	}
	if provisioner.ReleaseApproved(after) && !provisioner.ReleaseApproved(before) {
		w.stats.count("releases approved")
		what := fmt.Sprintf("%s approved the wipe of PV %s (claim %s, %s)", who, after.Name, rec.ClaimName, rec.Owner())
		if d := w.diskOf(after); d != nil {
			if need := w.neededOn(d); len(need) > 0 {
				w.violate(inv1, fmt.Sprintf("%s, whose disk %s holds needed data: %s", what, d.path, describe(need)), append(objs, datumNames(need)...)...)
			}
		}
		switch {
		case !provisioner.Owned(after):
			w.violate(inv4, what+" with no owner recorded for its claim", objs...)
		case !w.goneByRules(rec):
			w.violate(inv4, fmt.Sprintf("%s while %s is not gone by the rules (%s)", what, rec.Owner(), w.ownerTruth(rec)), append(objs, ownerName(rec))...)
		}
	}
	if before.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete && after.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
		w.stats.count("reclaim policies set to Delete")
		what := fmt.Sprintf("%s set PV %s (%s) to reclaimPolicy Delete", who, after.Name, after.Status.Phase)
		switch after.Status.Phase {
		case corev1.VolumeReleased:
			if !provisioner.ReleaseApproved(after) {
				w.violate(inv4, what+" without an approval for its claim", objs...)
			}
		case corev1.VolumeBound:
			if provisioner.ReleaseApproved(after) {
				break // a release: the claim is deleted next
			}
			w.checkPlain(what, after)
		default:
			w.violate(inv4, what, objs...)
		}
	}
	for _, k := range []string{provisioner.LabelDisk, provisioner.LabelNode, provisioner.LabelHostname} {
		if before.Labels[k] != after.Labels[k] {
			w.violate(inv4, fmt.Sprintf("%s changed label %s of PV %s", who, k, after.Name), objs...)
		}
	}
	if before.Spec.ClaimRef != nil && (after.Spec.ClaimRef == nil || after.Spec.ClaimRef.UID != before.Spec.ClaimRef.UID) {
		w.violate(inv4, fmt.Sprintf("%s changed the claim of PV %s", who, after.Name), objs...)
	}
}

// checkPlain: a Bound PV goes to Delete only if no TiKV or PD uses it.
func (w *world) checkPlain(what string, pv *corev1.PersistentVolume) {
	ref := pv.Spec.ClaimRef
	c := w.getClaim(ref.Name)
	if c == nil || c.UID != ref.UID {
		w.violate(inv4, what+": its claim is gone", pv.Name)
		return
	}
	if isTiDB(c.Labels) {
		w.violate(inv4, what+": a "+c.Labels[labelComponent]+" claim", pv.Name, c.Name)
	}
	users := 0
	for _, p := range w.pods() {
		if mountsClaim(p, c.Name) {
			users++
			if isTiDB(p.Labels) {
				w.violate(inv4, what+": used by "+p.Labels[labelComponent]+" pod "+p.Name, pv.Name, p.Name)
			}
		}
	}
	if users == 0 {
		w.violate(inv4, what+": no pod uses its claim", pv.Name, c.Name)
	}
}

func isTiDB(l map[string]string) bool {
	return l[labelComponent] == compTiKV || l[labelComponent] == compPD
}

// checkRecord: the owner recorded for a disk is the one whose data it holds.
func (w *world) checkRecord(what string, pv *corev1.PersistentVolume, rec provisioner.Ownership) {
	d := w.diskOf(pv)
	if d == nil {
		w.violate(inv4, what+": the model knows no such disk", pv.Name)
		return
	}
	for _, x := range d.data {
		if x.cluster == rec.ClusterID && ((x.kind == compTiKV && rec.Component == compTiKV && x.id == rec.StoreID) || (x.kind == compPD && rec.Component == compPD && x.id == rec.MemberID)) {
			x.recorded = true
			return
		}
	}
	w.violate(inv4, fmt.Sprintf("%s, but the disk %s holds %s", what, d.path, orNothing(describe(d.data))), pv.Name, ownerName(rec))
}

func orNothing(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}

// checkAgentPVPatch: the agent flags a missing disk and restores the
// ownership record it keeps; nothing else.
func (w *world) checkAgentPVPatch(who string, before, after *corev1.PersistentVolume) {
	if provisioner.Owned(after) && !provisioner.Owned(before) {
		rec, _ := provisioner.OwnershipOf(after)
		kept, ok := w.keptRecord(w.diskOf(after))
		if !ok || kept.Claim != rec.Claim || kept.StoreID != rec.StoreID || kept.Member != rec.Member {
			w.violate(inv4, fmt.Sprintf("%s put %s on PV %s, which is not the record it keeps", who, rec.Owner(), after.Name), after.Name)
		}
		return
	}
	if after.Spec.PersistentVolumeReclaimPolicy != before.Spec.PersistentVolumeReclaimPolicy || after.Annotations[provisioner.AnnReleaseApproved] != before.Annotations[provisioner.AnnReleaseApproved] {
		w.violate(inv4, fmt.Sprintf("%s changed the reclaim policy or the approval of PV %s", who, after.Name), after.Name)
	}
}

// keptRecord reads the ownership record the agent keeps for a disk.
func (w *world) keptRecord(d *disk) (provisioner.Ownership, bool) {
	if d == nil {
		return provisioner.Ownership{}, false
	}
	data, err := os.ReadFile(filepath.Join(d.node.stateDir, "owners", d.id+".json"))
	if err != nil {
		return provisioner.Ownership{}, false
	}
	rec, err := provisioner.UnmarshalRecord(data)
	return rec, err == nil
}

// checkPublish: a PV is created for an empty disk of the node, or — for an
// owned disk that lost its PV — bound to the recorded claim.
func (w *world) checkPublish(who string, pv *corev1.PersistentVolume) {
	d := w.diskOf(pv)
	what := fmt.Sprintf("%s published PV %s", who, pv.Name)
	switch {
	case d == nil || !d.mounted() || "agent/"+d.node.name != who:
		w.violate(inv4, what+" for a disk not on its node", pv.Name)
	case pv.Spec.ClaimRef == nil:
		w.stats.count("disks published")
		if len(d.data) > 0 {
			w.violate(inv1, fmt.Sprintf("%s for disk %s, which holds %s", what, d.path, describe(d.data)), pv.Name)
		}
	default:
		w.stats.count("owned disks republished")
		rec, ok := w.keptRecord(d)
		if !ok || string(pv.Spec.ClaimRef.UID) != rec.Claim || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
			w.violate(inv4, what+" bound to a claim it keeps no record of", pv.Name)
		}
	}
}

// onDisk is the data whose files are still there (d.data is brought up to
// date only after each of our calls).
func (d *disk) onDisk() []*datum {
	var out []*datum
	for _, x := range d.data {
		if _, err := os.Stat(filepath.Join(d.path, x.file)); err == nil {
			out = append(out, x)
		}
	}
	return out
}

func (d *disk) mounted() bool {
	ms, _ := d.node.mounts.Mounts()
	for _, m := range ms {
		if m.MountPoint == d.path {
			return true
		}
	}
	return false
}

// checkWipes looks at every disk after our code ran: data gone is a wipe
// (nothing else removes files), a marker turned wiping is a wipe started.
// how is "orphan" (the agent's reconcile), "delete" (the library's Delete
// of pv, as read just before), or "" where no wipe may happen.
func (w *world) checkWipes(how string, pv *corev1.PersistentVolume) {
	for _, d := range w.disks {
		m, ok, err := discovery.ReadMarker(d.path)
		if err != nil || !ok {
			w.violate(inv4, fmt.Sprintf("disk %s lost its marker (%v)", d.path, err), d.path)
			continue
		}
		var kept, gone []*datum
		for _, x := range d.data {
			if _, err := os.Stat(filepath.Join(d.path, x.file)); errors.Is(err, os.ErrNotExist) {
				gone = append(gone, x)
				continue
			}
			kept = append(kept, x)
		}
		// A wipe that ran to its end within one call shows only as data
		// gone; one interrupted, as a marker left wiping.
		if d.markerState != discovery.StateWiping && (m.State == discovery.StateWiping || len(gone) > 0) {
			w.wipeStarted(how, d, pv)
		}
		d.markerState = m.State
		for _, x := range gone {
			w.dataWiped(how, d, x)
		}
		d.data = kept
	}
}

func (w *world) wipeStarted(how string, d *disk, pv *corev1.PersistentVolume) {
	w.logf("  wipe of %s starts (%s)", d.path, how)
	w.stats.count("wipes started")
	what := fmt.Sprintf("a wipe of disk %s (%s) started", d.path, how)
	if need := w.neededOn(d); len(need) > 0 && !w.sanctioned(how, d, need) {
		w.violate(inv1, fmt.Sprintf("%s while it holds needed data: %s", what, describe(need)), append([]string{d.path, d.id}, datumNames(need)...)...)
	}
	rec, owned := w.keptRecord(d)
	switch how {
	case "delete":
		switch {
		case pv == nil || pv.Status.Phase != corev1.VolumeReleased || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.DeletionTimestamp != nil:
			w.violate(inv4, what+" for a PV that is not Released with reclaimPolicy Delete", d.path)
		case owned && (pv.Spec.ClaimRef == nil || string(pv.Spec.ClaimRef.UID) != rec.Claim || !provisioner.ReleaseApproved(pv)):
			w.violate(inv4, what+" of an owned disk without the controller's approval for the recorded claim", d.path, pv.Name)
		}
	case "orphan":
		for _, p := range w.pvs() {
			if w.names(p, d) {
				w.violate(inv4, what+" while PV "+p.Name+" names it", d.path, p.Name)
			}
		}
		switch {
		case owned:
			w.violate(inv4, what+" of an owned disk without a PV", d.path)
		case d.unnamedSince.IsZero() || w.clock.Since(d.unnamedSince) < resyncPeriod:
			w.violate(inv4, fmt.Sprintf("%s after its PV had been gone only %s", what, w.clock.Since(d.unnamedSince)), d.path)
		}
	default:
		w.violate(inv4, what+" outside any step of the agent", d.path)
	}
}

// sanctioned: the design lets the agent wipe a disk whose owner was never
// recorded when its operator gave it up — a person deleted its PV (DESIGN:
// a disk with data and no PV is wiped when no owner was ever recorded), or
// TiDB Operator set its PV to reclaimPolicy Delete (the agent honours a
// Delete it did not set). The model counts these: the data may have been a
// live store's that the controller never got to confirm.
func (w *world) sanctioned(how string, d *disk, need []*datum) bool {
	if how != "orphan" && how != "delete" {
		return false
	}
	for _, x := range need {
		if x.recorded || !x.abandoned {
			return false
		}
	}
	w.stats.count("wipes of never-recorded data its operator gave up (design-sanctioned)")
	return true
}

func (w *world) dataWiped(how string, d *disk, x *datum) {
	w.logf("  %s is gone from %s", x, d.path)
	w.stats.count("data wiped")
	if how == "" {
		w.violate(inv4, fmt.Sprintf("%s vanished from %s outside any step of the agent", x, d.path), d.path)
	}
	if w.needed(x) && !w.sanctioned(how, d, []*datum{x}) {
		w.violate(inv1, fmt.Sprintf("%s was wiped from disk %s while needed", x, d.path), append([]string{d.path, d.id}, datumNames([]*datum{x})...)...)
	}
}

// names: the PV names the disk, by identity or by its path on its node.
func (w *world) names(pv *corev1.PersistentVolume, d *disk) bool {
	if pv.Labels[provisioner.LabelDisk] == d.id {
		return true
	}
	if pv.Spec.Local == nil || pv.Spec.Local.Path != d.path {
		return false
	}
	if pv.Labels[provisioner.LabelNode] == d.node.name {
		return true
	}
	na := pv.Spec.NodeAffinity
	if na == nil || na.Required == nil {
		return false
	}
	for _, t := range na.Required.NodeSelectorTerms {
		for _, e := range t.MatchExpressions {
			for _, v := range e.Values {
				if e.Key == provisioner.LabelHostname && v == d.node.name {
					return true
				}
			}
		}
	}
	return false
}

// afterStep keeps the truth the next checks need.
func (w *world) afterStep() {
	w.checkWipes("", nil)
	pvs := w.pvs()
	now := w.clock.Now()
	for _, d := range w.disks {
		named := false
		for _, pv := range pvs {
			if w.names(pv, d) {
				named = true
				if provisioner.Owned(pv) {
					rec, _ := provisioner.OwnershipOf(pv)
					for _, x := range d.data {
						if x.cluster == rec.ClusterID && (x.id == rec.StoreID || x.id == rec.MemberID) {
							x.recorded = true
						}
					}
				}
			}
		}
		switch {
		case named:
			d.unnamedSince = time.Time{}
		case d.unnamedSince.IsZero():
			d.unnamedSince = now
		}
	}
}
