package volumecontroller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Event reasons of the volume-controller.
const (
	ReasonOwnerRecorded   = "OwnerRecorded"
	ReasonStoreOfflined   = "StoreOfflined"
	ReasonPDRefused       = "PDRefusedOffline"
	ReasonReleased        = "DiskReleased"
	ReasonPodDeleted      = "StuckPodDeleted"
	ReasonPVDeleted       = "DeadNodePVDeleted"
	ReasonReleaseApproved = "ReleaseApproved"
	ReasonRefused         = "ReleaseRefused"
	ReasonRecheckFailed   = "RecheckChangedDecision"
	ReasonReclaimDelete   = "ReclaimPolicyDelete"
	ReasonInstanceDeleted = "InstanceDeleted"
)

// errRecheck means the fresh re-read no longer supports the decision; the
// next sync decides again from the new state.
var errRecheck = errors.New("state changed since the decision")

// errDone means the fresh read shows the action already happened (by us a
// moment ago from a cache that had not caught up, or by TiDB Operator): not
// a refusal, nothing to report.
var errDone = errors.New("already done")

// errNotYet means the action cannot happen yet and nothing is wrong (a
// claim whose pod has not started): no refusal, the next poll looks again.
var errNotYet = errors.New("not yet")

// refusal is a fresh re-check that found a reason never to act as decided
// while it lasts: it is reported like a policy refusal (Warning event,
// refusals metric), not just logged.
type refusal struct {
	kind, reason string
	// event is the Warning's reason; ReleaseRefused when empty.
	event string
}

func (r *refusal) Error() string { return r.reason }

func (c *Controller) act(ctx context.Context, d Decision, t target) error {
	if d.Warn {
		c.warn(t, d)
	} else if d.Action == ActNone {
		c.forgetWarning(t.pv.Name)
	}
	var err error
	switch d.Action {
	case ActNone:
		return nil
	case ActWait:
		c.queue.AddAfter(t.pv.Name, c.cfg.PollInterval)
		return nil
	case ActOffline:
		err = c.offline(ctx, d, t)
	case ActRelease, ActReleaseWithPod:
		err = c.release(ctx, d, t)
	case ActApprove:
		err = c.approve(ctx, d, t)
	case ActDeletePV:
		err = c.deletePV(ctx, d, t)
	case ActReclaimDelete:
		err = c.reclaimDelete(ctx, d, t)
	case ActDeleteInstance:
		err = c.deleteInstance(ctx, d, t)
	}
	var ref *refusal
	if errors.As(err, &ref) {
		c.warn(t, Decision{Action: ActNone, Warn: true, Refusal: ref.kind, Reason: ref.reason, Event: ref.event})
		c.queue.AddAfter(t.pv.Name, c.cfg.PollInterval)
		return nil
	}
	if errors.Is(err, errNotYet) {
		return nil
	}
	if errors.Is(err, errDone) {
		klog.FromContext(ctx).V(2).Info("already done", "pv", t.pv.Name, "action", d.Action.String(), "detail", err.Error())
		return nil
	}
	if errors.Is(err, errRecheck) {
		klog.FromContext(ctx).Info("decision no longer holds after a fresh read; not acting", "pv", t.pv.Name, "action", d.Action.String(), "reason", err.Error())
		c.metrics.refusals.WithLabelValues("recheck").Inc()
		c.queue.AddAfter(t.pv.Name, c.cfg.PollInterval)
		return nil
	}
	return err
}

// warn records a refusal once per PV and kind of refusal, and again every
// repeatStanding while it stands (an Event expires after an hour): a
// standing refusal seen on every poll is one event, not one per poll —
// its text may carry durations that change on every poll.
func (c *Controller) warn(t target, d Decision) {
	now := c.clock.Now()
	key := d.Refusal + "\x00" + stableReason(d)
	c.mu.Lock()
	last, seen := c.warnings[t.pv.Name]
	dup := seen && last.key == key && now.Sub(last.at) < repeatStanding
	if !dup {
		c.warnings[t.pv.Name] = warning{key: key, at: now}
	}
	c.mu.Unlock()
	if dup {
		return
	}
	c.metrics.refusals.WithLabelValues(d.Refusal).Inc()
	reason := orDefault(d.Event, ReasonRefused)
	c.recorder.Event(t.pv, corev1.EventTypeWarning, reason, d.Reason)
	if t.node.Gone || t.node.NotReady || t.node.OutOfService {
		c.recorder.Event(nodeRef(t.pv.Labels[provisioner.LabelNode]), corev1.EventTypeWarning, reason, fmt.Sprintf("PV %s: %s", t.pv.Name, d.Reason))
	}
}

