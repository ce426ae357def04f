package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

var _ provisioner.Recycler = (*Agent)(nil)

// errBusy means another wipe of the same disk is under way.
var errBusy = errors.New("disk is being wiped")

// Recycle wipes the disk of a released PV (called by the library's Delete
// after it re-read the PV). It returns nil when the disk is clean, or when
// the disk is not on this node: then there is nothing to wipe here, the PV
// may go, and if the disk ever returns without its PV it is wiped first.
func (a *Agent) Recycle(ctx context.Context, pv *corev1.PersistentVolume) error {
	id := pv.Labels[provisioner.LabelDisk]
	if !a.tryBusy(id) {
		return fmt.Errorf("PV %s: %w", pv.Name, errBusy)
	}
	defer a.enqueue()
	defer a.release(id)

	d, ok, err := a.locate(ctx, id, pv.Spec.Local.Path)
	if err != nil {
		return err
	}
	if !ok {
		klog.FromContext(ctx).Info("released disk is not on this node; nothing to wipe", "pv", pv.Name, "disk", id)
		a.events.event(pv, corev1.EventTypeWarning, ReasonDiskMissing,
			fmt.Sprintf("disk %s is not at %s on node %s; the PV goes without a wipe, and the disk is wiped before reuse if it comes back", id, pv.Spec.Local.Path, a.cfg.NodeName))
		return nil
	}
	if err := a.refuseOutOfService(pv, d); err != nil {
		return err
	}
	if err := a.checkOwnerApproval(pv); err != nil {
		a.events.event(pv, corev1.EventTypeWarning, ReasonWipeRefused, err.Error())
		return err
	}
	a.holdPath(id, d.Path)
	a.enqueue() // a pass shows the disk Wiping while the wipe runs
	if err := a.wipe(ctx, d, pv); err != nil {
		return err
	}
	return a.forgetOwner(id)
}

// checkOwnerApproval refuses the wipe of a disk whose node-side ownership
// record names an owner, unless the controller approved the wipe for the
// very claim recorded: the PV's own annotations may have been edited, the
// node's record cannot have been.
func (a *Agent) checkOwnerApproval(pv *corev1.PersistentVolume) error {
	rec, owned, err := a.ownerRecord(pv.Labels[provisioner.LabelDisk])
	switch {
	case err != nil:
		return fmt.Errorf("disk of PV %s is not wiped: %w", pv.Name, err)
	case !owned:
		return nil
	case pv.Spec.ClaimRef == nil || string(pv.Spec.ClaimRef.UID) != rec.Claim:
		return fmt.Errorf("disk of PV %s holds the data of %s for claim %s (UID %s), not for the PV's claim; not wiped — the volume-controller can approve only the recorded claim", pv.Name, rec.Owner(), rec.ClaimName, rec.Claim)
	case !provisioner.ReleaseApproved(pv):
		return fmt.Errorf("disk of PV %s holds the data of %s; not wiped until the volume-controller confirms in PD that it is gone", pv.Name, rec.Owner())
	}
	return nil
}

// locate finds the disk with identity id, looking first where the PV says.
func (a *Agent) locate(ctx context.Context, id, path string) (found, bool, error) {
	a.mu.Lock()
	inv := a.inventory
	a.mu.Unlock()
	scan, err := a.scanner.Scan(ctx, inv)
	if err != nil {
		return found{}, false, fmt.Errorf("scan: %w", err)
	}
	sortFirst(scan.Disks, path)
	return a.findDisk(ctx, id, scan.Disks)
}

func sortFirst(ds []discovery.Disk, path string) {
	for i, d := range ds {
		if d.Path == path {
			ds[0], ds[i] = ds[i], ds[0]
			return
		}
	}
}

