package volumecontroller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// TiDB Operator v2 (core.pingcap.com/v1alpha1) manages pods directly, one
// instance object (TiKV, PD) per member, and has no failover for a dead
// node: its documentation tells operators to delete the TiKV instance by
// hand, after which the operator offlines the store, deletes the pod and
// claims and the group creates a replacement. Facts used here were read
// from pingcap/tidb-operator v2 (see docs/design.md, "TiDB Operator v2").
const (
	v2Group           = "core.pingcap.com"
	labelV2Component  = "pingcap.com/component"
	labelV2Cluster    = "pingcap.com/cluster"
	labelV2Group      = "pingcap.com/group"
	labelV2ManagedBy  = "pingcap.com/managed-by"
	annV2DeferDelete  = "core.pingcap.com/defer-delete"
	v2DefaultPDPort   = "2379"
	v2EndpointTTL     = 30 * time.Second
	v2InstanceTiKV    = "TiKV"
	v2InstancePD      = "PD"
	v2ClusterResource = "clusters"
	v2PDGroupResource = "pdgroups"
)

// v2Resources maps instance kinds to their resources.
var v2Resources = map[string]string{v2InstanceTiKV: "tikvs", v2InstancePD: "pds"}

// v2Instance is the controller owner of a v2 claim (or pod): its instance
// object, if the claim belongs to one.
func v2Instance(objs ...metav1.Object) *metav1.OwnerReference {
	for _, o := range objs {
		if o == nil || o.GetLabels()[labelV2ManagedBy] == "" {
			continue
		}
		for _, ref := range o.GetOwnerReferences() {
			if ref.Controller == nil || !*ref.Controller || !strings.HasPrefix(ref.APIVersion, v2Group+"/") {
				continue
			}
			if _, ok := v2Resources[ref.Kind]; ok {
				ref := ref
				return &ref
			}
		}
	}
	return nil
}

func instanceGVR(ref *metav1.OwnerReference) (schema.GroupVersionResource, error) {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return schema.GroupVersionResource{}, err
	}
	return gv.WithResource(v2Resources[ref.Kind]), nil
}

// v2Endpoints finds the PD of a v2 cluster without configuration: the
// operator writes it into the Cluster object's status.pd; without it, the
// Service of the cluster's PDGroup (<pdgroup>-pd:2379).
type v2Endpoints struct {
	client dynamic.Interface
	clock  clock.PassiveClock

	mu    sync.Mutex
	cache map[string]v2Endpoint
}

type v2Endpoint struct {
	url string
	err error
	at  time.Time
}

func (e *v2Endpoints) get(ctx context.Context, namespace, cluster string) (string, error) {
	if e.client == nil {
		return "", errors.New("TiDB Operator v2 cluster, but the controller has no dynamic client")
	}
	key := namespace + "/" + cluster
	e.mu.Lock()
	c, ok := e.cache[key]
	e.mu.Unlock()
	if ok && e.clock.Since(c.at) < v2EndpointTTL {
		return c.url, c.err
	}
	url, err := e.lookup(ctx, namespace, cluster)
	e.mu.Lock()
	e.cache[key] = v2Endpoint{url: url, err: err, at: e.clock.Now()}
	e.mu.Unlock()
	return url, err
}

func (e *v2Endpoints) lookup(ctx context.Context, namespace, cluster string) (string, error) {
	gvr := schema.GroupVersionResource{Group: v2Group, Version: "v1alpha1", Resource: v2ClusterResource}
	obj, err := e.client.Resource(gvr).Namespace(namespace).Get(ctx, cluster, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read TiDB Operator v2 Cluster %s/%s: %w", namespace, cluster, err)
	}
	if url, _, _ := unstructured.NestedString(obj.Object, "status", "pd"); url != "" {
		return url, nil
	}
	list, err := e.client.Resource(gvr.GroupVersion().WithResource(v2PDGroupResource)).Namespace(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list PDGroups of %s/%s: %w", namespace, cluster, err)
	}
	var groups []string
	for _, g := range list.Items {
		if name, _, _ := unstructured.NestedString(g.Object, "spec", "cluster", "name"); name == cluster {
			groups = append(groups, g.GetName())
		}
	}
	if len(groups) == 0 {
		return "", fmt.Errorf("TiDB Operator v2 cluster %s/%s has no status.pd and no PDGroup; set --pd-endpoint %s/%s=<url>", namespace, cluster, namespace, cluster)
	}
	sort.Strings(groups)
	return fmt.Sprintf("http://%s-pd.%s:%s", groups[0], namespace, v2DefaultPDPort), nil
}