// warning is the last refusal reported for a PV.
type warning struct {
	key string
	at  time.Time
}

// repeatStanding is how often a standing refusal is reported again.
const repeatStanding = 30 * time.Minute

// stableReason is a refusal's text without the durations that grow on
// every poll ("node deleted 3s ago").
func stableReason(d Decision) string {
	return durationRE.ReplaceAllString(d.Reason, "…")
}

var durationRE = regexp.MustCompile(`\b[0-9][0-9hms.µ]*s\b|\b[0-9]+h[0-9m]*\b`)

func (c *Controller) forgetWarning(pv string) {
	c.mu.Lock()
	delete(c.warnings, pv)
	c.mu.Unlock()
}

func nodeRef(name string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: name, UID: types.UID(name)}
}

// freshPV re-reads a PV and checks it is still the object decided on, in
// the phase decided on.
func (c *Controller) freshPV(ctx context.Context, seen *corev1.PersistentVolume) (*corev1.PersistentVolume, error) {
	pv, err := c.client.CoreV1().PersistentVolumes().Get(ctx, seen.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: PV %s is gone", errDone, seen.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("re-read PV %s: %w", seen.Name, err)
	}
	switch {
	case pv.UID != seen.UID:
		return nil, fmt.Errorf("%w: PV %s was replaced", errRecheck, seen.Name)
	case pv.Status.Phase != seen.Status.Phase:
		return nil, fmt.Errorf("%w: PV %s is now %s", errRecheck, seen.Name, pv.Status.Phase)
	case claimUID(pv) != claimUID(seen):
		return nil, fmt.Errorf("%w: PV %s now belongs to another claim", errRecheck, seen.Name)
	case pv.DeletionTimestamp != nil:
		return nil, fmt.Errorf("%w: PV %s is being deleted", errDone, seen.Name)
	}
	return pv, nil
}

func claimUID(pv *corev1.PersistentVolume) types.UID {
	if pv.Spec.ClaimRef == nil {
		return ""
	}
	return pv.Spec.ClaimRef.UID
}

// freshRecord reads the ownership record of a freshly read PV and checks
// it still names the owner decided on.
func (c *Controller) freshRecord(ctx context.Context, pv *corev1.PersistentVolume, t target) (provisioner.Ownership, error) {
	pv, err := c.freshDiskRecord(ctx, pv)
	if err != nil {
		return provisioner.Ownership{}, err
	}
	rec, _ := provisioner.OwnershipOf(pv)
	if !provisioner.Owned(pv) || rec.StoreID != t.rec.StoreID || rec.Member != t.rec.Member || rec.ClusterID != t.rec.ClusterID {
		return rec, fmt.Errorf("%w: PV %s no longer records %s for its claim", errRecheck, pv.Name, t.ownerName())
	}
	return rec, nil
}

// recheckGone asks PD directly (never the cache) whether the owner's data
// is still needed, and refuses while a live store other than the owner
// advertises the owner pod's address without another disk to hold its
// data: that store may keep its data on this disk.
func (c *Controller) recheckGone(ctx context.Context, t target, rec provisioner.Ownership) error {
	client, err := c.pd.client(t.endpoint)
	if err != nil {
		return err
	}
	defer c.pd.invalidate(t.endpoint)
	if t.component == ComponentPD {
		if f := freshMemberFacts(ctx, client, rec); !ownerGone(t.component, f) {
			return fmt.Errorf("%w: %s is no longer gone in PD (%s)", errRecheck, rec.Owner(), ownerState(f))
		}
		return nil
	}
	f, stores := freshStoreFacts(ctx, client, rec)
	if !ownerGone(t.component, f) {
		return fmt.Errorf("%w: %s is no longer gone in PD (%s)", errRecheck, rec.Owner(), ownerState(f))
	}
	o := recordedOwner(rec)
	for _, s := range stores.byPod[o.Pod] {
		if s.ID == rec.StoreID || !addressNames(s.Address, o) || s.Phase() == pd.PhaseTombstone {
			continue
		}
		elsewhere, err := c.storeRecordedElsewhere(ctx, s.ID, stores.clusterID, t.pv.Name)
		if err != nil {
			return err
		}
		if !elsewhere {
			return &refusal{kind: "live-store-at-address", reason: fmt.Sprintf(
				"%s is gone, but store %d (%s) advertises the address of its pod %s and no other disk is recorded as its: its data may be on this disk, which is not released; check `pd-ctl store %d`",
				rec.Owner(), s.ID, s.Phase(), o.Pod, s.ID)}
		}
	}
	return nil
}

