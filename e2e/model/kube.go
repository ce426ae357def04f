package model

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Kubernetes' own controllers, as far as the disks' story needs them: the
// PV binder, the scheduler's volume binding (WaitForFirstConsumer), the
// StatefulSet controller, the kubelet, pvc- and pv-protection, the pod
// garbage collector and the node lifecycle controller.

func (w *world) put(obj runtime.Object) {
	var err error
	switch o := obj.(type) {
	case *corev1.PersistentVolume:
		err = w.api.Update(resPV, o, "")
	case *corev1.PersistentVolumeClaim:
		err = w.api.Update(resPVC, o, namespace)
	case *corev1.Pod:
		err = w.api.Update(resPod, o, namespace)
	case *corev1.Node:
		err = w.api.Update(resNode, o, "")
	default:
		panic(fmt.Sprintf("put %T", obj))
	}
	if err != nil {
		panic(fmt.Sprintf("model write of %T: %v", obj, err))
	}
}

// binderStep is the PV binder: a PV whose claim is gone is Released; a PV
// pre-bound to an existing claim binds; a claim whose PV is gone is Lost.
func (w *world) binderStep() {
	claims := map[string]*corev1.PersistentVolumeClaim{}
	for _, c := range w.claims() {
		claims[c.Name] = c
	}
	for _, pv := range w.pvs() {
		ref := pv.Spec.ClaimRef
		switch {
		case ref == nil:
			if pv.Status.Phase == "" || pv.Status.Phase == corev1.VolumePending {
				pv.Status.Phase = corev1.VolumeAvailable
				w.put(pv)
			}
		case claims[ref.Name] == nil || claims[ref.Name].UID != ref.UID:
			if pv.Status.Phase != corev1.VolumeReleased && pv.Status.Phase != corev1.VolumeFailed {
				w.logf("binder: PV %s Released (claim %s gone)", pv.Name, ref.Name)
				pv.Status.Phase = corev1.VolumeReleased
				w.put(pv)
			}
		default:
			c := claims[ref.Name]
			if c.Spec.VolumeName == "" && c.DeletionTimestamp == nil {
				c.Spec.VolumeName = pv.Name
				c.Status.Phase = corev1.ClaimBound
				w.put(c)
				w.logf("binder: claim %s binds to pre-bound PV %s", c.Name, pv.Name)
			}
			if c.Spec.VolumeName == pv.Name && pv.Status.Phase != corev1.VolumeBound {
				pv.Status.Phase = corev1.VolumeBound
				w.put(pv)
				w.logf("binder: PV %s Bound to %s", pv.Name, c.Name)
			}
		}
	}
	for _, c := range w.claims() {
		if c.Spec.VolumeName == "" {
			continue
		}
		pv := w.getPV(c.Spec.VolumeName)
		phase := corev1.ClaimBound
		if pv == nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != c.UID {
			phase = corev1.ClaimLost
		}
		if c.Status.Phase != phase {
			c.Status.Phase = phase
			w.put(c)
			w.logf("binder: claim %s %s", c.Name, phase)
		}
	}
}

// schedulerStep places pending pods: on the node of their claim's PV, or —
// for a claim not bound yet — on a node with an Available PV of its class,
// binding both (WaitForFirstConsumer).
func (w *world) schedulerStep() {
	for _, p := range w.pods() {
		if p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
			continue
		}
		c := w.getClaim(claimOf(p))
		if c == nil || c.DeletionTimestamp != nil {
			continue // "persistentvolumeclaim not found / is being deleted"
		}
		var pv *corev1.PersistentVolume
		if c.Spec.VolumeName != "" {
			pv = w.getPV(c.Spec.VolumeName)
			if pv == nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != c.UID || !w.schedulable(pv.Labels[provisioner.LabelNode]) {
				continue
			}
		} else {
			var free []*corev1.PersistentVolume
			for _, v := range w.pvs() {
				if v.Status.Phase == corev1.VolumeAvailable && v.Spec.ClaimRef == nil && v.DeletionTimestamp == nil &&
					v.Spec.StorageClassName == *c.Spec.StorageClassName && w.schedulable(v.Labels[provisioner.LabelNode]) {
					free = append(free, v)
				}
			}
			var ok bool
			if pv, ok = pick(w, free); !ok {
				continue
			}
			pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: namespace, Name: c.Name, UID: c.UID}
			pv.Status.Phase = corev1.VolumeBound
			w.put(pv)
			c.Spec.VolumeName, c.Status.Phase = pv.Name, corev1.ClaimBound
			w.put(c)
			w.logf("scheduler: claim %s binds to PV %s", c.Name, pv.Name)
		}
		p.Spec.NodeName = pv.Labels[provisioner.LabelNode]
		w.put(p)
		w.logf("scheduler: pod %s (UID %s) to %s", p.Name, p.UID, p.Spec.NodeName)
	}
}

func (w *world) schedulable(nodeName string) bool {
	n := w.getNode(nodeName)
	return n != nil && nodeReady(n)
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func claimOf(p *corev1.Pod) string {
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			return v.PersistentVolumeClaim.ClaimName
		}
	}
	return ""
}