// deleteInstance does what TiDB Operator v2's documentation asks an
// operator to do for a TiKV whose node is dead, or whose store is buried
// while its pod is stuck: delete the instance object. The operator then
// offlines the store, deletes the pod and the claim (the disk is recycled
// when its claim goes) and its group creates a replacement on a fresh disk.
func (c *Controller) deleteInstance(ctx context.Context, d Decision, t target) error {
	ref := t.owner.Instance
	log := klog.FromContext(ctx).WithValues("pv", t.pv.Name, "instance", t.pvc.Namespace+"/"+ref.Name)
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
		return fmt.Errorf("%w: claim %s was recreated", errRecheck, pvc.Name)
	}
	if fresh := v2Instance(pvc); fresh == nil || fresh.UID != ref.UID {
		return fmt.Errorf("%w: claim %s no longer belongs to instance %s", errRecheck, pvc.Name, ref.Name)
	}
	if c.dynamic == nil {
		return errors.New("no dynamic client to delete TiDB Operator v2 instances")
	}
	gvr, err := instanceGVR(ref)
	if err != nil {
		return err
	}
	inst, err := c.dynamic.Resource(gvr).Namespace(pvc.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: instance %s is gone", errDone, ref.Name)
	}
	if err != nil {
		return fmt.Errorf("re-read instance %s: %w", ref.Name, err)
	}
	switch {
	case inst.GetUID() != ref.UID:
		return fmt.Errorf("%w: instance %s was recreated (UID %s, claim owned by %s)", errRecheck, ref.Name, inst.GetUID(), ref.UID)
	case inst.GetDeletionTimestamp() != nil:
		return fmt.Errorf("%w: instance %s is already being deleted", errDone, ref.Name)
	case inst.GetAnnotations()[annV2DeferDelete] != "":
		return fmt.Errorf("%w: instance %s is marked %s; TiDB Operator deletes it", errDone, ref.Name, annV2DeferDelete)
	}
	if !ownerGoneDecision(d) {
		if err := c.recheckDead(ctx, d, pv); err != nil {
			return err
		}
	}
	if err := c.recheckNotUp(ctx, t, rec, ownerGoneDecision(d)); err != nil {
		return err
	}
	// Only the decided pod may mount the claim, and it must still be stuck
	// for the decision's reason (a dead node, a failed disk or the grace).
	mounted := d
	mounted.Action = ActReleaseWithPod
	if _, err := c.checkMounters(ctx, mounted, t, pv); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	uid := ref.UID
	err = c.dynamic.Resource(gvr).Namespace(pvc.Namespace).Delete(ctx, ref.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		log.Info("instance already deleted or replaced by someone else")
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete instance %s/%s: %w", pvc.Namespace, ref.Name, err)
	}
	c.metrics.actions.WithLabelValues(ActDeleteInstance.String()).Inc()
	log.Info("deleted TiDB Operator v2 instance", "reason", d.Reason)
	msg := fmt.Sprintf("deleted %s instance %s so TiDB Operator offlines its store and its group starts a replacement on a fresh disk: %s", ref.Kind, ref.Name, d.Reason)
	c.recorder.Event(pv, corev1.EventTypeNormal, ReasonInstanceDeleted, msg)
	c.recorder.Event(pvc, corev1.EventTypeNormal, ReasonInstanceDeleted, msg)
	if t.node.Gone || t.node.NotReady || t.node.OutOfService {
		c.recorder.Event(nodeRef(t.pv.Labels[provisioner.LabelNode]), corev1.EventTypeNormal, ReasonInstanceDeleted, msg)
	}
	return nil
}

// ownerGoneDecision: the decision was taken because the owner's data is
// no longer needed (not because its node is dead).
func ownerGoneDecision(d Decision) bool { return d.OwnerGone }

// recheckNotUp asks PD afresh: for a release because the owner is gone,
// that it still is (with the address re-check); otherwise that the store
// is Disconnected or Down — never Up — in the cluster it was recorded in.
func (c *Controller) recheckNotUp(ctx context.Context, t target, rec provisioner.Ownership, gone bool) error {
	if gone {
		return c.recheckGone(ctx, t, rec)
	}
	client, err := c.pd.client(t.endpoint)
	if err != nil {
		return err
	}
	defer c.pd.invalidate(t.endpoint)
	f, _ := freshStoreFacts(ctx, client, rec)
	if !f.Known || (f.Phase != pd.PhaseDisconnected && f.Phase != pd.PhaseDown) {
		return fmt.Errorf("%w: %s is %s", errRecheck, rec.Owner(), ownerState(f))
	}
	return nil
}
