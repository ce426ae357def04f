package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// disk states, as the tidb_localpv_disks metric reports them.
const (
	stateAvailable   = "available"
	stateBound       = "bound"
	stateReleased    = "released"
	stateWiping      = "wiping"
	stateMissing     = "missing"
	stateForeign     = "foreign"
	stateUnpublished = "unpublished"
	// stateOrphan: holds data, no PV; waiting out the resync period
	// before the wipe (reported as unpublished).
	stateOrphan = "orphan"
)

// found is a disk with its identity read.
type found struct {
	discovery.Disk
	ID      string
	Source  string // raw identity of block disks
	Wiping  bool   // an interrupted wipe must finish before publishing
	HasData bool
	Foreign bool // holds data but no identity: never ours to wipe
	Problem string
	state   string // set when the disk could not be identified this pass
}

// reconcile brings the node's PVs in line with its disks. It is idempotent
// and reads only caches, the mount table and the disks themselves; the
// destructive steps re-read the API first.
func (a *Agent) reconcile(ctx context.Context) error {
	start := time.Now()
	defer func() { a.metrics.reconcileTime.Observe(time.Since(start).Seconds()) }()
	log := klog.FromContext(ctx)

	inv := a.applyInventory(ctx)
	scan, err := a.scanner.Scan(ctx, inv)
	if err != nil {
		a.metrics.errors.WithLabelValues("scan").Inc()
		return fmt.Errorf("scan: %w", err)
	}
	for p, why := range scan.Skipped {
		log.V(4).Info("not a disk", "path", p, "reason", why)
	}
	counts := newTally(a.cfg.Roots.Classes())
	idle := scan.Disks[:0:0]
	busy := map[string]bool{}
	var busyDisks []discovery.Disk
	for _, d := range scan.Disks {
		if a.pathBusy(d.Path) {
			busyDisks = append(busyDisks, d)
			busy[d.Path] = true
			continue
		}
		idle = append(idle, d)
	}
	disks := a.identify(ctx, idle)
	a.checkHealth(ctx, disks)
	a.health.setTargets(disks)

	pvs, err := a.ownPVs()
	if err != nil {
		return err
	}
	byID := map[string]*corev1.PersistentVolume{}
	byPath := map[string]*corev1.PersistentVolume{}
	for _, pv := range pvs {
		byID[pv.Labels[provisioner.LabelDisk]] = pv
		byPath[pv.Spec.Local.Path] = pv
	}
	for _, d := range busyDisks {
		// Being wiped, so not measured this pass: its PV knows its size.
		counts.add(d.Class, stateWiping, v1alpha1.PhaseWiping, pvBytes(byPath[d.Path]))
	}
	present, unsure := map[string]bool{}, unidentified(disks)
	for _, d := range disks {
		if d.ID != "" {
			present[d.ID] = true
		}
	}

	var errs []error
	requeue := false
	if err := a.returnToService(ctx, disks); err != nil {
		errs = append(errs, err)
	}

	// Keep the controller's ownership records where no pod can reach them,
	// and put one back on a PV that lost it.
	for _, pv := range pvs {
		if err := a.keepOwner(ctx, pv); err != nil {
			errs = append(errs, err)
		}
		if err := a.restoreOwner(ctx, pv); err != nil {
			errs = append(errs, err)
		}
	}

	// PVs first: a disk replaced at the same path can be published only
	// once its predecessor's unbound PV is gone.
	var missing []*corev1.PersistentVolume
	for _, pv := range pvs {
		id := pv.Labels[provisioner.LabelDisk]
		if present[id] || a.isBusy(id) || unsure[pv.Spec.Local.Path] {
			continue
		}
		missing = append(missing, pv)
		counts.add(pv.Spec.StorageClassName, stateMissing, v1alpha1.PhaseMissing, pvBytes(pv))
		if err := a.handleMissing(ctx, pv); err != nil {
			errs = append(errs, err)
		}
	}

	orphans := map[string]bool{}
	reports := make([]diskReport, 0, len(disks))
	for _, d := range disks {
		st, again, err := a.syncDisk(ctx, d, byID, byPath)
		if err != nil {
			errs = append(errs, err)
		}
		requeue = requeue || again
		counts.add(d.Class, st.state, st.phase, d.Capacity)
		if st.state == stateOrphan {
			orphans[d.ID] = true
		}
		r := diskReport{found: d, status: st}
		if h, ok := a.health.healthOf(d); ok {
			r.health = &h
		}
		reports = append(reports, r)
	}
	if err := a.reportHealth(ctx, reports, pvs, missing); err != nil {
		errs = append(errs, err)
	}
	if err := a.syncLocalDisks(ctx, reports, pvs, busy); err != nil {
		errs = append(errs, err)
	}
	a.mu.Lock()
	for id := range a.orphanSince {
		if !orphans[id] {
			delete(a.orphanSince, id) // it has a PV again, or is gone
		}
	}
	a.mu.Unlock()

	a.metrics.publish(counts)
	if requeue {
		a.queue.AddAfter(reconcileKey, 500*time.Millisecond)
	}
	// Ready means the caches synced (workers start only then) and one pass
	// went over every disk. A disk that failed is retried, and shown on its
	// LocalDisk and in events; holding the whole agent unready for it would
	// stall a DaemonSet rollout on one bad disk and hide nothing better.
	a.ready.Store(true)
	return errors.Join(errs...)
}

