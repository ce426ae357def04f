package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// Every disk the agent finds has a LocalDisk object (cluster-scoped, named
// like the disk's PV): the agent writes what the disk is and what it sees
// of it — published or not, and why — so that a disk that is not published
// (foreign data, a path conflict, waiting to be wiped, missing, a bad
// marker) is visible and explained for as long as that lasts, not only in
// an Event that expires. Status is written only when it changes.

// diskReport pairs a disk found this pass with what was found of it.
type diskReport struct {
	found
	status diskStatus
	// health is the disk's last health reading; nil when never read.
	health *provisioner.Health
}

// diskObjectName is the name of a disk's LocalDisk: its PV's name, so the
// two are found from each other; a disk without an identity is named by
// its path.
func diskObjectName(node, disk, id string) string {
	return provisioner.PVName(node, disk, id)
}

func (a *Agent) diskObject(name string) (*v1alpha1.LocalDisk, bool) {
	obj, ok, err := a.diskIdx.GetByKey(name)
	if err != nil || !ok {
		return nil, false
	}
	u, isU := obj.(*unstructured.Unstructured)
	if !isU {
		return nil, false
	}
	var ld v1alpha1.LocalDisk
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ld); err != nil {
		return nil, false
	}
	return &ld, true
}

// syncLocalDisks brings the node's LocalDisk objects in line with the disks
// found this pass. busy are the paths being wiped, which the pass did not
// look at.
func (a *Agent) syncLocalDisks(ctx context.Context, reports []diskReport, pvs []*corev1.PersistentVolume, busy map[string]bool) error {
	if a.deps.Dynamic == nil {
		return nil
	}
	now := a.deps.Clock.Now()
	byID := map[string]*corev1.PersistentVolume{}
	for _, pv := range pvs {
		byID[pv.Labels[provisioner.LabelDisk]] = pv
	}
	seen := map[string]bool{}
	var errs []error
	for _, r := range reports {
		name := diskObjectName(a.cfg.NodeName, r.Name, r.ID)
		seen[name] = true
		spec := v1alpha1.LocalDiskSpec{
			NodeName: a.cfg.NodeName, Path: r.Path, Device: r.Device, StorageClassName: r.Class,
			VolumeMode: r.Mode, DiskID: r.ID, IdentitySource: r.Source, Source: string(r.Disk.Source),
		}
		st := v1alpha1.LocalDiskStatus{Phase: r.status.phase, Reason: r.status.reason, Message: r.status.message, CapacityBytes: r.Capacity}
		if pv := byID[r.ID]; r.ID != "" && pv != nil {
			st.PersistentVolume = pv.Name
			if pv.Spec.ClaimRef != nil {
				st.Claim = claimName(pv)
			}
		}
		st.LastWipe = a.lastWipe(r.ID)
		st.Health = apiHealth(r.health)
		if err := a.applyLocalDisk(ctx, name, spec, st, now); err != nil {
			errs = append(errs, err)
		}
	}
	for _, obj := range a.diskIdx.List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok || seen[u.GetName()] {
			continue
		}
		ld, ok := a.diskObject(u.GetName())
		if !ok || ld.Spec.NodeName != a.cfg.NodeName {
			continue
		}
		if busy[ld.Spec.Path] {
			// Being wiped: the pass did not look at it, but it is not missing.
			st := ld.Status
			st.Phase, st.Reason, st.Message = v1alpha1.PhaseWiping, "Wiping", "being wiped; published again once the wipe is verified"
			if err := a.applyLocalDisk(ctx, ld.Name, ld.Spec, st, now); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := a.missingLocalDisk(ctx, ld, byID[ld.Spec.DiskID], now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// missingLocalDisk marks an object whose disk was not found, and removes it
// once the disk is gone for good: no PV, not seen for the retention period
// (at once for a disk that never had an identity).
func (a *Agent) missingLocalDisk(ctx context.Context, ld *v1alpha1.LocalDisk, pv *corev1.PersistentVolume, now time.Time) error {
	since := now
	if ld.Status.Phase == v1alpha1.PhaseMissing && ld.Status.Since != nil {
		since = ld.Status.Since.Time
	}
	if pv == nil && (ld.Spec.DiskID == "" || now.Sub(since) >= a.cfg.MissingDiskRetention) {
		uid := ld.UID
		err := a.deps.Dynamic.Resource(v1alpha1.Resource).Delete(ctx, ld.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("remove LocalDisk %s of a disk gone for good: %w", ld.Name, err)
		}
		klog.FromContext(ctx).Info("removed LocalDisk of a disk gone for good", "localdisk", ld.Name, "missingSince", since)
		return nil
	}
	st := ld.Status
	st.Phase, st.Reason = v1alpha1.PhaseMissing, "NotFound"
	st.Message = fmt.Sprintf("disk %s is not at %s on node %s", orDash(ld.Spec.DiskID), ld.Spec.Path, a.cfg.NodeName)
	if pv != nil {
		st.Message += fmt.Sprintf("; PV %s (%s) still names it: remount the disk, or release the claim to let the PV go", pv.Name, pv.Status.Phase)
	} else {
		st.Message += fmt.Sprintf("; this object is removed %s after the disk was last seen", a.cfg.MissingDiskRetention)
	}
	return a.applyLocalDisk(ctx, ld.Name, ld.Spec, st, now)
}

// applyLocalDisk creates or updates one object; it writes nothing when
// nothing the agent owns changed.
func (a *Agent) applyLocalDisk(ctx context.Context, name string, spec v1alpha1.LocalDiskSpec, st v1alpha1.LocalDiskStatus, now time.Time) error {
	res := a.deps.Dynamic.Resource(v1alpha1.Resource)
	cur, exists := a.diskObject(name)
	if !exists {
		ld := &v1alpha1.LocalDisk{
			TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: v1alpha1.Kind},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
				provisioner.LabelNode: spec.NodeName, labelClass: spec.StorageClassName,
			}},
			Spec: spec,
		}
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(ld)
		if err != nil {
			return err
		}
		created, err := res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // the cache is behind; the next pass updates it
		}
		if err != nil {
			return fmt.Errorf("create LocalDisk %s: %w", name, err)
		}
		_ = a.diskIdx.Add(created)
		cur, _ = a.diskObject(name)
		if cur == nil {
			return nil
		}
	} else if !reflect.DeepEqual(cur.Spec, spec) {
		patch, _ := json.Marshal(map[string]any{"spec": spec, "metadata": map[string]any{"resourceVersion": cur.ResourceVersion}})
		if _, err := res.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("update LocalDisk %s: %w", name, err)
		}
	}
	st.Since = cur.Status.Since
	if st.Health != nil && cur.Status.Health != nil && st.Health.Since.Equal(&cur.Status.Health.Since) {
		st.Health.Since = cur.Status.Health.Since // same instant; the API's copy is in local time
	}
	if st.Since == nil || cur.Status.Phase != st.Phase || cur.Status.Reason != st.Reason {
		st.Since = &metav1.Time{Time: now.UTC().Truncate(time.Second)}
	}
	if st.CapacityBytes > 0 {
		st.Capacity = resource.NewQuantity(st.CapacityBytes, resource.BinarySI).String()
	}
	if agentStatusEqual(cur.Status, st) {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"status": agentStatusPatch(st)})
	if err != nil {
		return err
	}
	if _, err := res.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update LocalDisk %s status: %w", name, err)
	}
	a.metrics.statusWrites.Inc()
	if st.Phase == v1alpha1.PhaseForeign || st.Phase == v1alpha1.PhaseConflict || st.Phase == v1alpha1.PhaseFailed || st.Phase == v1alpha1.PhaseMissing {
		klog.FromContext(ctx).Info("disk not usable", "localdisk", name, "path", spec.Path, "phase", st.Phase, "reason", st.Reason, "message", st.Message)
	}
	return nil
}

