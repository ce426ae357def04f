package volumecontroller

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Disk health as the node agent writes it on the PV (see provisioner's
// health keys): the controller tells the claim and the pod that use a
// failing disk, and — opt-in, --failed-disk-grace — treats a failed disk
// like a dead node for its one TiKV store.

// Reasons of the health events, as Kubernetes' CSI volume health names them.
const (
	ReasonVolumeAbnormal = provisioner.ReasonVolumeConditionAbnormal
	ReasonVolumeNormal   = provisioner.ReasonVolumeConditionNormal
)

// pvHealth reads the agent's health record on a PV; an unreadable record
// counts as no record (the agent is the one to report it).
func pvHealth(pv *corev1.PersistentVolume, now time.Time) (provisioner.Health, DiskFacts) {
	h, ok, err := provisioner.HealthOf(pv)
	if !ok || err != nil {
		return provisioner.Health{State: provisioner.HealthHealthy}, DiskFacts{}
	}
	var facts DiskFacts
	if h.State == provisioner.HealthFailed {
		facts = DiskFacts{Failed: true, Reason: orDefault(h.Reason, "Failed")}
		if !h.Since.IsZero() {
			facts.FailedFor = now.Sub(h.Since)
		}
	}
	return h, facts
}

// reportHealth passes a disk's health on to the claim and the pod using
// it, once per change of state and reason (the agent reports the PV
// itself); a disk that recovers gets a Normal event.
func (c *Controller) reportHealth(pv *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim, pod *corev1.Pod) {
	h, _ := pvHealth(pv, c.clock.Now())
	key := string(h.State) + "/" + h.Reason
	c.mu.Lock()
	last, seen := c.health[pv.Name]
	c.health[pv.Name] = key
	c.mu.Unlock()
	if seen && last == key || (!seen && !h.Abnormal()) {
		return
	}
	typ, ev, msg := corev1.EventTypeWarning, ReasonVolumeAbnormal, fmt.Sprintf("disk of PV %s is %s (%s): %s", pv.Name, h.State, h.Reason, h.Message)
	if !h.Abnormal() {
		typ, ev, msg = corev1.EventTypeNormal, ReasonVolumeNormal, fmt.Sprintf("disk of PV %s is healthy again", pv.Name)
	}
	c.recorder.Event(pvc, typ, ev, msg)
	if pod != nil {
		c.recorder.Event(pod, typ, ev, msg)
	}
}

// recheckDead re-reads what made the decision's "dead": the node (fresh
// Node read), or, for a decision on a failed disk, the disk's health on
// the freshly read PV.
func (c *Controller) recheckDead(ctx context.Context, d Decision, pv *corev1.PersistentVolume) error {
	if d.DiskFailed {
		_, facts := pvHealth(pv, c.clock.Now())
		if dead, _ := c.cfg.Policy.diskDead(facts); !dead {
			return fmt.Errorf("%w: the disk of PV %s is no longer failed", errRecheck, pv.Name)
		}
		return nil
	}
	dead, err := c.freshNodeDead(ctx, pv.Labels[provisioner.LabelNode])
	if err != nil {
		return err
	}
	if !dead {
		return errors.Join(fmt.Errorf("%w: node is back", errRecheck))
	}
	return nil
}