// storeRecordedElsewhere reports whether another of our PVs (read fresh)
// records the store as its owner: then its data is on that disk.
func (c *Controller) storeRecordedElsewhere(ctx context.Context, id, cluster uint64, except string) (bool, error) {
	list, err := c.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: provisioner.LabelDisk})
	if err != nil {
		return false, fmt.Errorf("list PVs: %w", err)
	}
	for i := range list.Items {
		pv := &list.Items[i]
		if pv.Name == except {
			continue
		}
		if rec, ok := provisioner.OwnershipOf(pv); ok && rec.StoreID == id && rec.ClusterID == cluster {
			return true, nil
		}
	}
	return false, nil
}

// freshNodeDead re-reads the node from the API server.
func (c *Controller) freshNodeDead(ctx context.Context, name string) (bool, error) {
	if name == "" {
		return false, nil // a PV without its node label names no node, dead or alive
	}
	node, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("re-read node %s: %w", name, err)
	}
	// A Node object that exists is dead only by its taint or a NotReady
	// past the threshold; the deletion grace applies to deleted nodes only.
	dead, _ := c.cfg.Policy.nodeDead(nodeObjectFacts(node, c.clock.Now()))
	return dead, nil
}

// offline asks PD to move the data of a store on a dead node elsewhere.
// It never forces: a store PD cannot drain stays Offline and is reported.
func (c *Controller) offline(ctx context.Context, d Decision, t target) error {
	id := t.rec.StoreID
	log := klog.FromContext(ctx).WithValues("pv", t.pv.Name, "store", id)
	pv, err := c.freshPV(ctx, t.pv)
	if err != nil {
		return err
	}
	if _, err := c.freshRecord(ctx, pv, t); err != nil {
		return err
	}
	if err := c.recheckDead(ctx, d, pv); err != nil {
		return err
	}
	client, err := c.pd.client(t.endpoint)
	if err != nil {
		return err
	}
	cluster, err := client.ClusterID(ctx)
	if err != nil {
		return fmt.Errorf("re-read PD cluster ID: %w", err)
	}
	if cluster != t.rec.ClusterID {
		return fmt.Errorf("%w: PD answers for cluster %d, store %d was recorded in cluster %d", errRecheck, cluster, id, t.rec.ClusterID)
	}
	s, err := client.Store(ctx, id)
	if err != nil {
		return fmt.Errorf("re-read store %d: %w", id, err)
	}
	if ph := s.Phase(); ph != pd.PhaseDisconnected && ph != pd.PhaseDown {
		return fmt.Errorf("%w: store %d is now %s", errRecheck, id, ph)
	}
	if err := ctx.Err(); err != nil {
		return err // lease lost: act no further
	}
	err = client.DeleteStore(ctx, id)
	c.pd.invalidate(t.endpoint)
	var refused *pd.RefusedError
	switch {
	case errors.As(err, &refused):
		// A standing answer (too few stores for max-replicas), not a
		// failure: asked again at the next poll, reported once while it
		// stands, never forced.
		return &refusal{kind: "pd-refused", event: ReasonPDRefused, reason: fmt.Sprintf(
			"PD refused to offline store %d (%s): %s; asking again every poll, never forcing it — add TiKV stores or lower max-replicas for PD to accept", id, d.Reason, refused.Message)}
	case errors.Is(err, pd.ErrStoreRemoved), errors.Is(err, pd.ErrStoreNotFound):
		c.queue.Add(t.pv.Name) // already on its way out; the next sync sees it
		return nil
	case err != nil:
		return fmt.Errorf("offline store %d: %w", id, err)
	}
	// Remember that we did it: if the node comes back while the store
	// drains, the operator is told how to cancel.
	stamp, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		provisioner.AnnOfflinedAt: c.clock.Now().UTC().Format(time.RFC3339)}}})
	if _, err := c.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, stamp, metav1.PatchOptions{}); err != nil {
		log.Error(err, "note the offline on the PV")
	}
	log.Info("offlined store in PD", "reason", d.Reason)
	c.metrics.actions.WithLabelValues(ActOffline.String()).Inc()
	msg := fmt.Sprintf("asked PD to offline store %d: %s", id, d.Reason)
	c.recorder.Event(t.pv, corev1.EventTypeNormal, ReasonStoreOfflined, msg)
	c.recorder.Event(nodeRef(t.pv.Labels[provisioner.LabelNode]), corev1.EventTypeNormal, ReasonStoreOfflined, msg)
	c.queue.AddAfter(t.pv.Name, c.cfg.PollInterval)
	return nil
}

