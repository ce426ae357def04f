package sim

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// The objects the v2 operator makes and removes: instances, their pods
// and claims, the finalizer.

// finalize is v2's finalizer on a deleted instance whose store (or
// member) is gone: delete the pod and the claims, wait until they are
// gone, then let the instance go.
func (v *V2) finalize(ctx context.Context, c v2Component, st *instanceState) error {
	core := v.env.Cluster.Client.CoreV1()
	ns := v.Opts.Namespace
	sel := labels.Set{LabelV2ManagedBy: v2ManagedBy, LabelV2Instance: st.obj.GetName(), LabelV2Cluster: v.Opts.Cluster, LabelV2Component: c.name}.String()
	pods, err := core.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	pvcs, err := core.PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	waiting := len(pods.Items) > 0 || len(pvcs.Items) > 0
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			if err := ignoreGoneOrConflict(core.Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})); err != nil {
				return err
			}
			v.logf("instance %s: deleted pod %s", st.obj.GetName(), p.Name)
		}
	}
	for _, pvc := range pvcs.Items {
		if pvc.DeletionTimestamp == nil {
			if err := ignoreGoneOrConflict(core.PersistentVolumeClaims(ns).Delete(ctx, pvc.Name, metav1.DeleteOptions{})); err != nil {
				return err
			}
			v.logf("instance %s: deleted claim %s", st.obj.GetName(), pvc.Name)
		}
	}
	if waiting {
		return nil
	}
	var keep []string
	for _, f := range st.obj.GetFinalizers() {
		if f != V2Finalizer {
			keep = append(keep, f)
		}
	}
	if len(keep) == len(st.obj.GetFinalizers()) {
		return nil
	}
	obj := st.obj.DeepCopy()
	obj.SetFinalizers(keep)
	if _, err := v.dyn.Resource(c.instances).Namespace(ns).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return ignoreGoneOrConflict(err)
	}
	v.logf("instance %s: pod and claims gone, finalizer removed", st.obj.GetName())
	return nil
}

func (v *V2) labelPodAndClaim(ctx context.Context, st *instanceState, key, val string) error {
	if st.pod == nil || st.pod.DeletionTimestamp != nil || st.pod.Labels[key] == val {
		return nil
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, key, val))
	core := v.env.Cluster.Client.CoreV1()
	if _, err := core.Pods(v.Opts.Namespace).Patch(ctx, st.pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return ignoreGoneOrConflict(err)
	}
	_, err := core.PersistentVolumeClaims(v.Opts.Namespace).Patch(ctx, V2ClaimName(v2DataVolume, st.pod.Name), types.MergePatchType, patch, metav1.PatchOptions{})
	return ignoreGoneOrConflict(err)
}

