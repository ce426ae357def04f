package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
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
	counts := map[[2]string]float64{}
	idle := scan.Disks[:0:0]
	for _, d := range scan.Disks {
		if a.pathBusy(d.Path) {
			counts[[2]string{d.Class, stateWiping}]++
			continue
		}
		idle = append(idle, d)
	}
	disks := a.identify(ctx, idle)

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
	present := map[string]bool{}
	for _, d := range disks {
		if d.ID != "" {
			present[d.ID] = true
		}
	}

	var errs []error
	requeue := false

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
	for _, pv := range pvs {
		id := pv.Labels[provisioner.LabelDisk]
		if present[id] || a.isBusy(id) {
			continue
		}
		counts[[2]string{pv.Spec.StorageClassName, stateMissing}]++
		if err := a.handleMissing(ctx, pv); err != nil {
			errs = append(errs, err)
		}
	}

	orphans := map[string]bool{}
	for _, d := range disks {
		state, again, err := a.syncDisk(ctx, d, byID, byPath)
		if err != nil {
			errs = append(errs, err)
		}
		requeue = requeue || again
		counts[[2]string{d.Class, state}]++
		if state == stateOrphan {
			orphans[d.ID] = true
		}
	}
	a.mu.Lock()
	for id := range a.orphanSince {
		if !orphans[id] {
			delete(a.orphanSince, id) // it has a PV again, or is gone
		}
	}
	a.mu.Unlock()

	a.metrics.disks.Reset()
	for k, n := range counts {
		if k[1] == stateOrphan {
			k[1] = stateUnpublished
		}
		a.metrics.disks.WithLabelValues(k[0], k[1]).Add(n)
	}
	if requeue {
		a.queue.AddAfter(reconcileKey, 500*time.Millisecond)
	}
	if len(errs) == 0 {
		a.ready.Store(true)
	}
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

// identify reads each disk's identity. A filesystem disk without a marker
// gets one only if it is empty: data without our identity belongs to
// someone else and is neither published nor wiped.
func (a *Agent) identify(ctx context.Context, disks []discovery.Disk) []found {
	out := make([]found, 0, len(disks))
	for _, d := range disks {
		f := found{Disk: d}
		if d.Mode == corev1.PersistentVolumeBlock {
			a.identifyBlock(&f)
		} else {
			a.identifyFilesystem(ctx, &f)
		}
		if f.Problem != "" {
			a.metrics.errors.WithLabelValues("identify").Inc()
			a.events.once("disk/"+d.Path, a.nodeRef(), ReasonBadDisk, f.Problem)
		}
		out = append(out, f)
	}
	return out
}

func (a *Agent) identifyFilesystem(ctx context.Context, f *found) {
	m, ok, err := discovery.ReadMarker(f.Path)
	if err != nil {
		f.Problem = fmt.Sprintf("%s: %v; not published. Inspect the marker file %s; remove it only if the disk holds nothing you need", f.Path, err, discovery.MarkerName)
		return
	}
	contents, err := discovery.Contents(f.Path)
	if err != nil {
		f.Problem = fmt.Sprintf("%s cannot be listed: %v", f.Path, err)
		return
	}
	f.HasData = len(contents) > 0
	if ok {
		f.ID, f.Wiping = m.ID, m.State == discovery.StateWiping
		return
	}
	if f.HasData {
		f.Foreign = true
		f.Problem = fmt.Sprintf("%s holds data (%s) but no tidb-localpv identity, so it is not published and not wiped; empty the disk to have it published", f.Path, firstFew(contents))
		return
	}
	id, err := discovery.NewID()
	if err != nil {
		f.Problem = err.Error()
		return
	}
	m = discovery.Marker{ID: id, State: discovery.StateReady, Created: time.Now().UTC()}
	if f.Device != "" && a.formattedByAgent(ctx, f.Device, f.FSType) {
		m.FormattedDevice, m.FSType = f.Device, f.FSType
	}
	if err := discovery.WriteMarker(f.Path, m); err != nil {
		f.Problem = fmt.Sprintf("%s: %v", f.Path, err)
		return
	}
	klog.FromContext(ctx).Info("new disk", "path", f.Path, "disk", id)
	f.ID = id
}

func (a *Agent) identifyBlock(f *found) {
	id, src, err := a.blocks.Identify(f.Path)
	if err != nil {
		f.Problem = fmt.Sprintf("%s: %v; Block volumes need a stable identity", f.Path, err)
		return
	}
	f.ID, f.Source = id, src
	wiping, err := a.wiper.BlockWiping(id)
	if err != nil {
		f.Problem = fmt.Sprintf("%s: read wipe record: %v", f.Path, err)
		return
	}
	f.Wiping = wiping
	// A block disk cannot be listed; one published before may hold data.
	f.HasData = a.blockKnown(id)
}

// syncDisk adopts, wipes or publishes one disk and returns its state.
func (a *Agent) syncDisk(ctx context.Context, d found, byID, byPath map[string]*corev1.PersistentVolume) (state string, requeue bool, err error) {
	log := klog.FromContext(ctx).WithValues("path", d.Path, "disk", d.ID)
	switch {
	case d.Foreign:
		return stateForeign, false, nil
	case d.ID == "":
		return stateUnpublished, false, nil
	case a.isBusy(d.ID):
		return stateWiping, false, nil
	}
	if pv, ok := byID[d.ID]; ok {
		return a.adopt(ctx, d, pv), false, nil
	}
	if old, ok := byPath[d.Path]; ok {
		// Another disk's PV still names this path; publishing now would
		// give two PVs one path. handleMissing removes it once unbound.
		a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskConflict,
			fmt.Sprintf("disk %s at %s waits for PV %s (%s, disk %s) of the disk that was there before", d.ID, d.Path, old.Name, old.Status.Phase, old.Labels[provisioner.LabelDisk]))
		return stateUnpublished, false, nil
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
		return stateUnpublished, true, nil
	}
	if err != nil {
		a.metrics.errors.WithLabelValues("publish").Inc()
		return stateUnpublished, false, err
	}
	if created == nil {
		return stateUnpublished, false, nil
	}
	return stateAvailable, false, nil
}

func (a *Agent) adopt(ctx context.Context, d found, pv *corev1.PersistentVolume) string {
	if pv.Spec.Local.Path != d.Path {
		a.events.once("pv/"+pv.Name, pv, ReasonDiskConflict,
			fmt.Sprintf("disk %s is now at %s but PV %s says %s; remount it at %s", d.ID, d.Path, pv.Name, pv.Spec.Local.Path, pv.Spec.Local.Path))
	}
	if _, missing := pv.Annotations[provisioner.AnnDiskMissing]; missing {
		if err := a.patchAnnotation(ctx, pv, provisioner.AnnDiskMissing, nil); err == nil {
			a.events.event(pv, corev1.EventTypeNormal, ReasonDiskFound, fmt.Sprintf("disk %s is back at %s", d.ID, d.Path))
			a.events.forget("pv/" + pv.Name)
		}
	}
	switch pv.Status.Phase {
	case corev1.VolumeBound:
		return stateBound
	case corev1.VolumeReleased, corev1.VolumeFailed:
		return stateReleased
	default:
		return stateAvailable
	}
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

func firstFew(names []string) string {
	if len(names) > 3 {
		return strings.Join(names[:3], ", ") + ", …"
	}
	return strings.Join(names, ", ")
}