// release deletes the claim of a disk whose owner is gone, then the pod
// stuck on it, after re-reading all of them and PD.
func (c *Controller) release(ctx context.Context, d Decision, t target) error {
	log := klog.FromContext(ctx).WithValues("pv", t.pv.Name, "claim", t.pvc.Namespace+"/"+t.pvc.Name)
	pv, err := c.freshPV(ctx, t.pv)
	if err != nil {
		return err
	}
	rec, err := c.freshRecord(ctx, pv, t)
	if err != nil {
		return err
	}
	pvc, err := c.client.CoreV1().PersistentVolumeClaims(t.pvc.Namespace).Get(ctx, t.pvc.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: claim is gone", errDone)
	}
	if err != nil {
		return fmt.Errorf("re-read claim: %w", err)
	}
	if pvc.UID != t.pvc.UID {
		return fmt.Errorf("%w: claim %s was recreated (UID %s, decided on %s)", errRecheck, pvc.Name, pvc.UID, t.pvc.UID)
	}
	if pvc.DeletionTimestamp != nil {
		// Released already (pvc-protection keeps it while a pod holds it).
		// What may remain is the stuck pod that holds it — one older than
		// the deletion; a younger one is the StatefulSet's replacement,
		// waiting for the claim to go.
		if d.Action != ActReleaseWithPod || t.pod == nil || !t.pod.CreationTimestamp.Before(pvc.DeletionTimestamp) {
			return fmt.Errorf("%w: claim %s is already being deleted", errDone, pvc.Name)
		}
		if err := c.recheckGone(ctx, t, rec); err != nil {
			return err
		}
		pod, err := c.checkMounters(ctx, d, t, pv)
		if err != nil || pod == nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return c.deleteStuckPod(ctx, pod, d, t)
	}
	if err := c.recheckGone(ctx, t, rec); err != nil {
		return err
	}
	pod, err := c.checkMounters(ctx, d, t, pv)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.markReleased(ctx, pv, d.Reason); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	uid := pvc.UID
	err = c.client.CoreV1().PersistentVolumeClaims(pvc.Namespace).Delete(ctx, pvc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		// TiDB Operator (or a person) got there first: not a fight, not an error.
		log.Info("claim already deleted by someone else")
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete claim %s/%s: %w", pvc.Namespace, pvc.Name, err)
	}
	reason := releaseReason(t, d)
	c.metrics.releases.WithLabelValues(reason).Inc()
	c.metrics.actions.WithLabelValues(ActRelease.String()).Inc()
	log.Info("released disk", "reason", d.Reason)
	msg := fmt.Sprintf("deleted claim %s/%s of PV %s: %s", pvc.Namespace, pvc.Name, pv.Name, d.Reason)
	c.recorder.Event(pv, corev1.EventTypeNormal, ReasonReleased, msg)
	c.recorder.Event(pvc, corev1.EventTypeNormal, ReasonReleased, msg)
	if pod == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.deleteStuckPod(ctx, pod, d, t)
}

func releaseReason(t target, d Decision) string {
	switch {
	case t.node.Gone || t.node.NotReady:
		return "dead-node"
	case d.Action == ActReleaseWithPod:
		return "stuck-pod"
	case t.component == ComponentPD:
		return "member-removed"
	default:
		return "tombstone"
	}
}

// checkMounters lists the claim's namespace afresh (every pod, not only the
// cached TiKV/PD ones): no pod may mount the claim, except — for a release
// with pod — the very pod decided on, still stuck. pv is the caller's fresh
// read of the PV.
func (c *Controller) checkMounters(ctx context.Context, d Decision, t target, pv *corev1.PersistentVolume) (*corev1.Pod, error) {
	pods, err := c.client.CoreV1().Pods(t.pvc.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods mounting the claim: %w", err)
	}
	var stuck *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if !mounts(p, t.pvc.Name) || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if d.Action != ActReleaseWithPod || t.pod == nil || p.UID != t.pod.UID {
			return nil, fmt.Errorf("%w: pod %s mounts the claim", errRecheck, p.Name)
		}
		if err := c.stillStuck(ctx, d, p, t, pv); err != nil {
			return nil, err
		}
		stuck = p
	}
	return stuck, nil
}