// wipe runs one wipe with its metrics and events; pv is nil for an orphan.
func (a *Agent) wipe(ctx context.Context, d found, pv *corev1.PersistentVolume) error {
	log := klog.FromContext(ctx).WithValues("path", d.Path, "disk", d.ID)
	var subject runtime.Object = a.nodeRef()
	if pv != nil {
		subject = pv
		log = log.WithValues("pv", pv.Name)
	}
	res, err := a.wiper.Wipe(ctx, d.Disk, d.ID)
	if err != nil {
		a.metrics.errors.WithLabelValues("wipe").Inc()
		a.events.event(subject, corev1.EventTypeWarning, ReasonWipeFailed,
			fmt.Sprintf("wipe of disk %s at %s failed: %v", d.ID, d.Path, err))
		return fmt.Errorf("wipe %s: %w", d.Path, err)
	}
	if d.Mode == corev1.PersistentVolumeBlock {
		// Wiped and verified: it holds nothing of a consumer's any more.
		if err := a.forgetBlock(d.ID); err != nil {
			return err
		}
	}
	a.metrics.wipeTime.WithLabelValues(res.Method).Observe(res.Duration.Seconds())
	a.noteWipe(d.ID, res, a.deps.Clock.Now())
	log.Info("wiped disk", "method", res.Method, "files", res.Files, "dirs", res.Dirs, "duration", res.Duration)
	a.events.event(subject, corev1.EventTypeNormal, ReasonWiped,
		fmt.Sprintf("disk %s at %s wiped by %s in %s (%d files, %d directories)", d.ID, d.Path, res.Method, roundDuration(res.Duration), res.Files, res.Dirs))
	return nil
}

// syncOrphan handles a disk that holds data (or an unfinished wipe) and
// has no PV in the node's cache. Right before anything, it asks the API
// server — not the node-scoped cache — for every PV in the cluster: a PV
// anywhere naming the disk, or a PV of this node naming its path (whatever
// its labels: a GitOps tool may have stripped ours), means the disk is not
// an orphan, and it is neither wiped nor published. A disk whose owner was
// ever recorded gets its PV back, bound to the recorded claim, and waits
// for the volume-controller's approval like any released disk; any other
// is wiped once its absence has lasted a resync period.
func (a *Agent) syncOrphan(ctx context.Context, d found) (diskStatus, bool, error) {
	rec, owned, err := a.ownerRecord(d.ID)
	if err != nil {
		msg := fmt.Sprintf("disk %s at %s holds data and its ownership record cannot be read (%v); not wiped, not published", d.ID, d.Path, err)
		a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskConflict, msg)
		return status(stateUnpublished, v1alpha1.PhaseFailed, "OwnershipRecordUnreadable", "%s", msg), false, err
	}
	if named, err := a.namedByAnyPV(ctx, d); err != nil || named != "" {
		return status(stateUnpublished, v1alpha1.PhaseConflict, "NamedByAnotherPV", "%s", named), false, err
	}
	if owned {
		if err := a.republishForApproval(ctx, d, rec); err != nil {
			return status(stateUnpublished, v1alpha1.PhaseUnpublished, "RepublishFailed", "holds the data of %s without a PV; re-creating its PV failed: %v", rec.Owner(), err), false, err
		}
		return status(stateReleased, v1alpha1.PhaseReleased, "AwaitingApproval", "holds the data of %s; its PV was re-created for claim %s and the disk is wiped only once the volume-controller confirms in PD that %s is gone", rec.Owner(), rec.ClaimName, rec.Owner()), false, nil
	}
	now := a.deps.Clock.Now()
	a.mu.Lock()
	since, seen := a.orphanSince[d.ID]
	if !seen {
		since = now
		a.orphanSince[d.ID] = now
	}
	a.mu.Unlock()
	if wait := a.cfg.ResyncPeriod - now.Sub(since); wait > 0 {
		if !seen {
			klog.FromContext(ctx).Info("disk holds data and has no PV; wiping it if that lasts", "path", d.Path, "disk", d.ID, "after", wait)
		}
		a.queue.AddAfter(reconcileKey, wait)
		return status(stateOrphan, v1alpha1.PhaseUnpublished, "HoldsDataWithoutPV", "holds data, no PV names it and no owner was ever recorded; it is wiped at %s if that still holds", since.Add(a.cfg.ResyncPeriod).UTC().Format(time.RFC3339)), false, nil
	}
	if err := a.startOrphanWipe(ctx, d); err != nil {
		return status(stateUnpublished, v1alpha1.PhaseFailed, "WipeFailed", "%v", err), false, err
	}
	return status(stateWiping, v1alpha1.PhaseWiping, "WipingOrphan", "holds data without a PV or an owner: being wiped before it is published"), false, nil
}

