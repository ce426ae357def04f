package volumecontroller

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Labels TiDB Operator (and our own e2e StatefulSets) put on pods and PVCs.
const (
	labelComponent = "app.kubernetes.io/component"
	labelInstance  = "app.kubernetes.io/instance"
	labelStoreID   = "tidb.pingcap.com/store-id"
	labelMemberID  = "tidb.pingcap.com/member-id"
	annPodName     = "tidb.pingcap.com/pod-name"
	// labelV2Instance is TiDB Operator v2's instance name on pods and claims.
	labelV2Instance = "pingcap.com/instance"
)

// owner is who a bound PV belongs to, as far as Kubernetes tells.
type owner struct {
	Component string
	Cluster   string
	// Pod is the pod name that owns (or last owned) the claim: the mounting
	// pod, else TiDB Operator's pod-name annotation, else what was recorded.
	Pod       string
	Namespace string
	// Started is when the mounting pod started; zero without a pod. A
	// store is confirmed as the pod's only if it heartbeated since.
	Started time.Time
	// Ready is the mounting pod's Ready condition. A PD member named
	// after the pod is confirmed as its own only while the pod is Ready:
	// a pod on a fresh disk cannot join while its previous disk's member
	// of the same name is listed, and is never Ready meanwhile.
	Ready bool
	// ReadySince is when the pod last turned Ready (whole seconds).
	ReadySince time.Time
	// Labels to render the PD endpoint template with.
	Labels map[string]string
	// Instance is the TiDB Operator v2 instance object the claim belongs
	// to (its controller owner), nil under v1.
	Instance *metav1.OwnerReference
}

// V2 reports whether the claim belongs to a TiDB Operator v2 cluster.
func (o owner) V2() bool { return o.Labels[labelV2Cluster] != "" }

// kubeOwner reads the owner from the mounting pod, the claim, and what was
// recorded on the PV, in that order of trust.
func kubeOwner(pv *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim, pod *corev1.Pod) owner {
	o := owner{Namespace: pvc.Namespace, Labels: map[string]string{}}
	for _, src := range []map[string]string{pvc.Labels, podLabels(pod)} {
		for k, v := range src {
			o.Labels[k] = v
		}
	}
	// v1 labels first; v2 writes them too, and its own set is the fallback.
	o.Component = orDefault(o.Labels[labelComponent], o.Labels[labelV2Component])
	o.Cluster = orDefault(o.Labels[labelInstance], o.Labels[labelV2Cluster])
	o.Instance = v2Instance(pvc, podObject(pod))
	if recorded := pv.Labels[provisioner.LabelComponent]; o.Component == "" && recorded != "" && provisioner.Owned(pv) {
		o.Component = recorded
	}
	if recorded := pv.Labels[provisioner.LabelCluster]; o.Cluster == "" && recorded != "" && provisioner.Owned(pv) {
		o.Cluster = recorded
		o.Labels[labelInstance] = recorded
	}
	switch {
	case pod != nil:
		o.Pod = pod.Name
		o.Started = podStarted(pod)
		o.Ready, o.ReadySince = podReady(pod)
	case pvc.Annotations[annPodName] != "":
		o.Pod = pvc.Annotations[annPodName]
	default:
		if ns, name, ok := strings.Cut(pv.Annotations[provisioner.AnnOwnerPod], "/"); ok && ns == pvc.Namespace && provisioner.Owned(pv) {
			o.Pod = name
		}
	}
	return o
}

// recordedOwner rebuilds the owner of a PV whose claim is gone from what
// the controller recorded.
func recordedOwner(rec provisioner.Ownership) owner {
	ns, pod, _ := strings.Cut(rec.Pod, "/")
	if ns == "" {
		ns, _, _ = strings.Cut(rec.ClaimName, "/")
	}
	o := owner{
		Component: rec.Component, Cluster: rec.Cluster, Pod: pod, Namespace: ns,
		Labels: map[string]string{labelInstance: rec.Cluster, labelComponent: rec.Component},
	}
	if rec.V2 {
		o.Labels[labelV2Cluster] = rec.Cluster
	}
	return o
}