// stillStuck re-checks, on the fresh pod, node and PV, what made the cached
// pod look stuck, as the policy judged it: a StatefulSet's or v2 instance's
// pod not Ready for the stuck-pod grace, or its disk's node (or, for a
// failed-disk decision, the disk) dead.
func (c *Controller) stillStuck(ctx context.Context, d Decision, p *corev1.Pod, t target, pv *corev1.PersistentVolume) error {
	if f := c.podFacts(p, t.owner); (f.OnStatefulSet || f.OnInstance) && !f.Ready && f.NotReadyFor >= c.cfg.Policy.StuckPodGrace {
		return nil
	}
	if err := c.recheckDead(ctx, d, pv); err != nil {
		return fmt.Errorf("pod %s is no longer stuck: %w", p.Name, err)
	}
	return nil
}

func mounts(p *corev1.Pod, claim string) bool {
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			return true
		}
	}
	return false
}

// markReleased approves the wipe for the PV's current claim and makes the
// PV reclaimable (Retain → Delete), in one patch guarded by the PV's
// resourceVersion.
func (c *Controller) markReleased(ctx context.Context, pv *corev1.PersistentVolume, reason string) error {
	patch := map[string]any{
		"metadata": map[string]any{
			"resourceVersion": pv.ResourceVersion,
			"annotations": map[string]string{
				provisioner.AnnReleaseApproved: string(claimUID(pv)),
				provisioner.AnnReleaseReason:   reason,
			},
		},
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		patch["spec"] = map[string]any{"persistentVolumeReclaimPolicy": corev1.PersistentVolumeReclaimDelete}
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = c.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, data, metav1.PatchOptions{})
	if apierrors.IsConflict(err) {
		return fmt.Errorf("%w: PV %s changed", errRecheck, pv.Name)
	}
	if err != nil {
		return fmt.Errorf("approve release of PV %s: %w", pv.Name, err)
	}
	return nil
}

// deleteStuckPod deletes the pod (UID precondition) so its StatefulSet
// recreates it with a new claim. A pod on a dead node is deleted at once:
// no kubelet is left to confirm a graceful stop.
func (c *Controller) deleteStuckPod(ctx context.Context, pod *corev1.Pod, d Decision, t target) error {
	opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}}
	if t.node.Gone || t.node.NotReady || pod.Spec.NodeName == "" {
		var zero int64
		opts.GracePeriodSeconds = &zero
	}
	err := c.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts)
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete stuck pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.metrics.actions.WithLabelValues("delete-pod").Inc()
	msg := fmt.Sprintf("deleted pod %s so its StatefulSet recreates it on a fresh disk: %s", pod.Name, d.Reason)
	c.recorder.Event(pod, corev1.EventTypeNormal, ReasonPodDeleted, msg)
	c.recorder.Event(t.pv, corev1.EventTypeNormal, ReasonPodDeleted, msg)
	if t.node.Gone || t.node.NotReady {
		c.recorder.Event(nodeRef(t.pv.Labels[provisioner.LabelNode]), corev1.EventTypeNormal, ReasonPodDeleted, msg)
	}
	return nil
}

// approve stamps a Released, owned PV whose owner is gone so its agent
// wipes it (the claim was deleted by someone else, e.g. TiDB Operator's PVC
// reclaim after a scale-in).
func (c *Controller) approve(ctx context.Context, d Decision, t target) error {
	pv, err := c.freshPV(ctx, t.pv)
	if err != nil {
		return err
	}
	if provisioner.ReleaseApproved(pv) {
		// Approved a moment ago by this controller from a cache that had not
		// caught up: not a second action.
		return fmt.Errorf("%w: PV %s is already approved", errDone, pv.Name)
	}
	rec, err := c.freshRecord(ctx, pv, t)
	if err != nil {
		return err
	}
	if err := c.recheckGone(ctx, t, rec); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.markReleased(ctx, pv, d.Reason); err != nil {
		return err
	}
	c.metrics.releases.WithLabelValues("approved").Inc()
	c.metrics.actions.WithLabelValues(ActApprove.String()).Inc()
	klog.FromContext(ctx).Info("approved wipe of released disk", "pv", pv.Name, "reason", d.Reason)
	c.recorder.Event(pv, corev1.EventTypeNormal, ReasonReleaseApproved, "disk may be wiped: "+d.Reason)
	return nil
}

