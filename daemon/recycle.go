package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
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
	a.holdPath(id, d.Path)
	return a.wipe(ctx, d, pv)
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
	log.Info("wiped disk", "method", res.Method, "files", res.Files, "dirs", res.Dirs, "duration", res.Duration)
	a.events.event(subject, corev1.EventTypeNormal, ReasonWiped,
		fmt.Sprintf("disk %s at %s wiped by %s in %s (%d files, %d directories)", d.ID, d.Path, res.Method, roundDuration(res.Duration), res.Files, res.Dirs))
	return nil
}

// startOrphanWipe wipes a disk that holds data (or an unfinished wipe) and
// has no PV, in the background so other disks are not held up. Right before,
// it asks the API server — not the node-scoped cache — whether any PV in the
// cluster names the disk: a PV elsewhere means the disk is not an orphan.
func (a *Agent) startOrphanWipe(ctx context.Context, d found) error {
	sel := labels.Set{provisioner.LabelDisk: d.ID}.String()
	list, err := a.deps.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("check PVs of disk %s before wiping: %w", d.ID, err)
	}
	if len(list.Items) > 0 {
		var names []string
		for _, pv := range list.Items {
			names = append(names, fmt.Sprintf("%s (node %s)", pv.Name, pv.Labels[provisioner.LabelNode]))
		}
		a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskConflict,
			fmt.Sprintf("disk %s at %s holds data and is named by PV %s; not wiped, not published", d.ID, d.Path, strings.Join(names, ", ")))
		return nil
	}
	if !a.tryBusy(d.ID) {
		return nil
	}
	a.holdPath(d.ID, d.Path)
	reason := "holds data but has no PV"
	if d.Wiping {
		reason = "was interrupted while being wiped"
	}
	klog.FromContext(ctx).Info("wiping disk before publishing it", "path", d.Path, "disk", d.ID, "reason", reason)
	go func() {
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