// ensurePod creates the claim and the pod of a live instance that has
// none, as v2 does (a pod deleted by anyone comes back with the same
// claim).
func (v *V2) ensurePod(ctx context.Context, c v2Component, st *instanceState) error {
	if st.pod != nil || st.deleting {
		return nil
	}
	o := v.Opts
	inst := st.obj
	podName := V2PodName(inst.GetName(), c.name)
	claim := V2ClaimName(v2DataVolume, podName)
	owner := metav1.OwnerReference{APIVersion: V2APIVersion, Kind: c.kind, Name: inst.GetName(), UID: inst.GetUID(),
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}
	lbl := map[string]string{
		LabelV2ManagedBy: v2ManagedBy, LabelV2Component: c.name, LabelV2Cluster: o.Cluster,
		LabelV2Group: c.group, LabelV2Instance: inst.GetName(), labelV2Revision: v2Revision,
		// The v1 set, which v2 keeps writing for compatibility.
		"app.kubernetes.io/component": c.name, "app.kubernetes.io/instance": o.Cluster,
		"app.kubernetes.io/managed-by": v2ManagedBy, "app.kubernetes.io/name": "tidb-cluster",
		labelClusterID: strconv.FormatUint(v.Sim.ClusterID(), 10),
	}
	pvcLabels := maps.Clone(lbl)
	pvcLabels[labelV2Volume] = v2DataVolume
	core := v.env.Cluster.Client.CoreV1()
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claim, Namespace: o.Namespace, Labels: pvcLabels, OwnerReferences: []metav1.OwnerReference{owner}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(c.class),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
	if _, err := core.PersistentVolumeClaims(o.Namespace).Create(ctx, pvc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create claim %s: %w", claim, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: o.Namespace, Labels: lbl, OwnerReferences: []metav1.OwnerReference{owner}},
		Spec: corev1.PodSpec{
			Hostname:  podName,
			Subdomain: c.group + "-" + c.name + "-peer",
			// TiDB deployments spread a group's stores over nodes (v2's
			// topologySpreadConstraints): losing a node loses one store.
			Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
				PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
					Weight: 100,
					PodAffinityTerm: corev1.PodAffinityTerm{
						TopologyKey:   corev1.LabelHostname,
						LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelV2Group: lbl[LabelV2Group], LabelV2Component: lbl[LabelV2Component]}},
					},
				}},
			}},
			Containers: []corev1.Container{{
				Name: c.name, Image: c.image,
				VolumeMounts: []corev1.VolumeMount{{Name: v2DataVolume, MountPath: c.mountPath}},
			}},
			Volumes: []corev1.Volume{{Name: v2DataVolume, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	if _, err := core.Pods(o.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pod %s: %w", podName, err)
	}
	v.logf("instance %s: created pod %s and claim %s", inst.GetName(), podName, claim)
	return nil
}

// reconcileGroup keeps a group at its replicas: a new instance (new name)
// when one is gone. TiKV scale-in marks one instance offline (it is
// deleted once its store is Removed) and a scale-out during it takes the
// mark back; PD scale-in deletes an instance directly.
func (v *V2) reconcileGroup(ctx context.Context, c v2Component, states []*instanceState) error {
	o := v.Opts
	g, err := v.dyn.Resource(c.groups).Namespace(o.Namespace).Get(ctx, c.group, metav1.GetOptions{})
	if err != nil {
		return err
	}
	replicas, _, _ := unstructured.NestedInt64(g.Object, "spec", "replicas")
	var active, offline []*instanceState
	for _, st := range states {
		switch {
		case st.deleting:
		case st.offline:
			offline = append(offline, st)
		default:
			active = append(active, st)
		}
	}
	switch {
	case int64(len(active)) > replicas:
		// Scale-in: the newest instance goes.
		sort.Slice(active, func(i, j int) bool {
			ti, tj := active[i].obj.GetCreationTimestamp(), active[j].obj.GetCreationTimestamp()
			return ti.Before(&tj) || (ti.Equal(&tj) && active[i].obj.GetName() < active[j].obj.GetName())
		})
		victim := active[len(active)-1]
		if c.name == "pd" {
			v.logf("PD scale-in to %d: deleting instance %s", replicas, victim.obj.GetName())
			return v.deleteOfflined(ctx, c, victim)
		}
		v.logf("scale-in to %d: setting spec.offline on instance %s", replicas, victim.obj.GetName())
		return v.setOffline(ctx, victim.obj, true)
	case int64(len(active)) < replicas && len(offline) > 0:
		v.logf("scale-out to %d: taking back the offline of instance %s", replicas, offline[0].obj.GetName())
		return v.setOffline(ctx, offline[0].obj, false)
	case int64(len(states)) < replicas:
		return v.createInstance(ctx, c, g)
	}
	return nil
}

func (v *V2) createInstance(ctx context.Context, c v2Component, group *unstructured.Unstructured) error {
	o := v.Opts
	name := c.group + "-" + randomSuffix()
	spec := map[string]any{
		"cluster":   map[string]any{"name": o.Cluster},
		"subdomain": c.group + "-" + c.name + "-peer",
	}
	if c.name == "tikv" {
		spec["offline"] = false
	}
	inst := v2Object(c.kind, o.Namespace, name, spec)
	inst.SetFinalizers([]string{V2Finalizer})
	inst.SetLabels(map[string]string{
		LabelV2ManagedBy: v2ManagedBy, LabelV2Component: c.name, LabelV2Cluster: o.Cluster,
		LabelV2Group: c.group, labelV2Revision: v2Revision,
	})
	inst.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: V2APIVersion, Kind: c.groupKind, Name: group.GetName(),
		UID: group.GetUID(), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}})
	if _, err := v.dyn.Resource(c.instances).Namespace(o.Namespace).Create(ctx, inst, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create %s instance %s: %w", c.kind, name, err)
	}
	v.logf("group %s: created %s instance %s", c.group, c.kind, name)
	return nil
}
