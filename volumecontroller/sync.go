package volumecontroller

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// target is what an action works on, as the decision saw it.
type target struct {
	pv        *corev1.PersistentVolume
	pvc       *corev1.PersistentVolumeClaim
	pod       *corev1.Pod
	owner     owner
	rec       provisioner.Ownership
	endpoint  string
	component string
	node      NodeFacts
}

func (t target) ownerName() string { return t.rec.Owner() }

// sync reconciles one PV. It reads only caches (and PD through a short
// cache); what it decides to destroy is re-read in full by the action.
func (c *Controller) sync(ctx context.Context, name string) error {
	pv, err := c.pvLister.Get(name)
	if apierrors.IsNotFound(err) {
		c.forgetWarning(name)
		return nil
	}
	if err != nil {
		return err
	}
	if !provisioner.IsOurs(pv) {
		return nil // not ours: another provisioner's PV that happens to carry our label
	}
	ld, _ := c.cachedDisk(pv.Name)
	pv = withDiskRecord(pv, ld)
	node := c.nodeFacts(pv.Labels[provisioner.LabelNode])
	if node.Gone && node.GoneFor < c.cfg.Policy.DeadNodeGrace {
		c.queue.AddAfter(name, c.cfg.Policy.DeadNodeGrace-node.GoneFor)
	}
	switch pv.Status.Phase {
	case corev1.VolumeBound:
		return c.syncBound(ctx, pv, node)
	case corev1.VolumeReleased:
		return c.syncReleased(ctx, pv, node)
	case corev1.VolumeAvailable:
		return c.act(ctx, c.cfg.Policy.DecideFree(node), target{pv: pv, node: node})
	}
	return nil
}

func (c *Controller) syncBound(ctx context.Context, pv *corev1.PersistentVolume, node NodeFacts) error {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return nil
	}
	pvc, err := c.pvcLister.PersistentVolumeClaims(ref.Namespace).Get(ref.Name)
	if apierrors.IsNotFound(err) || (err == nil && pvc.UID != ref.UID) {
		return nil // the PV binder will mark it Released
	}
	if err != nil {
		return err
	}
	pod := c.mountingPod(pvc)
	o := kubeOwner(pv, pvc, pod)
	rec, owned := provisioner.OwnershipOf(pv)
	if !owned || rec.Claim != string(pvc.UID) {
		// A record for an earlier claim says nothing about this one.
		rec, owned = provisioner.Ownership{}, false
	}
	rec.Component, rec.Cluster = orDefault(o.Component, rec.Component), orDefault(o.Cluster, rec.Cluster)
	if o.Pod != "" {
		rec.Pod = o.Namespace + "/" + o.Pod
	}
	rec.V2 = rec.V2 || o.V2()
	t := target{pv: pv, pvc: pvc, pod: pod, owner: o, component: rec.Component, node: node}

	if rec.Component != ComponentTiKV && rec.Component != ComponentPD {
		t.rec = rec
		if err := c.writeOwnership(ctx, pv, rec); err != nil {
			return err
		}
		return c.act(ctx, c.cfg.Policy.DecidePlain(pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete), t)
	}

	var facts OwnerFacts
	unresolved := ""
	if t.endpoint, err = c.endpoint(ctx, o); err != nil {
		facts = OwnerFacts{Err: err, Why: unknownPD}
		unresolved = err.Error()
	} else if owned {
		facts = c.recordedFacts(ctx, t.endpoint, rec, time.Time{})
		rec = refreshRecord(rec, facts, c.clock.Now())
	} else {
		rec, owned, unresolved = c.confirmOwner(ctx, t.endpoint, o, rec, pvc)
		if owned {
			facts = OwnerFacts{Known: true, Phase: pd.PhaseUp}
		}
	}
	t.rec = rec
	if err := c.writeOwnership(ctx, pv, rec); err != nil {
		return err
	}
	c.reportHealth(pv, pvc, pod)
	_, disk := pvHealth(pv, c.clock.Now())
	if facts.Known && facts.Phase == pd.PhaseOffline && rec.Component == ComponentTiKV {
		facts.Undrainable = c.undrainable(ctx, t.endpoint, rec.StoreID)
	}
	d := c.cfg.Policy.DecideBound(Input{
		Component:     rec.Component,
		Owned:         owned,
		Owner:         rec.Owner(),
		Unresolved:    unresolved,
		UnresolvedFor: c.since(pvc.CreationTimestamp.Time),
		Facts:         facts,
		Node:          node,
		Pod:           c.podFacts(pod, o),
		Disk:          disk,
		OfflinedByUs:  pv.Annotations[provisioner.AnnOfflinedAt] != "",
	})
	klog.FromContext(ctx).V(4).Info("decided", "pv", pv.Name, "owner", rec.Owner(), "owned", owned, "state", ownerState(facts), "action", d.Action.String(), "reason", d.Reason)
	return c.act(ctx, d, t)
}

// since is how long ago t was; zero for an unset time.
func (c *Controller) since(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return c.clock.Since(t)
}