func (a *Agent) ownPVs() ([]*corev1.PersistentVolume, error) {
	all, err := a.pvLister.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list PVs: %w", err)
	}
	out := all[:0:0]
	for _, pv := range all {
		if provisioner.IsOurs(pv) && pv.Labels[provisioner.LabelNode] == a.cfg.NodeName {
			out = append(out, pv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// diskStatus is what one pass found of one disk: its state for the
// tidb_localpv_disks metric and its LocalDisk's phase, reason and message.
type diskStatus struct {
	state   string
	phase   v1alpha1.Phase
	reason  string
	message string
}

func status(state string, phase v1alpha1.Phase, reason, format string, args ...any) diskStatus {
	return diskStatus{state: state, phase: phase, reason: reason, message: fmt.Sprintf(format, args...)}
}

// syncDisk adopts, wipes or publishes one disk and returns its status.
func (a *Agent) syncDisk(ctx context.Context, d found, byID, byPath map[string]*corev1.PersistentVolume) (st diskStatus, requeue bool, err error) {
	log := klog.FromContext(ctx).WithValues("path", d.Path, "disk", d.ID)
	switch {
	case d.state == stateStalled:
		return status(stateStalled, v1alpha1.PhaseFailed, "Stalled", "%s", orDash(d.Problem)), false, nil
	case d.state != "":
		return status(d.state, v1alpha1.PhaseWiping, "Wiping", "being wiped"), false, nil
	case d.Foreign:
		return status(stateForeign, v1alpha1.PhaseForeign, "HoldsDataWithoutIdentity", "%s", d.Problem), false, nil
	case d.ID == "":
		return status(stateUnpublished, v1alpha1.PhaseFailed, "Unidentifiable", "%s", d.Problem), false, nil
	case a.isBusy(d.ID):
		return status(stateWiping, v1alpha1.PhaseWiping, "Wiping", "being wiped"), false, nil
	}
	// A disk that reads Failed, or failed once, stays out of the pool.
	if st, handled, err := a.syncUnhealthy(ctx, d, byID); handled {
		return st, false, err
	}
	if pv, ok := byID[d.ID]; ok {
		return a.adopt(ctx, d, pv), false, nil
	}
	if old, ok := byPath[d.Path]; ok {
		// Another disk's PV still names this path; publishing now would
		// give two PVs one path. handleMissing removes it once unbound.
		msg := fmt.Sprintf("disk %s at %s waits for PV %s (%s, disk %s) of the disk that was there before", d.ID, d.Path, old.Name, old.Status.Phase, old.Labels[provisioner.LabelDisk])
		a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskConflict, msg)
		return status(stateUnpublished, v1alpha1.PhaseConflict, "PathNamedByAnotherPV", "%s", msg), false, nil
	}
	if d.Wiping || d.HasData {
		// Rule 3: a disk with data whose PV is gone is wiped before reuse —
		// unless it is owned, or anything still names it.
		return a.syncOrphan(ctx, d)
	}
	created, err := a.publish(ctx, d)
	if apierrors.IsAlreadyExists(err) {
		// The previous PV of this disk is still being deleted; try again soon.
		log.V(2).Info("PV name still taken; retrying")
		return status(stateUnpublished, v1alpha1.PhaseUnpublished, "PVNameTaken", "the disk's previous PV is still being deleted; published once it is gone"), true, nil
	}
	if err != nil {
		a.metrics.errors.WithLabelValues("publish").Inc()
		return status(stateUnpublished, v1alpha1.PhaseUnpublished, "PublishFailed", "creating its PV failed: %v", err), false, err
	}
	if created == nil {
		return status(stateUnpublished, v1alpha1.PhaseUnpublished, "StorageClassMissing", "StorageClass %s does not exist; create it (see manifests/storageclasses.yaml)", d.Class), false, nil
	}
	return status(stateAvailable, v1alpha1.PhaseAvailable, "Published", "published as PV %s", created.Name), false, nil
}

func (a *Agent) adopt(ctx context.Context, d found, pv *corev1.PersistentVolume) diskStatus {
	if pv.Spec.Local.Path != d.Path {
		msg := fmt.Sprintf("disk %s is now at %s but PV %s says %s; remount it at %s", d.ID, d.Path, pv.Name, pv.Spec.Local.Path, pv.Spec.Local.Path)
		a.events.once("pv/"+pv.Name, pv, ReasonDiskConflict, msg)
		return status(stateUnpublished, v1alpha1.PhaseConflict, "MovedFromPVPath", "%s", msg)
	}
	if _, missing := pv.Annotations[provisioner.AnnDiskMissing]; missing {
		if err := a.patchAnnotation(ctx, pv, provisioner.AnnDiskMissing, nil); err == nil {
			a.events.event(pv, corev1.EventTypeNormal, ReasonDiskFound, fmt.Sprintf("disk %s is back at %s", d.ID, d.Path))
			a.events.forget("pv/" + pv.Name)
		}
	}
	switch pv.Status.Phase {
	case corev1.VolumeBound:
		return status(stateBound, v1alpha1.PhaseBound, "Bound", "bound to claim %s", claimName(pv))
	case corev1.VolumeReleased, corev1.VolumeFailed:
		if provisioner.Owned(pv) && !provisioner.ReleaseApproved(pv) {
			return status(stateReleased, v1alpha1.PhaseReleased, "AwaitingApproval", "claim %s is gone; the disk holds the data of %s and is wiped only once the volume-controller confirms in PD that it is gone", claimName(pv), ownerOf(pv))
		}
		if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			return status(stateReleased, v1alpha1.PhaseReleased, "Retained", "claim %s is gone; reclaimPolicy %s keeps the data until the volume-controller (or you) set it to Delete", claimName(pv), pv.Spec.PersistentVolumeReclaimPolicy)
		}
		return status(stateReleased, v1alpha1.PhaseReleased, "AwaitingWipe", "claim %s is gone; the disk is being recycled", claimName(pv))
	default:
		return status(stateAvailable, v1alpha1.PhaseAvailable, "Published", "published as PV %s", pv.Name)
	}
}

func claimName(pv *corev1.PersistentVolume) string {
	if pv.Spec.ClaimRef == nil {
		return "-"
	}
	return pv.Spec.ClaimRef.Namespace + "/" + pv.Spec.ClaimRef.Name
}

func ownerOf(pv *corev1.PersistentVolume) string {
	rec, _ := provisioner.OwnershipOf(pv)
	return rec.Owner()
}

func (a *Agent) publish(ctx context.Context, d found) (*corev1.PersistentVolume, error) {
	class, err := a.scLister.Get(d.Class)
	if apierrors.IsNotFound(err) {
		a.events.once("class/"+d.Class, a.nodeRef(), ReasonMissingClass,
			fmt.Sprintf("disk %s is for StorageClass %s, which does not exist; create it (see manifests/storageclasses.yaml)", d.Path, d.Class))
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get StorageClass %s: %w", d.Class, err)
	}
	pv, err := provisioner.RenderPV(d.Disk, provisioner.Identity{ID: d.ID, Source: d.Source}, a.node(), class)
	if err != nil {
		return nil, err
	}
	if d.Mode == corev1.PersistentVolumeBlock {
		if err := a.rememberBlock(d.ID); err != nil {
			return nil, err
		}
	}
	created, err := a.deps.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	// Put the new PV in the cache at once: a pass that runs before the
	// watch delivers it would otherwise try to publish the disk again.
	if err := a.pvIndex.Add(created); err != nil {
		klog.FromContext(ctx).Error(err, "cache published PV", "pv", created.Name)
	}
	klog.FromContext(ctx).Info("published disk", "pv", created.Name, "path", d.Path, "disk", d.ID, "class", d.Class, "capacity", d.Capacity)
	a.events.event(created, corev1.EventTypeNormal, ReasonPublished,
		fmt.Sprintf("disk %s at %s on node %s (%d bytes)", d.ID, d.Path, a.cfg.NodeName, d.Capacity))
	return created, nil
}

// handleMissing deals with a PV whose disk is not on the node: an unbound PV
// goes (guarded by a fresh read and UID + resourceVersion preconditions, so
// a bind racing with us wins); a bound one is flagged, never wiped; a
// released one is left to the library, whose Delete finds nothing to wipe.
func (a *Agent) handleMissing(ctx context.Context, pv *corev1.PersistentVolume) error {
	log := klog.FromContext(ctx).WithValues("pv", pv.Name, "path", pv.Spec.Local.Path)
	switch pv.Status.Phase {
	case corev1.VolumeBound:
		if _, flagged := pv.Annotations[provisioner.AnnDiskMissing]; flagged {
			return nil
		}
		now := time.Now().UTC().Format(time.RFC3339)
		if err := a.patchAnnotation(ctx, pv, provisioner.AnnDiskMissing, &now); err != nil {
			return err
		}
		log.Info("disk of bound PV is missing")
		a.events.event(pv, corev1.EventTypeWarning, ReasonDiskMissing,
			fmt.Sprintf("disk %s is not at %s on node %s; the claim keeps the PV; remount the disk, or release the claim to let the PV go", pv.Labels[provisioner.LabelDisk], pv.Spec.Local.Path, a.cfg.NodeName))
		return nil
	case corev1.VolumeReleased, corev1.VolumeFailed:
		return nil
	}
	fresh, err := a.deps.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("re-read PV %s: %w", pv.Name, err)
	}
	if fresh.UID != pv.UID || fresh.Spec.ClaimRef != nil || fresh.Status.Phase == corev1.VolumeBound {
		return nil
	}
	uid, rv := fresh.UID, fresh.ResourceVersion
	err = a.deps.Client.CoreV1().PersistentVolumes().Delete(ctx, fresh.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		a.metrics.errors.WithLabelValues("delete").Inc()
		return fmt.Errorf("delete PV %s of missing disk: %w", pv.Name, err)
	}
	log.Info("removed PV of missing disk")
	a.events.event(a.nodeRef(), corev1.EventTypeNormal, ReasonPVRemoved,
		fmt.Sprintf("PV %s removed: its disk %s is no longer at %s", pv.Name, pv.Labels[provisioner.LabelDisk], pv.Spec.Local.Path))
	return nil
}

