package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// How a disk's health is told: on its PV (annotations, and events with
// Kubernetes' volume-health reasons), on its LocalDisk (status.health; a
// failed disk's phase is Failed), on the Node for a disk without a PV, and
// in the tidb_localpv_disk_health metric. The volume-controller carries
// the PV's condition to the claim and the pod.
//
// A disk that failed is out of service until an operator says otherwise:
// its unbound PV is withdrawn, a released one is not wiped, and it is not
// published again, whatever it reads later.

// Event reasons of the out-of-service rule.
const (
	// ReasonDiskOutOfService: a failed disk is kept out of the pool.
	ReasonDiskOutOfService = "DiskOutOfService"
	// ReasonReturnedToService: an operator returned a failed disk.
	ReasonReturnedToService = "ReturnedToService"
	// ReasonReturnRefused: the disk still reads Failed.
	ReasonReturnRefused = "ReturnToServiceRefused"
)

// healthOf is a disk's health after the last check, and whether it was
// ever read.
func (m *healthMonitor) healthOf(d found) (provisioner.Health, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dh := m.disks[healthKey(d)]
	if dh == nil || !dh.known {
		return provisioner.Health{}, false
	}
	return dh.health, true
}

// outOfService returns the out-of-service record of a disk, from memory or
// from its file. A record that cannot be read is an error: callers must
// not wipe or publish the disk.
func (a *Agent) outOfService(id string) (*faultRecord, error) {
	a.health.mu.Lock()
	dh := a.health.disks[id]
	if dh != nil && dh.readErr == nil {
		oos := dh.record.OutOfService
		a.health.mu.Unlock()
		return oos, nil
	}
	a.health.mu.Unlock()
	rec, err := a.loadHealthRecord(id)
	if err != nil {
		return nil, err
	}
	return rec.OutOfService, nil
}

func (a *Agent) returnHint(d found) string {
	return fmt.Sprintf("check or replace the disk, then run `kubectl annotate localdisk %s %s=true`",
		diskObjectName(a.cfg.NodeName, d.Name, d.ID), provisioner.AnnReturnToService)
}

// syncUnhealthy handles a disk that reads Failed or is out of service;
// handled is false when the usual path applies (a healthy disk, or one in
// use that recovered: it leaves the pool once its claim is released).
func (a *Agent) syncUnhealthy(ctx context.Context, d found, byID map[string]*corev1.PersistentVolume) (st diskStatus, handled bool, err error) {
	h, _ := a.health.healthOf(d)
	failed := h.State == provisioner.HealthFailed
	oos, err := a.outOfService(d.ID)
	if err != nil {
		msg := fmt.Sprintf("disk %s at %s: %v; it is neither wiped nor published while that lasts", d.ID, d.Path, err)
		a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskConflict, msg)
		return status(stateUnpublished, v1alpha1.PhaseFailed, "HealthRecordUnreadable", "%s", msg), true, err
	}
	if !failed && oos == nil {
		return diskStatus{}, false, nil
	}
	reason, what := h.Reason, h.Message
	if !failed {
		reason, what = oos.Reason, fmt.Sprintf("it failed at %s: %s", fmtTime(oos.First), oos.Message)
	}
	out := fmt.Sprintf("disk %s at %s failed (%s) and is out of service: it is neither wiped nor published again until you %s",
		d.ID, d.Path, reason, a.returnHint(d))
	pv := byID[d.ID]
	switch {
	case pv != nil && pv.Spec.Local != nil && pv.Spec.Local.Path != d.Path:
		return diskStatus{}, false, nil // adopt reports the move
	case pv != nil && (pv.Status.Phase == corev1.VolumeReleased || pv.Status.Phase == corev1.VolumeFailed):
		a.events.once("pv/"+pv.Name, pv, ReasonDiskOutOfService, out+"; "+what)
		return status(stateReleased, v1alpha1.PhaseFailed, reason, "claim %s is gone; %s; %s", claimName(pv), out, what), true, nil
	case pv != nil && (pv.Spec.ClaimRef != nil || pv.Status.Phase == corev1.VolumeBound):
		st := a.adopt(ctx, d, pv)
		if !failed {
			return st, true, nil
		}
		return status(st.state, v1alpha1.PhaseFailed, reason, "bound to claim %s; %s; once the claim is released the disk stays out of service until you %s", claimName(pv), what, a.returnHint(d)), true, nil
	case pv != nil:
		withdrawn, err := a.withdrawPV(ctx, pv, reason)
		if err != nil {
			return status(stateUnpublished, v1alpha1.PhaseFailed, reason, "%s; %s; withdrawing its PV %s failed: %v", out, what, pv.Name, err), true, err
		}
		if !withdrawn {
			// A claim bound it meanwhile: the next pass reports it bound.
			a.queue.AddAfter(reconcileKey, 500*time.Millisecond)
		}
		return status(stateUnpublished, v1alpha1.PhaseFailed, reason, "%s; %s; its PV %s was withdrawn so that no claim binds to it", out, what, pv.Name), true, nil
	}
	a.events.once("disk/"+d.Path, a.nodeRef(), ReasonDiskOutOfService, out+"; "+what)
	return status(stateUnpublished, v1alpha1.PhaseFailed, reason, "%s; %s", out, what), true, nil
}

