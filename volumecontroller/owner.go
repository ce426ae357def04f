package volumecontroller

import (
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Labels TiDB Operator (and our own e2e StatefulSets) put on pods and PVCs.
const (
	labelComponent = "app.kubernetes.io/component"
	labelInstance  = "app.kubernetes.io/instance"
	labelStoreID   = "tidb.pingcap.com/store-id"
	annPodName     = "tidb.pingcap.com/pod-name"
)

// owner is who a bound PV belongs to, as far as Kubernetes tells.
type owner struct {
	Component string
	Cluster   string
	// Pod is the pod name that owns (or last owned) the claim: the mounting
	// pod, else TiDB Operator's pod-name annotation, else what was recorded.
	Pod       string
	Namespace string
	// Labels to render the PD endpoint template with.
	Labels map[string]string
}

// kubeOwner reads the owner from the mounting pod, the claim, and what was
// recorded on the PV, in that order of trust.
func kubeOwner(pv *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim, pod *corev1.Pod) owner {
	o := owner{Namespace: pvc.Namespace, Labels: map[string]string{}}
	for _, src := range []map[string]string{pvc.Labels, podLabels(pod)} {
		for k, v := range src {
			o.Labels[k] = v
		}
	}
	o.Component = o.Labels[labelComponent]
	o.Cluster = o.Labels[labelInstance]
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
	case pvc.Annotations[annPodName] != "":
		o.Pod = pvc.Annotations[annPodName]
	default:
		if ns, name, ok := strings.Cut(pv.Annotations[provisioner.AnnOwnerPod], "/"); ok && ns == pvc.Namespace && provisioner.Owned(pv) {
			o.Pod = name
		}
	}
	return o
}

func podLabels(p *corev1.Pod) map[string]string {
	if p == nil {
		return nil
	}
	return p.Labels
}

// storeOf finds the TiKV store of a pod: the store-id label TiDB Operator
// sets when present, otherwise the one store not yet buried whose advertised
// address starts with the pod name (<pod>.<cluster>-tikv-peer.<ns>.svc:port).
// A Tombstone store with the same address is an earlier incarnation and
// never the owner of a disk seen for the first time.
func storeOf(o owner, stores storeIndex) (uint64, bool) {
	if v := o.Labels[labelStoreID]; v != "" {
		if id, err := strconv.ParseUint(v, 10, 64); err == nil && id > 0 {
			return id, true
		}
	}
	if o.Pod == "" {
		return 0, false
	}
	var found []uint64
	for _, s := range stores.byPod[o.Pod] {
		if s.Phase() == pd.PhaseTombstone || s.Phase() == pd.PhaseUnknown {
			continue
		}
		if !addressMatches(s.Address, o) {
			continue
		}
		found = append(found, s.ID)
	}
	if len(found) != 1 {
		return 0, false
	}
	return found[0], true
}

// addressMatches checks the parts of a fully qualified advertised address
// beyond the pod name, when they are there.
func addressMatches(addr string, o owner) bool {
	host := addr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	labels := strings.Split(host, ".")
	if len(labels) >= 2 && o.Cluster != "" && labels[1] != o.Cluster+"-tikv-peer" {
		return false
	}
	if len(labels) >= 3 && labels[2] != o.Namespace {
		return false
	}
	return true
}

// memberOf finds the PD member of a pod: TiDB Operator names members after
// their pods.
func memberOf(o owner, m pd.Members) (string, bool) {
	if o.Pod == "" {
		return "", false
	}
	for _, mem := range m.Members {
		if mem.Name == o.Pod {
			return mem.Name, true
		}
	}
	return "", false
}

// ownerState is the word the PV records and `tidb-localpv disks` shows.
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