// confirmOwner looks for the store or member PD confirms as the claim's
// owner and, if there is one, starts a record for the claim.
func (c *Controller) confirmOwner(ctx context.Context, endpoint string, o owner, rec provisioner.Ownership, pvc *corev1.PersistentVolumeClaim) (provisioner.Ownership, bool, string) {
	now := c.clock.Now()
	switch rec.Component {
	case ComponentTiKV:
		stores, err := c.pd.storesCached(ctx, endpoint)
		if err != nil {
			return rec, false, fmt.Sprintf("PD: %v", err)
		}
		s, why := confirmStore(o, stores)
		if why != "" {
			return rec, false, why
		}
		rec.StoreID, rec.ClusterID = s.ID, stores.clusterID
		rec.State, rec.Seen = s.Phase().String(), now
	default:
		// A member list from before the pod turned Ready may list the
		// member its previous disk left under the same name, deleted
		// since and replaced by the pod's own: ask afresh.
		m, err := c.pd.membersSince(ctx, endpoint, o.ReadySince)
		if err != nil {
			return rec, false, fmt.Sprintf("PD: %v", err)
		}
		mem, why := confirmMember(o, m)
		if why != "" {
			return rec, false, why
		}
		rec.Member, rec.MemberID, rec.ClusterID = mem.Name, mem.MemberID, m.ClusterID
		rec.State, rec.Seen, rec.Peers = "Up", now, memberIDs(m.Members)
	}
	rec.Claim = string(pvc.UID)
	rec.ClaimName = pvc.Namespace + "/" + pvc.Name
	return rec, true, ""
}

// undrainable asks (through the short cache) whether PD can ever bury the
// store; "" when it can or when PD does not say.
func (c *Controller) undrainable(ctx context.Context, endpoint string, id uint64) string {
	stores, err := c.pd.storesCached(ctx, endpoint)
	if err != nil {
		return ""
	}
	n, err := c.pd.maxReplicasCached(ctx, endpoint)
	if err != nil {
		return ""
	}
	return undrainable(stores, n, id)
}

// recordedFacts is what PD (through the short cache) says of a recorded owner.
// recordedFacts reads the recorded owner from PD, through the short cache
// unless its answer is older than since.
func (c *Controller) recordedFacts(ctx context.Context, endpoint string, rec provisioner.Ownership, since time.Time) OwnerFacts {
	if rec.Component == ComponentTiKV {
		stores, err := c.pd.storesSince(ctx, endpoint, since)
		f := storeFacts(stores, err, rec)
		f.ClusterID = stores.clusterID
		return f
	}
	m, err := c.pd.membersSince(ctx, endpoint, since)
	f := memberFacts(m, err, rec)
	f.ClusterID = m.ClusterID
	return f
}

// refreshRecord notes what PD showed of a listed owner: its state, when,
// its peers, and — for a record written before cluster IDs were recorded —
// the cluster, once PD lists the owner under the recorded pod's address.
// Unknown facts change nothing: the record keeps the last state seen.
func refreshRecord(rec provisioner.Ownership, f OwnerFacts, now time.Time) provisioner.Ownership {
	if !f.Known || f.Removed {
		return rec
	}
	if rec.ClusterID == 0 {
		ro := recordedOwner(rec)
		switch {
		case rec.Component == ComponentTiKV && addressNames(f.Store.Address, ro):
			rec.ClusterID = f.ClusterID
		case rec.Component == ComponentPD && f.Member.Name == rec.Member:
			rec.ClusterID = f.ClusterID
		}
	}
	state := f.Phase.String()
	if rec.Component == ComponentPD {
		state, rec.Peers = "Up", memberIDs(f.Peers)
		if rec.MemberID == 0 {
			rec.MemberID = f.Member.MemberID
		}
	}
	// Seen is when the owner was first seen in its current state: written
	// when the state changes, not on every poll (that would be a PV write
	// per disk per poll).
	if state != rec.State || rec.Seen.IsZero() {
		rec.State, rec.Seen = state, now
	}
	return rec
}

func memberIDs(ms []pd.Member) []uint64 {
	ids := make([]uint64, 0, len(ms))
	for _, m := range ms {
		ids = append(ids, m.MemberID)
	}
	slices.Sort(ids)
	return ids
}

func (c *Controller) syncReleased(ctx context.Context, pv *corev1.PersistentVolume, node NodeFacts) error {
	rec, _ := provisioner.OwnershipOf(pv)
	owned, approved := provisioner.Owned(pv), provisioner.ReleaseApproved(pv)
	t := target{pv: pv, node: node, component: pv.Labels[provisioner.LabelComponent], rec: rec, owner: recordedOwner(rec)}
	var facts OwnerFacts
	if owned && !approved {
		var err error
		if t.endpoint, err = c.endpoint(ctx, t.owner); err != nil {
			facts = OwnerFacts{Err: err, Why: unknownPD}
		} else {
			// The claim went after the cached answer was fetched: the owner
			// often left PD in between (a scale-in buries the store, then
			// the operator deletes the claim), and a refusal read from
			// before would be a false alarm.
			var released time.Time
			if pv.Status.LastPhaseTransitionTime != nil {
				released = pv.Status.LastPhaseTransitionTime.Time
			}
			facts = c.recordedFacts(ctx, t.endpoint, rec, released)
			// Keep watching the owner leave: only a store last seen
			// buried may later count as gone when PD drops it.
			t.rec = refreshRecord(rec, facts, c.clock.Now())
			if err := c.writeOwnership(ctx, pv, t.rec); err != nil {
				return err
			}
		}
	}
	d := c.cfg.Policy.DecideReleased(ReleasedInput{
		Component:     t.component,
		Owned:         owned,
		Approved:      approved,
		ReclaimDelete: pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete,
		Owner:         rec.Owner(),
		Facts:         facts,
		Node:          node,
	})
	return c.act(ctx, d, t)
}

