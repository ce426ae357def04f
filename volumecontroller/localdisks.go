package volumecontroller

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// The controller keeps the ownership record on each disk's LocalDisk
// (status.owner) as well as on its PV: the LocalDisk outlives the PV's
// labels and the PV itself. A PV that lost its record (or a PV from before
// LocalDisks) is read with the LocalDisk's record for its current claim;
// records written by earlier versions on PV annotations are still read.
// The LocalDisk is named like its PV.

func toLocalDisk(obj any) (*v1alpha1.LocalDisk, bool) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, false
	}
	var ld v1alpha1.LocalDisk
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ld); err != nil {
		return nil, false
	}
	return &ld, true
}

// cachedDisk is the PV's LocalDisk from the cache.
func (c *Controller) cachedDisk(name string) (*v1alpha1.LocalDisk, bool) {
	if c.diskInf == nil {
		return nil, false
	}
	obj, ok, err := c.diskInf.GetIndexer().GetByKey(name)
	if err != nil || !ok {
		return nil, false
	}
	return toLocalDisk(obj)
}

// withDiskRecord returns pv, or a copy of it carrying its LocalDisk's
// record when the PV has none for its current claim.
func withDiskRecord(pv *corev1.PersistentVolume, ld *v1alpha1.LocalDisk) *corev1.PersistentVolume {
	if provisioner.Owned(pv) || ld == nil || pv.Spec.ClaimRef == nil {
		return pv
	}
	rec, ok := provisioner.OwnershipFromDisk(ld.Status.Owner)
	if !ok || rec.Claim != string(pv.Spec.ClaimRef.UID) {
		return pv
	}
	out := pv.DeepCopy()
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	for k, v := range rec.Annotations() {
		if v != "" {
			out.Annotations[k] = v
		}
	}
	out.Labels[provisioner.LabelComponent], out.Labels[provisioner.LabelCluster] = rec.Component, rec.Cluster
	return out
}

// freshDiskRecord is withDiskRecord with the LocalDisk read from the API,
// for the re-check right before an action.
func (c *Controller) freshDiskRecord(ctx context.Context, pv *corev1.PersistentVolume) (*corev1.PersistentVolume, error) {
	if provisioner.Owned(pv) || c.dynamic == nil {
		return pv, nil
	}
	u, err := c.dynamic.Resource(v1alpha1.Resource).Get(ctx, pv.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return pv, nil
	}
	if err != nil {
		return nil, fmt.Errorf("re-read LocalDisk %s: %w", pv.Name, err)
	}
	ld, _ := toLocalDisk(u)
	return withDiskRecord(pv, ld), nil
}

// writeDiskOwner puts the record (and whether the node is lost) on the
// PV's LocalDisk when they changed; a disk without a LocalDisk (an older
// agent) is left alone.
func (c *Controller) writeDiskOwner(ctx context.Context, pvName string, rec provisioner.Ownership, nodeLost bool) error {
	ld, ok := c.cachedDisk(pvName)
	if !ok {
		return nil
	}
	want := rec.DiskOwner()
	if want != nil {
		want.Seen = nil // the last-seen time changes every poll; the state is what matters
	}
	cur := ld.Status.Owner
	if cur != nil {
		cur = cur.DeepCopy()
		cur.Seen = nil
	}
	patch := map[string]any{}
	if want != nil && !reflect.DeepEqual(cur, want) {
		patch["owner"] = rec.DiskOwner()
	}
	switch {
	case nodeLost && ld.Status.NodeLost == nil:
		patch["nodeLost"] = metav1.NewTime(c.clock.Now().UTC())
	case !nodeLost && ld.Status.NodeLost != nil:
		patch["nodeLost"] = nil
	}
	if len(patch) == 0 {
		return nil
	}
	data, err := json.Marshal(map[string]any{"status": patch})
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err = c.dynamic.Resource(v1alpha1.Resource).Patch(ctx, ld.Name, types.MergePatchType, data, metav1.PatchOptions{}, "status")
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("record owner on LocalDisk %s: %w", ld.Name, err)
	}
	return nil
}