// namedByAnyPV lists every PV afresh and reports (with an event, and as
// the returned message) the PVs that name the disk by identity anywhere, or
// by path on this node.
func (a *Agent) namedByAnyPV(ctx context.Context, d found) (string, error) {
	list, err := a.deps.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("check PVs of disk %s before touching it: %w", d.ID, err)
	}
	hostname := a.node().Hostname
	var names []string
	for i := range list.Items {
		pv := &list.Items[i]
		samePath := localPath(pv) == d.Path && onNode(pv, a.cfg.NodeName, hostname)
		if pv.Labels[provisioner.LabelDisk] != d.ID && !samePath {
			continue
		}
		desc := fmt.Sprintf("%s (node %s)", pv.Name, orDash(pv.Labels[provisioner.LabelNode]))
		if samePath && (pv.Labels[provisioner.LabelDisk] != d.ID || pv.Labels[provisioner.LabelNode] != a.cfg.NodeName) {
			desc = fmt.Sprintf("%s (same path; it lost its labels — restore them with `kubectl label pv %s %s=%s %s=%s`)", pv.Name, pv.Name, provisioner.LabelDisk, d.ID, provisioner.LabelNode, a.cfg.NodeName)
		}
		names = append(names, desc)
	}
	if len(names) == 0 {
		return "", nil
	}
	msg := fmt.Sprintf("disk %s at %s holds data and is named by PV %s; not wiped, not published", d.ID, d.Path, strings.Join(names, ", "))
	a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskConflict, msg)
	return msg, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func localPath(pv *corev1.PersistentVolume) string {
	switch {
	case pv.Spec.Local != nil:
		return pv.Spec.Local.Path
	case pv.Spec.HostPath != nil:
		return pv.Spec.HostPath.Path
	}
	return ""
}

// onNode reports whether a PV is this node's: by our node label, or by a
// node affinity on the hostname (a PV of any provisioner, or ours without
// its labels).
func onNode(pv *corev1.PersistentVolume, node, hostname string) bool {
	if pv.Labels[provisioner.LabelNode] == node {
		return true
	}
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return pv.Spec.HostPath != nil // a hostPath PV names this host's path wherever it lands
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == provisioner.LabelHostname && e.Operator == corev1.NodeSelectorOpIn && slices.Contains(e.Values, hostname) {
				return true
			}
		}
	}
	return false
}