// withdrawPV deletes the unbound PV of a failed disk, after a fresh read,
// with UID and resourceVersion preconditions: a claim that binds it in the
// meantime wins, and the disk is then reported as a bound failed disk.
func (a *Agent) withdrawPV(ctx context.Context, pv *corev1.PersistentVolume, reason string) (bool, error) {
	fresh, err := a.deps.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("re-read PV %s: %w", pv.Name, err)
	}
	if fresh.UID != pv.UID || fresh.Spec.ClaimRef != nil || fresh.Status.Phase == corev1.VolumeBound ||
		fresh.Status.Phase == corev1.VolumeReleased || fresh.DeletionTimestamp != nil {
		return false, nil
	}
	uid, rv := fresh.UID, fresh.ResourceVersion
	err = a.deps.Client.CoreV1().PersistentVolumes().Delete(ctx, fresh.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
	})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if apierrors.IsConflict(err) {
		return false, nil
	}
	if err != nil {
		a.metrics.errors.WithLabelValues("delete").Inc()
		return false, fmt.Errorf("withdraw PV %s of a failed disk: %w", pv.Name, err)
	}
	klog.FromContext(ctx).Info("withdrew the PV of a failed disk", "pv", pv.Name, "disk", pv.Labels[provisioner.LabelDisk], "reason", reason)
	a.events.event(a.nodeRef(), corev1.EventTypeWarning, ReasonDiskOutOfService,
		fmt.Sprintf("PV %s withdrawn: its disk %s at %s failed (%s)", pv.Name, pv.Labels[provisioner.LabelDisk], localPath(pv), reason))
	return true, nil
}

// refuseOutOfService keeps a released disk that failed from being wiped
// (and so published again). Recycle calls it right before the wipe.
func (a *Agent) refuseOutOfService(pv *corev1.PersistentVolume, d found) error {
	oos, err := a.outOfService(d.ID)
	if err != nil {
		return fmt.Errorf("disk of PV %s is not wiped: %w", pv.Name, err)
	}
	if oos == nil {
		return nil
	}
	msg := fmt.Sprintf("disk %s at %s failed at %s (%s: %s) and is out of service: not wiped, not published again until you %s",
		d.ID, d.Path, fmtTime(oos.First), oos.Reason, oos.Message, a.returnHint(d))
	a.events.once("pv/"+pv.Name, pv, ReasonDiskOutOfService, msg)
	return errors.New(msg)
}

