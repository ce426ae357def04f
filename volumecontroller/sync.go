package volumecontroller

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// target is what an action works on, as the decision saw it.
type target struct {
	pv        *corev1.PersistentVolume
	pvc       *corev1.PersistentVolumeClaim
	pod       *corev1.Pod
	owner     owner
	endpoint  string
	storeID   uint64
	member    string
	component string
	node      NodeFacts
}

func (t target) ownerName() string {
	if t.component == ComponentPD {
		return "PD member " + t.member
	}
	return fmt.Sprintf("TiKV store %d", t.storeID)
}

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
	t := target{pv: pv, pvc: pvc, pod: pod, owner: o, component: o.Component, node: node}
	rec := ownershipFor(pv, pvc, o)

	var facts OwnerFacts
	if o.Component == ComponentTiKV || o.Component == ComponentPD {
		if t.endpoint, err = c.endpoint(o); err != nil {
			facts = OwnerFacts{Err: err}
		} else {
			facts = c.ownerFacts(ctx, &t, rec)
		}
		if t.storeID != 0 || t.member != "" {
			rec.claim = string(pvc.UID)
			rec.store, rec.member = t.storeID, t.member
			rec.state = ownerState(facts)
		}
	}
	if err := c.writeOwnership(ctx, pv, rec); err != nil {
		return err
	}
	if o.Component != ComponentTiKV && o.Component != ComponentPD {
		return nil
	}
	d := c.cfg.Policy.DecideBound(Input{
		Component: o.Component,
		Owned:     t.storeID != 0 || t.member != "",
		Owner:     t.ownerName(),
		Facts:     facts,
		Node:      node,
		Pod:       c.podFacts(pod),
	})
	klog.FromContext(ctx).V(4).Info("decided", "pv", pv.Name, "owner", t.ownerName(), "state", rec.state, "action", d.Action.String(), "reason", d.Reason)
	return c.act(ctx, d, t)
}

// ownerFacts finds (or reads the recorded) store or member of the claim and
// what PD says about it, setting t.storeID / t.member.
func (c *Controller) ownerFacts(ctx context.Context, t *target, rec ownership) OwnerFacts {
	switch t.component {
	case ComponentTiKV:
		stores, err := c.pd.storesCached(ctx, t.endpoint)
		t.storeID = rec.store
		if t.storeID == 0 && err == nil {
			t.storeID, _ = storeOf(t.owner, stores)
		}
		if t.storeID == 0 {
			return OwnerFacts{Err: err}
		}
		return storeFacts(stores, err, t.storeID)
	default:
		m, err := c.pd.membersCached(ctx, t.endpoint)
		t.member = rec.member
		if t.member == "" && err == nil {
			t.member, _ = memberOf(t.owner, m)
		}
		if t.member == "" {
			return OwnerFacts{Err: err}
		}
		return memberFacts(m, err, t.member)
	}
}

func (c *Controller) syncReleased(ctx context.Context, pv *corev1.PersistentVolume, node NodeFacts) error {
	t := target{pv: pv, node: node, component: pv.Labels[provisioner.LabelComponent]}
	owned := provisioner.Owned(pv)
	var facts OwnerFacts
	if owned && !provisioner.ReleaseApproved(pv) {
		o := owner{Component: t.component, Cluster: pv.Labels[provisioner.LabelCluster], Namespace: pv.Spec.ClaimRef.Namespace,
			Labels: map[string]string{labelInstance: pv.Labels[provisioner.LabelCluster], labelComponent: t.component}}
		t.owner = o
		rec := ownershipFor(pv, nil, o)
		t.storeID, t.member = rec.store, rec.member
		var err error
		if t.endpoint, err = c.endpoint(o); err != nil {
			facts = OwnerFacts{Err: err}
		} else if t.component == ComponentTiKV {
			stores, err := c.pd.storesCached(ctx, t.endpoint)
			facts = storeFacts(stores, err, t.storeID)
		} else {
			m, err := c.pd.membersCached(ctx, t.endpoint)
			facts = memberFacts(m, err, t.member)
		}
	}
	d := c.cfg.Policy.DecideReleased(owned, provisioner.ReleaseApproved(pv), t.ownerName(), facts, t.component, node)
	return c.act(ctx, d, t)
}