// mountingPod is the pod (TiKV or PD, from the cache) that mounts the claim.
func (c *Controller) mountingPod(pvc *corev1.PersistentVolumeClaim) *corev1.Pod {
	var objs []any
	for _, idx := range c.podIndexes {
		found, err := idx.ByIndex(podsByClaim, pvc.Namespace+"/"+pvc.Name)
		if err == nil {
			objs = append(objs, found...)
		}
	}
	for _, o := range objs {
		if pod, ok := o.(*corev1.Pod); ok && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed {
			return pod
		}
	}
	return nil
}

func (c *Controller) podFacts(pod *corev1.Pod, o owner) PodFacts {
	if pod == nil {
		return PodFacts{}
	}
	f := PodFacts{Exists: true, OnInstance: o.Instance != nil}
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "StatefulSet" && ref.Controller != nil && *ref.Controller {
			f.OnStatefulSet = true
		}
	}
	since := pod.CreationTimestamp.Time
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady {
			f.Ready = cond.Status == corev1.ConditionTrue
			if !cond.LastTransitionTime.IsZero() {
				since = cond.LastTransitionTime.Time
			}
		}
	}
	if !f.Ready {
		f.NotReadyFor = c.clock.Since(since)
	}
	return f
}

// endpoint is the PD URL of the owner's cluster: an override, else a v2
// cluster's own record of it, else the template over the pod's labels.
func (c *Controller) endpoint(ctx context.Context, o owner) (string, error) {
	if url, ok := c.cfg.PDOverrides[o.Namespace+"/"+o.Cluster]; ok {
		return url, nil
	}
	if o.V2() {
		return c.v2.get(ctx, o.Namespace, o.Labels[labelV2Cluster])
	}
	return c.cfg.PDTemplate.Render(o.Labels, o.Namespace)
}

// writeOwnership puts the ownership on the PV when it changed, so it
// outlives the pod (DESIGN rule 6).
func (c *Controller) writeOwnership(ctx context.Context, pv *corev1.PersistentVolume, r provisioner.Ownership) error {
	dead, _ := c.cfg.Policy.nodeDead(c.nodeFacts(pv.Labels[provisioner.LabelNode]))
	if err := c.writeDiskOwner(ctx, pv.Name, r, dead); err != nil {
		return err
	}
	lbl := diff(pv.Labels, map[string]string{
		provisioner.LabelComponent: r.Component,
		provisioner.LabelCluster:   r.Cluster,
	})
	want := r.Annotations()
	if !r.Valid() {
		// Nothing confirmed for this claim: keep only who uses it.
		want = map[string]string{provisioner.AnnOwnerPod: r.Pod}
		if _, had := provisioner.OwnershipOf(pv); had && !provisioner.Owned(pv) {
			// The record of an earlier claim goes; the agent keeps its copy.
			for k := range (provisioner.Ownership{}).Annotations() {
				want[k] = ""
			}
			want[provisioner.AnnOwnerPod] = r.Pod
		}
	}
	ann := diff(pv.Annotations, want)
	if len(lbl) == 0 && len(ann) == 0 {
		return nil
	}
	patch := map[string]any{"metadata": map[string]any{"labels": lbl, "annotations": ann, "resourceVersion": pv.ResourceVersion}}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err = c.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, data, metav1.PatchOptions{})
	if apierrors.IsConflict(err) {
		return nil // a newer version is on its way through the informer
	}
	if err != nil {
		return fmt.Errorf("record owner on PV %s: %w", pv.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("recorded owner", "pv", pv.Name, "component", r.Component, "pod", r.Pod, "store", r.StoreID, "member", r.Member, "cluster", r.ClusterID, "state", r.State)
	if r.Valid() && pv.Annotations[provisioner.AnnOwnerClaim] != r.Claim {
		c.recorder.Event(pv, corev1.EventTypeNormal, ReasonOwnerRecorded, fmt.Sprintf("disk belongs to %s (pod %s, cluster %s, PD cluster %d), confirmed in PD", r.Owner(), r.Pod, r.Cluster, r.ClusterID))
	}
	return nil
}

// diff returns a merge patch turning have into want; empty want values
// remove keys.
func diff(have, want map[string]string) map[string]any {
	out := map[string]any{}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		v := want[k]
		cur, ok := have[k]
		switch {
		case v == "" && ok:
			out[k] = nil
		case v != "" && cur != v:
			out[k] = v
		}
	}
	return out
}