// labelClass labels LocalDisks with their StorageClass, for selectors.
const labelClass = "tidb-localpv.io/class"

// agentStatusEqual compares the fields the agent owns.
func agentStatusEqual(cur, want v1alpha1.LocalDiskStatus) bool {
	cur.Owner, cur.NodeLost, want.Owner, want.NodeLost = nil, nil, nil, nil
	return reflect.DeepEqual(agentStatusPatch(cur), agentStatusPatch(want))
}

// agentStatusPatch is a merge patch of the agent's fields: empty ones are
// removed (null), the controller's (owner, nodeLost) are not touched.
func agentStatusPatch(st v1alpha1.LocalDiskStatus) map[string]any {
	orNil := func(v any, empty bool) any {
		if empty {
			return nil
		}
		return v
	}
	return map[string]any{
		"phase":            orNil(st.Phase, st.Phase == ""),
		"reason":           orNil(st.Reason, st.Reason == ""),
		"message":          orNil(st.Message, st.Message == ""),
		"capacityBytes":    orNil(st.CapacityBytes, st.CapacityBytes == 0),
		"capacity":         orNil(st.Capacity, st.Capacity == ""),
		"persistentVolume": orNil(st.PersistentVolume, st.PersistentVolume == ""),
		"claim":            orNil(st.Claim, st.Claim == ""),
		"since":            orNil(st.Since, st.Since == nil),
		"lastWipe":         orNil(st.LastWipe, st.LastWipe == nil),
		"health":           orNil(st.Health, st.Health == nil),
	}
}

// noteWipe remembers a disk's last completed wipe for its LocalDisk.
func (a *Agent) noteWipe(id string, res provisioner.Result, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.wipes[id] = &v1alpha1.Wipe{Method: res.Method, Duration: metav1.Duration{Duration: res.Duration},
		Time: metav1.Time{Time: at.UTC().Truncate(time.Second)}, Files: int64(res.Files), Dirs: int64(res.Dirs)}
}

func (a *Agent) lastWipe(id string) *v1alpha1.Wipe {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.wipes[id]
}