// mountingPod is the pod (TiKV or PD, from the cache) that mounts the claim.
func (c *Controller) mountingPod(pvc *corev1.PersistentVolumeClaim) *corev1.Pod {
	objs, err := c.podInf.GetIndexer().ByIndex(podsByClaim, pvc.Namespace+"/"+pvc.Name)
	if err != nil {
		return nil
	}
	for _, o := range objs {
		if pod, ok := o.(*corev1.Pod); ok && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed {
			return pod
		}
	}
	return nil
}

func (c *Controller) podFacts(pod *corev1.Pod) PodFacts {
	if pod == nil {
		return PodFacts{}
	}
	f := PodFacts{Exists: true}
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

func (c *Controller) endpoint(o owner) (string, error) {
	if url, ok := c.cfg.PDOverrides[o.Namespace+"/"+o.Cluster]; ok {
		return url, nil
	}
	return c.cfg.PDTemplate.Render(o.Labels, o.Namespace)
}

// ownership is what is written on a PV about its owner.
type ownership struct {
	component, cluster, pod string
	claim                   string
	store                   uint64
	member                  string
	state                   string
}

// ownershipFor starts from what the PV records for its current claim and
// refreshes what Kubernetes tells now.
func ownershipFor(pv *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim, o owner) ownership {
	r := ownership{component: o.Component, cluster: o.Cluster}
	if o.Pod != "" {
		r.pod = o.Namespace + "/" + o.Pod
	}
	if provisioner.Owned(pv) {
		r.claim = pv.Annotations[provisioner.AnnOwnerClaim]
		r.store, _ = strconv.ParseUint(pv.Annotations[provisioner.AnnStoreID], 10, 64)
		r.member = pv.Annotations[provisioner.AnnPDMember]
		r.state = pv.Annotations[provisioner.AnnOwnerState]
		if r.pod == "" {
			r.pod = pv.Annotations[provisioner.AnnOwnerPod]
		}
	}
	return r
}

// writeOwnership puts the ownership on the PV when it changed, so it
// outlives the pod (DESIGN rule 6).
func (c *Controller) writeOwnership(ctx context.Context, pv *corev1.PersistentVolume, r ownership) error {
	want := map[string]string{
		provisioner.LabelComponent: r.component,
		provisioner.LabelCluster:   r.cluster,
	}
	wantAnn := map[string]string{
		provisioner.AnnOwnerPod:   r.pod,
		provisioner.AnnOwnerClaim: r.claim,
		provisioner.AnnPDMember:   r.member,
		provisioner.AnnOwnerState: r.state,
		provisioner.AnnStoreID:    "",
	}
	if r.store != 0 {
		wantAnn[provisioner.AnnStoreID] = strconv.FormatUint(r.store, 10)
	}
	lbl := diff(pv.Labels, want)
	ann := diff(pv.Annotations, wantAnn)
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
	klog.FromContext(ctx).V(2).Info("recorded owner", "pv", pv.Name, "component", r.component, "pod", r.pod, "store", r.store, "member", r.member, "state", r.state)
	if r.claim != "" && pv.Annotations[provisioner.AnnOwnerClaim] != r.claim {
		owner := "PD member " + r.member
		if r.store != 0 {
			owner = fmt.Sprintf("TiKV store %d", r.store)
		}
		c.recorder.Event(pv, corev1.EventTypeNormal, ReasonOwnerRecorded, fmt.Sprintf("disk belongs to %s (pod %s, cluster %s)", owner, r.pod, r.cluster))
	}
	return nil
}

// diff returns a merge patch turning have into want; empty want values
// remove keys.
func diff(have, want map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range want {
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