// podStarted is when the kubelet started the pod (its creation if the
// status does not say yet).
func podStarted(p *corev1.Pod) time.Time {
	if p.Status.StartTime != nil {
		return p.Status.StartTime.Time
	}
	return p.CreationTimestamp.Time
}

// podReady is the pod's Ready condition and when it last changed.
func podReady(p *corev1.Pod) (bool, time.Time) {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue, c.LastTransitionTime.Time
		}
	}
	return false, time.Time{}
}

// podObject keeps a nil pod a nil interface.
func podObject(p *corev1.Pod) metav1.Object {
	if p == nil {
		return nil
	}
	return p
}

func podLabels(p *corev1.Pod) map[string]string {
	if p == nil {
		return nil
	}
	return p.Labels
}

// confirmStore finds the TiKV store PD confirms as the pod's (safety rule
// "an owner is a fact only when PD confirms it"): Up — Preparing or
// Serving, not Disconnected or Down —, its advertised address naming the
// pod (and the cluster and namespace where the address carries them), and
// a heartbeat since the pod started (and, where PD reports it, a process
// started since). TiDB Operator's store-id label is a hint PD must
// confirm like any other candidate: the previous incarnation of the pod
// (a store on a dead node, still Down or Offline) matches the address but
// has not heartbeated since this pod started, so it is never recorded as
// the owner of the new pod's disk.
func confirmStore(o owner, stores storeIndex) (pd.StoreInfo, string) {
	if o.Pod == "" || o.Started.IsZero() {
		return pd.StoreInfo{}, "no running pod uses the claim yet"
	}
	candidates := stores.byPod[o.Pod]
	if v := o.Labels[labelStoreID]; v != "" {
		if id, err := strconv.ParseUint(v, 10, 64); err == nil {
			if s, ok := stores.byID[id]; ok && s.PodName() != o.Pod {
				candidates = append(candidates, s)
			}
		}
	}
	var confirmed []pd.StoreInfo
	why := fmt.Sprintf("PD lists no store advertising pod %s", o.Pod)
	for _, s := range candidates {
		switch {
		case !addressNames(s.Address, o):
			why = fmt.Sprintf("store %d advertises %s, which does not name pod %s of cluster %s in %s", s.ID, s.Address, o.Pod, o.Cluster, o.Namespace)
		case s.Phase() != pd.PhaseUp:
			why = fmt.Sprintf("store %d at the pod's address is %s, not Up", s.ID, s.Phase())
		case s.LastHeartbeat.Before(o.Started):
			why = fmt.Sprintf("store %d at the pod's address has not heartbeated since the pod started (%s)", s.ID, o.Started.UTC().Format(time.RFC3339))
		case !s.StartTime.IsZero() && s.StartTime.Before(o.Started.Truncate(time.Second)):
			why = fmt.Sprintf("store %d at the pod's address runs a process started before the pod", s.ID)
		default:
			confirmed = append(confirmed, s)
		}
	}
	if len(confirmed) > 1 {
		return pd.StoreInfo{}, fmt.Sprintf("%d Up stores advertise pod %s", len(confirmed), o.Pod)
	}
	if len(confirmed) == 0 {
		return pd.StoreInfo{}, why
	}
	return confirmed[0], ""
}

// addressNames checks that an advertised address
// (<pod>.<cluster>-tikv-peer.<namespace>.svc:port) names the pod, and the
// cluster and namespace where it carries them.
func addressNames(addr string, o owner) bool {
	host := addr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	labels := strings.Split(host, ".")
	if labels[0] != o.Pod {
		return false
	}
	if len(labels) >= 2 && o.Cluster != "" && !slices.Contains(peerServices(o), labels[1]) {
		return false
	}
	if len(labels) >= 3 && labels[2] != o.Namespace {
		return false
	}
	return true
}