// stsStep is the StatefulSet controller: each ordinal below replicas has
// its claim and its pod (recreated under the same names, new UIDs); pods
// above are deleted, claims kept.
func (w *world) stsStep() {
	for _, s := range w.sets {
		for i := range s.max {
			pod := w.getPod(s.podName(i))
			if i >= s.replicas {
				if pod != nil && pod.DeletionTimestamp == nil {
					w.logf("statefulset %s: scale-in deletes pod %s", s.name, pod.Name)
					w.must(w.api.Delete(resPod, namespace, pod.Name))
				}
				continue
			}
			if w.getClaim(s.claimName(i)) == nil {
				w.must(w.api.Create(resPVC, w.newClaim(s, i), namespace))
				w.logf("statefulset %s: creates claim %s (UID %s)", s.name, s.claimName(i), w.getClaim(s.claimName(i)).UID)
			}
			if pod == nil {
				w.must(w.api.Create(resPod, w.newPod(s, i), namespace))
				w.logf("statefulset %s: creates pod %s (UID %s)", s.name, s.podName(i), w.getPod(s.podName(i)).UID)
			}
		}
	}
}

func (w *world) must(err error) {
	if err != nil {
		panic(fmt.Sprintf("model write: %v", err))
	}
}

func (w *world) labels(s *set) map[string]string {
	return map[string]string{labelComponent: s.comp, labelInstance: cluster, "app.kubernetes.io/managed-by": "tidb-operator"}
}

func (w *world) newClaim(s *set, i int) *corev1.PersistentVolumeClaim {
	l := w.labels(s)
	if s.comp == compWeb {
		l = map[string]string{labelComponent: compWeb}
	}
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: s.claimName(i), Namespace: namespace, Labels: l,
			Annotations: map[string]string{"tidb.pingcap.com/pod-name": s.podName(i)}},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(s.class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")}},
		},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending},
	}
}

func (w *world) newPod(s *set, i int) *corev1.Pod {
	l := w.labels(s)
	if s.comp == compWeb {
		l = map[string]string{labelComponent: compWeb}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.podName(i), Namespace: namespace, Labels: l,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: s.name, UID: types.UID("sts-" + s.name), Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: s.volume, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: s.claimName(i)}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
}

// protectionStep is pvc-protection and pv-protection (a claim goes once no
// pod uses it, a PV once it is not Bound), the pod garbage collector
// (pods of a deleted Node) and the node lifecycle controller (a silent
// node NotReady, its pods not Ready, then evicted).
func (w *world) protectionStep() {
	pods := w.pods()
	for _, c := range w.claims() {
		if c.DeletionTimestamp == nil {
			continue
		}
		used := false
		for _, p := range pods {
			if mountsClaim(p, c.Name) && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				used = true
			}
		}
		if !used {
			c.Finalizers = removeString(c.Finalizers, finalizerPVC)
			w.put(c)
			w.logf("pvc-protection: claim %s (UID %s) deleted", c.Name, c.UID)
		}
	}
	for _, pv := range w.pvs() {
		if pv.DeletionTimestamp != nil && pv.Status.Phase != corev1.VolumeBound {
			pv.Finalizers = removeString(pv.Finalizers, finalizerPV)
			w.put(pv)
			w.logf("pv-protection: PV %s (UID %s) deleted", pv.Name, pv.UID)
		}
	}
	now := w.clock.Now()
	for _, n := range w.nodes {
		obj := w.getNode(n.name)
		if obj == nil {
			if now.Sub(n.objectGoneAt) >= podGCAfter {
				for _, p := range pods {
					if p.Spec.NodeName == n.name {
						w.must(w.api.Delete(resPod, namespace, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}))
						w.logf("pod GC: pod %s (UID %s) of deleted node %s", p.Name, p.UID, n.name)
					}
				}
			}
			continue
		}
		if !n.alive && nodeReady(obj) && now.Sub(n.diedAt) >= nodeMonitorGrace {
			setNodeReady(obj, false, now)
			w.put(obj)
			n.notReadySince = now
			w.logf("node lifecycle: %s NotReady", n.name)
		}
		if nodeReady(obj) {
			continue
		}
		for _, p := range pods {
			if p.Spec.NodeName != n.name {
				continue
			}
			if setPodReady(p, false, now) {
				w.put(p)
			}
			if p.DeletionTimestamp == nil && now.Sub(n.notReadySince) >= evictAfter {
				w.must(w.api.Delete(resPod, namespace, p.Name))
				w.logf("node lifecycle: evicts pod %s of NotReady node %s", p.Name, n.name)
			}
		}
	}
}

func setNodeReady(n *corev1.Node, ready bool, now time.Time) {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st, LastTransitionTime: metav1.NewTime(now)}}
}

// setPodReady sets the Ready condition, reporting whether it changed.
func setPodReady(p *corev1.Pod, ready bool, now time.Time) bool {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	for i, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == st {
				return false
			}
			p.Status.Conditions[i] = corev1.PodCondition{Type: corev1.PodReady, Status: st, LastTransitionTime: metav1.NewTime(now)}
			return true
		}
	}
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: st, LastTransitionTime: metav1.NewTime(now)})
	return true
}