// reportHealth writes each disk's health on its PV (or tells the Node of
// a disk without one), marks the bound PVs of missing disks, and sets the
// health metric.
func (a *Agent) reportHealth(ctx context.Context, reports []diskReport, pvs, missing []*corev1.PersistentVolume) error {
	byID := map[string]*corev1.PersistentVolume{}
	byPath := map[string]*corev1.PersistentVolume{}
	for _, pv := range pvs {
		byID[pv.Labels[provisioner.LabelDisk]] = pv
		if p := localPath(pv); p != "" {
			byPath[p] = pv
		}
	}
	counts := map[[2]string]float64{}
	var errs []error
	a.health.mu.Lock()
	a.health.told = map[string]bool{}
	a.health.mu.Unlock()
	for _, r := range reports {
		if r.health == nil {
			continue
		}
		counts[[2]string{r.Class, string(r.health.State)}]++
		pv := byID[r.ID]
		if r.ID == "" {
			pv = byPath[r.Path]
		}
		if err := a.tellHealth(ctx, pv, r.found, *r.health); err != nil {
			errs = append(errs, err)
		}
	}
	now := a.deps.Clock.Now().UTC().Truncate(time.Second)
	for _, pv := range missing {
		if pv.Status.Phase != corev1.VolumeBound {
			continue
		}
		h := provisioner.Health{State: provisioner.HealthFailed, Reason: HealthDiskMissing, Since: now,
			Message: fmt.Sprintf("disk %s is not at %s on node %s: the volume's data is not reachable; mount the disk again", pv.Labels[provisioner.LabelDisk], localPath(pv), a.cfg.NodeName)}
		if cur, ok, _ := provisioner.HealthOf(pv); ok && cur.Same(h) {
			h.Since = cur.Since
		}
		counts[[2]string{pv.Spec.StorageClassName, string(h.State)}]++
		if err := a.tellHealth(ctx, pv, found{}, h); err != nil {
			errs = append(errs, err)
		}
	}
	// Forget what was said of objects not seen this pass (a recycled
	// disk's PV comes back with a new UID).
	a.health.mu.Lock()
	for k := range a.health.reported {
		if !a.health.told[k] {
			delete(a.health.reported, k)
		}
	}
	a.health.mu.Unlock()
	a.metrics.diskHealth.Reset()
	for k, n := range counts {
		a.metrics.diskHealth.WithLabelValues(k[0], k[1]).Set(n)
	}
	return errors.Join(errs...)
}

// tellHealth writes a reading on the PV when it differs from what the PV
// says, and records the condition's events: a Warning when it turns
// abnormal (and every repeatStanding while it lasts), a Normal one when
// it recovers.
func (a *Agent) tellHealth(ctx context.Context, pv *corev1.PersistentVolume, d found, h provisioner.Health) error {
	var (
		subject runtime.Object = a.nodeRef()
		key                    = "disk/" + d.Path
		said    provisioner.Health
		had     bool
	)
	if pv != nil {
		subject, key = pv, "pv/"+pv.Name+"/"+string(pv.UID)
		said, had, _ = provisioner.HealthOf(pv)
		if had || h.Abnormal() {
			if err := a.annotateHealth(ctx, pv, said, h); err != nil {
				return err
			}
		}
	}
	now := a.deps.Clock.Now()
	m := a.health
	m.mu.Lock()
	if m.told != nil {
		m.told[key] = true
	}
	last, told := m.reported[key]
	if !told && had {
		// After a restart the PV remembers what was said.
		last, told = reportedHealth{health: said}, said.Abnormal()
	}
	var emit string
	switch {
	case h.Abnormal() && (!told || !last.health.Same(h) || now.Sub(last.at) >= repeatStanding):
		emit = corev1.EventTypeWarning
	case !h.Abnormal() && told && last.health.Abnormal():
		emit = corev1.EventTypeNormal
	}
	if emit != "" || !told {
		m.reported[key] = reportedHealth{health: h, at: now}
	}
	m.mu.Unlock()
	where := fmt.Sprintf("disk %s at %s on node %s", orDash(d.ID), d.Path, a.cfg.NodeName)
	if pv != nil {
		where = fmt.Sprintf("disk %s at %s on node %s", pv.Labels[provisioner.LabelDisk], localPath(pv), a.cfg.NodeName)
	}
	switch emit {
	case corev1.EventTypeWarning:
		a.events.event(subject, corev1.EventTypeWarning, provisioner.ReasonVolumeConditionAbnormal,
			fmt.Sprintf("%s is %s (%s): %s", where, h.State, h.Reason, h.Message))
	case corev1.EventTypeNormal:
		a.events.event(subject, corev1.EventTypeNormal, provisioner.ReasonVolumeConditionNormal,
			fmt.Sprintf("%s is healthy again (was %s: %s)", where, last.health.State, last.health.Reason))
	}
	return nil
}