func (a *Agent) patchAnnotation(ctx context.Context, pv *corev1.PersistentVolume, key string, value *string) error {
	v := "null"
	if value != nil {
		v = fmt.Sprintf("%q", *value)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, key, v)
	_, err := a.deps.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("annotate PV %s: %w", pv.Name, err)
	}
	return nil
}

// node is the PV's view of this node; the hostname label may differ from
// the Node name, and the scheduler matches the label.
func (a *Agent) node() provisioner.Node {
	n := provisioner.Node{Name: a.cfg.NodeName, Hostname: a.cfg.NodeName}
	if obj, err := a.nodeList.Get(a.cfg.NodeName); err == nil {
		if h := obj.Labels[provisioner.LabelHostname]; h != "" {
			n.Hostname = h
		}
	}
	return n
}

func (a *Agent) nodeRef() *corev1.ObjectReference {
	ref := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: types.UID(a.cfg.NodeName)}
	if obj, err := a.nodeList.Get(a.cfg.NodeName); err == nil {
		ref.UID = obj.UID
	}
	return ref
}

// blockKnown and rememberBlock keep the list of block disks the agent has
// published: such a disk found without its PV may hold a consumer's data.
func (a *Agent) blockKnown(id string) bool {
	_, err := os.Stat(filepath.Join(a.cfg.StateDir, "published", id))
	return err == nil
}

func (a *Agent) rememberBlock(id string) error {
	dir := filepath.Join(a.cfg.StateDir, "published")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("record block disk: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, id), nil, 0o600); err != nil {
		return fmt.Errorf("record block disk: %w", err)
	}
	return nil
}

// forgetBlock takes a wiped block disk off the list: left on it, the disk
// would count as holding data forever and be wiped on every pass instead of
// being published again.
func (a *Agent) forgetBlock(id string) error {
	err := os.Remove(filepath.Join(a.cfg.StateDir, "published", id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget wiped block disk %s: %w", id, err)
	}
	return nil
}