// peerServices are the headless Services a TiKV pod of the owner's cluster
// advertises itself under: v1 <cluster>-tikv-peer; v2 <group>-tikv-peer,
// or <cluster>-cluster with v2's ClusterSubdomain feature gate.
func peerServices(o owner) []string {
	out := []string{o.Cluster + "-tikv-peer"}
	if o.V2() {
		if g := o.Labels[labelV2Group]; g != "" {
			out = append(out, g+"-tikv-peer")
		}
		out = append(out, o.Cluster+"-cluster")
	}
	return out
}

// confirmMember finds the PD member of a pod: by TiDB Operator's member-id
// label first (confirmed only if PD lists that ID under the pod's name),
// then by name — v1 names members after pods.
func confirmMember(o owner, m pd.Members) (pd.Member, string) {
	if o.Pod == "" || !o.Ready {
		return pd.Member{}, "no Ready pod uses the claim yet (a member of its name may be the one its previous disk left)"
	}
	var candidates []pd.Member
	if v := o.Labels[labelMemberID]; v != "" {
		if id, err := strconv.ParseUint(v, 10, 64); err == nil {
			for _, mem := range m.Members {
				if mem.MemberID == id && memberNames(mem, o) {
					candidates = append(candidates, mem)
				}
			}
		}
	}
	for _, mem := range m.Members {
		if memberNames(mem, o) {
			candidates = append(candidates, mem)
		}
	}
	why := fmt.Sprintf("PD lists no member named after pod %s", o.Pod)
	for _, mem := range candidates {
		if memberURLsName(mem, o) {
			return mem, ""
		}
		why = fmt.Sprintf("member %s advertises %s, which does not name pod %s of cluster %s in %s", mem.Name, strings.Join(mem.ClientURLs, ","), o.Pod, o.Cluster, o.Namespace)
	}
	return pd.Member{}, why
}

// memberURLsName: a member's advertised URLs name its pod, as TiDB
// Operator configures them (v1 <pod>.<cluster>-pd-peer.<ns>.svc, v2
// <pod>.<subdomain>.<ns>); a member of the same name in another namespace
// or cluster (an endpoint that reached the wrong PD) names another pod.
func memberURLsName(mem pd.Member, o owner) bool {
	for _, raw := range append(slices.Clone(mem.ClientURLs), mem.PeerURLs...) {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			continue
		}
		labels := strings.Split(u.Hostname(), ".")
		if labels[0] != o.Pod {
			continue
		}
		if len(labels) >= 2 && o.Cluster != "" && !slices.Contains(pdPeerServices(o), labels[1]) {
			continue
		}
		if len(labels) >= 3 && labels[2] != o.Namespace {
			continue
		}
		return true
	}
	return false
}

// pdPeerServices are the headless Services a PD pod of the owner's cluster
// advertises itself under: v1 <cluster>-pd-peer; v2 <group>-pd-peer, or
// <cluster>-cluster with v2's ClusterSubdomain feature gate.
func pdPeerServices(o owner) []string {
	out := []string{o.Cluster + "-pd-peer"}
	if o.V2() {
		if g := o.Labels[labelV2Group]; g != "" {
			out = append(out, g+"-pd-peer")
		}
		out = append(out, o.Cluster+"-cluster")
	}
	return out
}

// memberNames: TiDB Operator v1 names a member after its pod, v2 after its
// instance object (pod basic-pd-7axwci, member basic-7axwci).
func memberNames(mem pd.Member, o owner) bool {
	return mem.Name == o.Pod || (o.Labels[labelV2Instance] != "" && mem.Name == o.Labels[labelV2Instance])
}

// ownerState is the word `tidb-localpv disks` shows for facts.
func ownerState(f OwnerFacts) string {
	switch {
	case !f.Known:
		return "Unknown"
	case f.Removed:
		return "Removed"
	default:
		return f.Phase.String()
	}
}