// republishForApproval gives an owned disk that lost its PV a PV again:
// bound to the claim its owner was recorded for, reclaimPolicy Retain, the
// record on it. The claim is gone (a PV is deleted only once its claim is),
// so the PV binder marks it Released, and the volume-controller approves
// the wipe only once PD shows the owner gone — the same path as any
// released disk. If the claim is still there, the PV binds to it again.
func (a *Agent) republishForApproval(ctx context.Context, d found, rec provisioner.Ownership) error {
	class, err := a.scLister.Get(d.Class)
	if err != nil {
		return fmt.Errorf("republish owned disk %s: StorageClass %s: %w", d.ID, d.Class, err)
	}
	pv, err := provisioner.RenderPV(d.Disk, provisioner.Identity{ID: d.ID, Source: d.Source}, a.node(), class)
	if err != nil {
		return err
	}
	ns, name, ok := strings.Cut(rec.ClaimName, "/")
	if !ok {
		ns, _, _ = strings.Cut(rec.Pod, "/")
		name = "unknown-claim-of-" + d.ID
	}
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: name, UID: types.UID(rec.Claim)}
	for k, v := range rec.Annotations() {
		if v != "" {
			pv.Annotations[k] = v
		}
	}
	pv.Labels[provisioner.LabelComponent] = rec.Component
	pv.Labels[provisioner.LabelCluster] = rec.Cluster
	created, err := a.deps.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // the old object is still terminating; the next pass retries
	}
	if err != nil {
		return fmt.Errorf("republish owned disk %s: %w", d.ID, err)
	}
	if err := a.pvIndex.Add(created); err != nil {
		klog.FromContext(ctx).Error(err, "cache republished PV", "pv", created.Name)
	}
	klog.FromContext(ctx).Info("republished owned disk for the controller's approval", "pv", created.Name, "disk", d.ID, "owner", rec.Owner(), "claim", rec.ClaimName)
	a.events.event(created, corev1.EventTypeWarning, ReasonOwnedDiskRepublished,
		fmt.Sprintf("disk %s at %s holds the data of %s (claim %s) but had no PV; PV re-created for that claim — the disk is wiped only once the volume-controller confirms in PD that %s is gone", d.ID, d.Path, rec.Owner(), rec.ClaimName, rec.Owner()))
	return nil
}

// restoreOwner puts the recorded owner back on a PV of its claim that lost
// it (annotations stripped by hand or by a tool).
func (a *Agent) restoreOwner(ctx context.Context, pv *corev1.PersistentVolume) error {
	if provisioner.Owned(pv) || pv.Spec.ClaimRef == nil {
		return nil
	}
	rec, owned, err := a.ownerRecord(pv.Labels[provisioner.LabelDisk])
	if err != nil || !owned || rec.Claim != string(pv.Spec.ClaimRef.UID) {
		return err
	}
	ann := map[string]any{}
	for k, v := range rec.Annotations() {
		if v != "" && pv.Annotations[k] != v {
			ann[k] = v
		}
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": pv.ResourceVersion,
		"annotations":     ann,
		"labels":          map[string]string{provisioner.LabelComponent: rec.Component, provisioner.LabelCluster: rec.Cluster},
	}})
	if err != nil {
		return err
	}
	_, err = a.deps.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // changed meanwhile; the next pass looks again
	}
	if err != nil {
		return fmt.Errorf("restore owner on PV %s: %w", pv.Name, err)
	}
	klog.FromContext(ctx).Info("restored ownership record on PV", "pv", pv.Name, "owner", rec.Owner())
	a.events.event(pv, corev1.EventTypeWarning, ReasonOwnerRestored,
		fmt.Sprintf("the ownership record (%s, claim %s) was missing from the PV and was restored from the node's copy", rec.Owner(), rec.ClaimName))
	return nil
}

// startOrphanWipe wipes a disk that holds data (or an unfinished wipe),
// has no PV and no owner, in the background so other disks are not held
// up.
func (a *Agent) startOrphanWipe(ctx context.Context, d found) error {
	if !a.tryBusy(d.ID) {
		return nil
	}
	a.holdPath(d.ID, d.Path)
	reason := "holds data but has no PV"
	if d.Wiping {
		reason = "was interrupted while being wiped"
	}
	klog.FromContext(ctx).Info("wiping disk before publishing it", "path", d.Path, "disk", d.ID, "reason", reason)
	a.orphanWipes.Add(1)
	go func() {
		defer a.orphanWipes.Done()
		defer a.enqueue()
		defer a.release(d.ID)
		// Errors are recorded as events and metrics inside wipe; the next
		// pass retries.
		_ = a.wipe(ctx, d, nil)
	}()
	return nil
}

// roundDuration keeps events readable without turning a fast wipe into "0s".
func roundDuration(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