// reclaimDelete sets a PV's reclaimPolicy to Delete, after a fresh read
// shows either the approval for its current claim (a Released PV someone
// set back to Retain) or a claim that no TiKV or PD pod uses.
func (c *Controller) reclaimDelete(ctx context.Context, d Decision, t target) error {
	pv, err := c.freshPV(ctx, t.pv)
	if err != nil {
		return err
	}
	if pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
		return fmt.Errorf("%w: PV %s is already Delete", errDone, pv.Name)
	}
	switch pv.Status.Phase {
	case corev1.VolumeReleased:
		if !provisioner.ReleaseApproved(pv) {
			return fmt.Errorf("%w: PV %s is not approved for its claim", errRecheck, pv.Name)
		}
	case corev1.VolumeBound:
		if err := c.checkPlainClaim(ctx, pv, t); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: PV %s is %s", errRecheck, pv.Name, pv.Status.Phase)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": pv.ResourceVersion},
		"spec":     map[string]any{"persistentVolumeReclaimPolicy": corev1.PersistentVolumeReclaimDelete},
	})
	if err != nil {
		return err
	}
	_, err = c.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsConflict(err) {
		return fmt.Errorf("%w: PV %s changed", errRecheck, pv.Name)
	}
	if err != nil {
		return fmt.Errorf("set reclaimPolicy Delete on PV %s: %w", pv.Name, err)
	}
	c.metrics.actions.WithLabelValues(ActReclaimDelete.String()).Inc()
	klog.FromContext(ctx).Info("set reclaimPolicy Delete", "pv", pv.Name, "reason", d.Reason)
	c.recorder.Event(pv, corev1.EventTypeNormal, ReasonReclaimDelete, "reclaimPolicy set to Delete: "+d.Reason)
	return nil
}

// checkPlainClaim re-reads the claim and every pod of its namespace: the
// claim must carry no TiKV or PD label, and at least one pod must use it,
// none of them a TiKV or PD pod.
func (c *Controller) checkPlainClaim(ctx context.Context, pv *corev1.PersistentVolume, t target) error {
	pvc, err := c.client.CoreV1().PersistentVolumeClaims(t.pvc.Namespace).Get(ctx, t.pvc.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("re-read claim: %w", err)
	}
	if pvc.UID != claimUID(pv) {
		return fmt.Errorf("%w: claim %s was recreated", errRecheck, pvc.Name)
	}
	if isTiDBComponent(pvc.Labels) {
		return fmt.Errorf("%w: claim %s is a %s claim", errRecheck, pvc.Name, pvc.Labels[labelComponent])
	}
	pods, err := c.client.CoreV1().Pods(pvc.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods using the claim: %w", err)
	}
	users := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if !mounts(p, pvc.Name) {
			continue
		}
		if isTiDBComponent(p.Labels) {
			return fmt.Errorf("%w: pod %s using claim %s is a %s pod", errRecheck, p.Name, pvc.Name, p.Labels[labelComponent])
		}
		users++
	}
	if users == 0 {
		return fmt.Errorf("%w: no pod uses claim %s yet", errNotYet, pvc.Name)
	}
	return nil
}

// isTiDBComponent reports whether labels mark a TiKV or PD pod or claim,
// under TiDB Operator's v1 or v2 label keys.
func isTiDBComponent(l map[string]string) bool {
	for _, k := range []string{labelComponent, "pingcap.com/component"} {
		if v := l[k]; v == ComponentTiKV || v == ComponentPD {
			return true
		}
	}
	return false
}

// deletePV removes the PV object of a dead node's disk that no claim holds.
func (c *Controller) deletePV(ctx context.Context, d Decision, t target) error {
	pv, err := c.freshPV(ctx, t.pv)
	if err != nil {
		return err
	}
	if dead, err := c.freshNodeDead(ctx, pv.Labels[provisioner.LabelNode]); err != nil || !dead {
		return errors.Join(err, fmt.Errorf("%w: node is back", errRecheck))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	uid, rv := pv.UID, pv.ResourceVersion
	err = c.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete PV %s of dead node: %w", pv.Name, err)
	}
	c.metrics.actions.WithLabelValues(ActDeletePV.String()).Inc()
	klog.FromContext(ctx).Info("deleted PV of dead node", "pv", pv.Name, "reason", d.Reason)
	var obj runtime.Object = nodeRef(pv.Labels[provisioner.LabelNode])
	c.recorder.Event(obj, corev1.EventTypeNormal, ReasonPVDeleted, fmt.Sprintf("deleted PV %s (%s): %s", pv.Name, pv.Status.Phase, d.Reason))
	return nil
}
