package provisioner

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"
)

// Recycler wipes the disk of a released PV; the node agent implements it.
// It returns nil only when the disk is clean or is certainly not on this
// node any more, so that the library may delete the PV object.
type Recycler interface {
	Recycle(ctx context.Context, pv *corev1.PersistentVolume) error
}

// Provisioner plugs the agent into the library's ProvisionController. It
// never provisions (disks are published statically); it deletes — wipes —
// released volumes of its own node only.
type Provisioner struct {
	Node     string
	Client   kubernetes.Interface
	Recycler Recycler
}

var (
	_ controller.Provisioner   = (*Provisioner)(nil)
	_ controller.DeletionGuard = (*Provisioner)(nil)
)

// Provision is never asked of us: our StorageClasses name
// kubernetes.io/no-provisioner, and answering "ignored" keeps it that way
// if someone points a class at tidb-localpv.io.
func (p *Provisioner) Provision(context.Context, controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	return nil, controller.ProvisioningFinished, &controller.IgnoredError{Reason: "tidb-localpv publishes local disks statically and does not provision"}
}

// ShouldDelete keeps every agent to the PVs of its own node.
func (p *Provisioner) ShouldDelete(_ context.Context, pv *corev1.PersistentVolume) bool {
	return IsOurs(pv) && pv.Labels[LabelNode] == p.Node
}

// Delete wipes the disk behind pv. The library's informer copy may be stale,
// so the PV is read afresh and must still be the same object (UID), Released
// and reclaimPolicy Delete before any byte is touched.
func (p *Provisioner) Delete(ctx context.Context, pv *corev1.PersistentVolume) error {
	if !p.ShouldDelete(ctx, pv) {
		return &controller.IgnoredError{Reason: fmt.Sprintf("PV %s is not a tidb-localpv disk of node %s", pv.Name, p.Node)}
	}
	fresh, err := p.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &controller.IgnoredError{Reason: fmt.Sprintf("PV %s is already gone", pv.Name)}
	}
	if err != nil {
		return fmt.Errorf("re-read PV %s before wiping: %w", pv.Name, err)
	}
	if reason := deletable(pv, fresh); reason != "" {
		return &controller.IgnoredError{Reason: reason}
	}
	if err := p.Recycler.Recycle(ctx, fresh); err != nil {
		return err
	}
	// The library would delete the PV by name only; deleting it here with
	// a UID precondition keeps the rule that every delete names the object
	// it decided on. "Ignored" then tells the library there is nothing left
	// for it to do.
	uid := fresh.UID
	err = p.Client.CoreV1().PersistentVolumes().Delete(ctx, fresh.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete PV %s after wiping its disk: %w", fresh.Name, err)
	}
	return &controller.IgnoredError{Reason: fmt.Sprintf("disk wiped and PV %s deleted by tidb-localpv", fresh.Name)}
}

// deletable says why a freshly read PV must not be wiped, or "" if it may.
func deletable(seen, fresh *corev1.PersistentVolume) string {
	switch {
	case fresh.UID != seen.UID:
		return fmt.Sprintf("PV %s was replaced (UID %s, was %s)", fresh.Name, fresh.UID, seen.UID)
	case fresh.Status.Phase != corev1.VolumeReleased:
		return fmt.Sprintf("PV %s is %s, not Released", fresh.Name, fresh.Status.Phase)
	case fresh.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete:
		return fmt.Sprintf("PV %s has reclaimPolicy %s", fresh.Name, fresh.Spec.PersistentVolumeReclaimPolicy)
	case fresh.Labels[LabelNode] != seen.Labels[LabelNode] || fresh.Labels[LabelDisk] != seen.Labels[LabelDisk]:
		return fmt.Sprintf("PV %s changed node or disk labels", fresh.Name)
	case fresh.DeletionTimestamp != nil:
		return fmt.Sprintf("PV %s is being deleted", fresh.Name)
	case Owned(fresh) && !ReleaseApproved(fresh):
		// The claim of a TiKV store's or PD member's disk went without the
		// volume-controller finding the owner gone (e.g. deleted by hand
		// while the store is Up): the data stays until it approves.
		return fmt.Sprintf("PV %s holds the data of %s; waiting for the volume-controller to confirm in PD that it is gone", fresh.Name, ownerName(fresh))
	case len(DamagedRecord(fresh)) > 0 && !ReleaseApproved(fresh):
		// Somebody edited the record, maybe before this node's agent kept
		// its copy: the disk may hold a live store's or member's data that
		// nothing else remembers.
		return fmt.Sprintf("PV %s carries part of an ownership record (%s) that names no whole owner of its claim: it was edited, and the disk may hold a TiKV store's or PD member's data; not wiped — if that data is not needed, remove those annotations", fresh.Name, strings.Join(DamagedRecord(fresh), ", "))
	}
	return ""
}

func ownerName(pv *corev1.PersistentVolume) string {
	if m := pv.Annotations[AnnPDMember]; m != "" {
		return "PD member " + m
	}
	return "TiKV store " + pv.Annotations[AnnStoreID]
}