// annotateHealth patches the health annotations when they differ.
func (a *Agent) annotateHealth(ctx context.Context, pv *corev1.PersistentVolume, said, h provisioner.Health) error {
	want := h.Annotations()
	same := true
	for k, v := range want {
		cur, ok := pv.Annotations[k]
		if (v == nil && ok) || (v != nil && (!ok || cur != *v)) {
			same = false
			break
		}
	}
	if same {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": want}})
	if err != nil {
		return err
	}
	_, err = a.deps.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write health on PV %s: %w", pv.Name, err)
	}
	if !said.Same(h) {
		klog.FromContext(ctx).Info("wrote disk health on PV", "pv", pv.Name, "state", h.State, "reason", h.Reason, "was", said.State)
	}
	return nil
}

// apiHealth is a reading as the LocalDisk shows it.
func apiHealth(h *provisioner.Health) *v1alpha1.Health {
	if h == nil {
		return nil
	}
	return &v1alpha1.Health{State: string(h.State), Reason: h.Reason, Message: h.Message, Since: metav1.Time{Time: h.Since}}
}

// returnToService acts on the return-to-service annotation of this node's
// LocalDisks: a disk that no longer reads Failed by what is on it now
// (read-only, shut down, gone, SMART) has its record cleared — the faults
// that stood until cleared included — and goes back to the usual path,
// which wipes it and publishes it; one that still reads Failed is
// refused. Either way the annotation is removed, with an event that says
// which.
func (a *Agent) returnToService(ctx context.Context, disks []found) error {
	if a.deps.Dynamic == nil {
		return nil
	}
	var errs []error
	for _, obj := range a.diskIdx.List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok || u.GetAnnotations()[provisioner.AnnReturnToService] != "true" || u.GetLabels()[provisioner.LabelNode] != a.cfg.NodeName {
			continue
		}
		ld, ok := a.diskObject(u.GetName())
		if !ok || ld.Spec.NodeName != a.cfg.NodeName {
			continue
		}
		i := slices.IndexFunc(disks, func(d found) bool { return d.Path == ld.Spec.Path && d.ID == ld.Spec.DiskID })
		if i < 0 {
			// Not here this pass (missing, being wiped, not identified):
			// the annotation waits for it.
			continue
		}
		d := disks[i]
		typ, reason, msg, err := a.returnDisk(ctx, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, provisioner.AnnReturnToService))
		if _, err := a.deps.Dynamic.Resource(v1alpha1.Resource).Patch(ctx, u.GetName(), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove %s from LocalDisk %s: %w", provisioner.AnnReturnToService, u.GetName(), err))
			continue
		}
		a.events.event(u, typ, reason, msg)
	}
	return errors.Join(errs...)
}

func (a *Agent) returnDisk(ctx context.Context, d found) (typ, reason, msg string, err error) {
	m := a.health
	m.mu.Lock()
	defer m.mu.Unlock()
	dh := m.diskLocked(a, d)
	if dh.readErr != nil {
		return "", "", "", fmt.Errorf("return disk %s to service: %w", d.ID, dh.readErr)
	}
	if still := worst(dh.current); still.State == provisioner.HealthFailed {
		return corev1.EventTypeWarning, ReasonReturnRefused, fmt.Sprintf("disk %s at %s still reads Failed (%s: %s); it stays out of service: fix that, then annotate it again", d.ID, d.Path, still.Reason, still.Message), nil
	}
	was := dh.record.OutOfService
	dh.record.OutOfService, dh.record.Faults = nil, nil
	a.evaluateLocked(ctx, dh, a.deps.Clock.Now())
	if err := a.saveHealthRecord(d.ID, dh.record); err != nil {
		return "", "", "", err
	}
	klog.FromContext(ctx).Info("disk returned to service", "path", d.Path, "disk", d.ID)
	if was == nil {
		return corev1.EventTypeNormal, ReasonReturnedToService, fmt.Sprintf("disk %s at %s was not out of service; nothing to do", d.ID, d.Path), nil
	}
	return corev1.EventTypeNormal, ReasonReturnedToService, fmt.Sprintf("disk %s at %s returned to service (it had failed at %s: %s); it is wiped and published as usual", d.ID, d.Path, fmtTime(was.First), was.Reason), nil
}
