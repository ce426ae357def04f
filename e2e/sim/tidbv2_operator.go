package sim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// The operator's reconcile loop: TiDB Operator v2's behaviour as far as
// tidb-localpv meets it, and the TiKV and PD processes' side against the
// cluster's PD simulator. It lists afresh on every pass (no caches), so
// it never acts twice on a stale view.

// InstanceGet reads one TiKV instance object.
func (v *V2) InstanceGet(ctx context.Context, name string) (*unstructured.Unstructured, error) {
	return v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).Get(ctx, name, metav1.GetOptions{})
}

// PDInstanceGet reads one PD instance object.
func (v *V2) PDInstanceGet(ctx context.Context, name string) (*unstructured.Unstructured, error) {
	return v.dyn.Resource(V2PDs).Namespace(v.Opts.Namespace).Get(ctx, name, metav1.GetOptions{})
}

func (v *V2) logf(format string, args ...any) {
	fmt.Fprintf(v.progress, "tidb-operator-v2 %s/%s: %s\n", v.Opts.Namespace, v.Opts.Cluster, fmt.Sprintf(format, args...))
}

func (v *V2) run(ctx context.Context) {
	defer close(v.done)
	t := time.NewTicker(v.Opts.Resync)
	defer t.Stop()
	for {
		if err := v.reconcile(ctx); err != nil && ctx.Err() == nil {
			// Report each distinct failure once: reconciles retry anyway.
			v.mu.Lock()
			repeat := v.lastError == err.Error()
			v.lastError = err.Error()
			v.mu.Unlock()
			if !repeat {
				v.logf("reconcile: %v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// instanceState is what one pass reads about an instance.
type instanceState struct {
	obj      *unstructured.Unstructured
	pod      *corev1.Pod
	store    *pd.StoreInfo // TiKV only
	member   *pd.Member    // PD only
	deleting bool
	offline  bool
}

func (v *V2) reconcile(ctx context.Context) error {
	nodes, err := v.env.Cluster.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	nodeThere := map[string]bool{}
	for _, n := range nodes.Items {
		nodeThere[n.Name] = true
	}
	var errs []error
	if v.Opts.PDReplicas > 0 {
		errs = append(errs, v.reconcileComponent(ctx, v.pd(), nodeThere))
	}
	errs = append(errs, v.reconcileComponent(ctx, v.tikv(), nodeThere))
	return errors.Join(errs...)
}

func (v *V2) reconcileComponent(ctx context.Context, c v2Component, nodeThere map[string]bool) error {
	o := v.Opts
	sel := labels.Set{LabelV2ManagedBy: v2ManagedBy, LabelV2Cluster: o.Cluster, LabelV2Component: c.name}.String()
	pods, err := v.env.Cluster.Client.CoreV1().Pods(o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	byPod := map[string]*corev1.Pod{}
	for i := range pods.Items {
		byPod[pods.Items[i].Name] = &pods.Items[i]
	}
	var stores []pd.StoreInfo
	var members pd.Members
	if c.name == "tikv" {
		v.playTiKV(pods.Items, nodeThere)
		if stores, err = v.pdc.Stores(ctx); err != nil && !errors.Is(err, pd.ErrNotBootstrapped) {
			return err
		}
	}
	var membersErr error
	if c.name == "pd" {
		v.playPD(pods.Items, nodeThere)
		// Before the first PD pod runs the member list is empty, which
		// the client refuses: nothing is known about members yet.
		members, membersErr = v.pdc.Members(ctx)
	}
	insts, err := v.instancesOf(ctx, c)
	if err != nil {
		return err
	}
	var states []*instanceState
	for i := range insts {
		obj := &insts[i]
		podName := V2PodName(obj.GetName(), c.name)
		offline, _, _ := unstructured.NestedBool(obj.Object, "spec", "offline")
		st := &instanceState{obj: obj, pod: byPod[podName], deleting: obj.GetDeletionTimestamp() != nil, offline: offline}
		addr := V2StoreAddress(podName, o.TiKVGroup, o.Namespace)
		for j := range stores {
			// The newest store at the address is the instance's (PD hands
			// a TiKV on a fresh disk a new ID).
			if stores[j].Address == addr && (st.store == nil || stores[j].ID > st.store.ID) {
				st.store = &stores[j]
			}
		}
		for j := range members.Members {
			if members.Members[j].Name == obj.GetName() {
				st.member = &members.Members[j]
			}
		}
		states = append(states, st)
	}
	var errs []error
	for _, st := range states {
		switch {
		case c.name == "tikv":
			errs = append(errs, v.reconcileTiKV(ctx, c, st))
		case membersErr != nil && st.deleting:
			errs = append(errs, membersErr)
		default:
			errs = append(errs, v.reconcilePD(ctx, c, st))
		}
	}
	errs = append(errs, v.reconcileGroup(ctx, c, states))
	return errors.Join(errs...)
}

// playTiKV is TiKV's side: a Running pod on a node that is there registers
// its store and heartbeats; any other stops heartbeating.
func (v *V2) playTiKV(pods []corev1.Pod, nodeThere map[string]bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	alive := map[string]bool{}
	for _, pod := range pods {
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil || !nodeThere[pod.Spec.NodeName] {
			continue
		}
		if id, ok := v.stores[pod.Name]; ok {
			if s, ok := v.Sim.Store(id); ok && s.StateName == "Tombstone" {
				// A buried store's TiKV exits and PD refuses its disk for
				// good; v2 never reuses a pod name on another disk.
				continue
			}
		}
		alive[pod.Name] = true
		id := v.Sim.RegisterStore(V2StoreAddress(pod.Name, v.Opts.TiKVGroup, v.Opts.Namespace))
		v.stores[pod.Name] = id
		_ = v.Sim.ResumeHeartbeats(id)
	}
	for name, id := range v.stores {
		if !alive[name] {
			_ = v.Sim.StopHeartbeats(id)
		}
	}
}

// playPD is PD's side: a Running PD pod joins as a member named after its
// instance (v2 names members after instances, not pods). A member stays
// listed when its pod dies, as in PD, until someone removes it.
func (v *V2) playPD(pods []corev1.Pod, nodeThere map[string]bool) {
	for _, pod := range pods {
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil || !nodeThere[pod.Spec.NodeName] {
			continue
		}
		_, _ = v.Sim.AddMemberAt(pod.Labels[LabelV2Instance], pod.Name+"."+pod.Spec.Subdomain+"."+pod.Namespace)
	}
}

// reconcileTiKV runs a TiKV instance: its pod while it is online; once it
// is being deleted or marked offline, v2's offline state machine: DELETE
// the store in PD while it is Preparing or Serving, wait while it is
// Removing, and once it is Removed (or gone) delete the instance (scale-in)
// or, for an instance being deleted, its pod and claims, then drop the
// finalizer.
func (v *V2) reconcileTiKV(ctx context.Context, c v2Component, st *instanceState) error {
	name := st.obj.GetName()
	if err := v.syncStoreStatus(ctx, st); err != nil {
		return err
	}
	if st.deleting && !st.offline {
		v.logf("instance %s is being deleted: setting spec.offline", name)
		return v.setOffline(ctx, st.obj, true)
	}
	if !st.offline {
		if st.store != nil && st.store.NodeState == pd.NodeRemoving {
			v.logf("instance %s is online again: cancelling the offline of store %d", name, st.store.ID)
			return v.cancelOffline(ctx, st.store.ID)
		}
		return v.ensurePod(ctx, c, st)
	}
	switch {
	case st.store == nil || st.store.NodeState == pd.NodeRemoved || st.store.State == pd.StoreTombstone:
		if !st.deleting {
			return v.deleteOfflined(ctx, c, st)
		}
		return v.finalize(ctx, c, st)
	case st.store.NodeState == pd.NodeRemoving:
		return nil // PD moves the data away
	}
	v.mu.Lock()
	wait := time.Now().Before(v.retryAt[name])
	v.mu.Unlock()
	if wait {
		return nil
	}
	err := v.pdc.DeleteStore(ctx, st.store.ID)
	var refused *pd.RefusedError
	switch {
	case errors.As(err, &refused):
		v.mu.Lock()
		v.retryAt[name] = time.Now().Add(time.Second)
		v.mu.Unlock()
		return fmt.Errorf("offline store %d of %s: %w", st.store.ID, name, err)
	case err == nil || errors.Is(err, pd.ErrStoreNotFound) || errors.Is(err, pd.ErrStoreRemoved):
		v.logf("instance %s is offline: deleted store %d in PD", name, st.store.ID)
		return nil
	}
	return err
}

// deleteOfflined is the scale-in's last step: the store is gone from PD,
// so the instance goes (UID and resourceVersion preconditions, as v2).
func (v *V2) deleteOfflined(ctx context.Context, c v2Component, st *instanceState) error {
	name := st.obj.GetName()
	uid, rv := st.obj.GetUID(), st.obj.GetResourceVersion()
	err := v.dyn.Resource(c.instances).Namespace(v.Opts.Namespace).Delete(ctx, name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if err == nil {
		v.mu.Lock()
		v.deleted[name]++
		v.mu.Unlock()
		v.logf("store of instance %s is Removed: deleted the instance", name)
	}
	return ignoreGoneOrConflict(err)
}

// reconcilePD runs a PD instance: its pod while it lives; once it is being
// deleted, v2 removes the member by name first, then pod and claims.
func (v *V2) reconcilePD(ctx context.Context, c v2Component, st *instanceState) error {
	if err := v.syncMemberLabel(ctx, st); err != nil {
		return err
	}
	if !st.deleting {
		return v.ensurePod(ctx, c, st)
	}
	if st.member != nil {
		if err := v.deleteMember(ctx, st.obj.GetName()); err != nil {
			return err
		}
		v.logf("PD instance %s is being deleted: removed its member", st.obj.GetName())
		return nil
	}
	return v.finalize(ctx, c, st)
}

func (v *V2) deleteMember(ctx context.Context, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, v.URL+"/pd/api/v1/members/name/"+name, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("delete PD member %s: PD answered %s", name, resp.Status)
	}
	return nil
}

// syncStoreStatus mirrors the store into the instance's status (id, PD
// node state) and the legacy store-id label onto its pod and claim.
func (v *V2) syncStoreStatus(ctx context.Context, st *instanceState) error {
	if st.store == nil {
		return nil
	}
	id, state := strconv.FormatUint(st.store.ID, 10), st.store.NodeState.String()
	if st.store.State == pd.StoreTombstone {
		state = pd.NodeRemoved.String()
	}
	curID, _, _ := unstructured.NestedString(st.obj.Object, "status", "id")
	curState, _, _ := unstructured.NestedString(st.obj.Object, "status", "state")
	if curID != id || curState != state {
		obj := st.obj.DeepCopy()
		obj.Object["status"] = map[string]any{"id": id, "state": state}
		updated, err := v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err != nil {
			return ignoreGoneOrConflict(err)
		}
		st.obj = updated
	}
	if st.store.State != pd.StoreUp {
		return nil
	}
	return v.labelPodAndClaim(ctx, st, LabelStoreID, id)
}

// syncMemberLabel puts the legacy member-id label on a PD pod and claim
// once its member is listed.
func (v *V2) syncMemberLabel(ctx context.Context, st *instanceState) error {
	if st.member == nil {
		return nil
	}
	return v.labelPodAndClaim(ctx, st, labelMemberID, strconv.FormatUint(st.member.MemberID, 10))
}

func (v *V2) setOffline(ctx context.Context, obj *unstructured.Unstructured, offline bool) error {
	// Setting offline also drops defer-delete, so that the deletion can
	// still be cancelled (as v2's scale-in does).
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"core.pingcap.com/defer-delete":null}},"spec":{"offline":%t}}`, offline)
	_, err := v.dyn.Resource(V2TiKVs).Namespace(v.Opts.Namespace).Patch(ctx, obj.GetName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return ignoreGoneOrConflict(err)
}

func (v *V2) cancelOffline(ctx context.Context, id uint64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/pd/api/v1/store/%d/state?state=Up", v.URL, id), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("cancel offline of store %d: PD answered %s", id, resp.Status)
	}
	return nil
}

func ignoreGoneOrConflict(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}
