package provisioner

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// More ownership keys (see AnnOwnerPod and the others in contract.go).
const (
	// AnnPDClusterID is the ID of the PD cluster the owner was confirmed
	// in: an answer from a PD with another ID tells nothing about it.
	AnnPDClusterID = "tidb-localpv.io/pd-cluster-id"
	// AnnPDMemberID is the PD member's member_id.
	AnnPDMemberID = "tidb-localpv.io/pd-member-id"
	// AnnPDPeers lists the member_ids PD listed beside the owning member
	// when it was last seen. A member gone from a membership that carries
	// on was removed; one gone together with all of its peers vanished
	// with its PD (rebuilt or recovered), which tells nothing.
	AnnPDPeers = "tidb-localpv.io/pd-peers"
	// AnnOwnerSeen is since when PD has shown the owner in the state
	// AnnOwnerState records (RFC 3339); it changes with the state only.
	AnnOwnerSeen = "tidb-localpv.io/owner-seen"
	// AnnOfflinedAt is set by the volume-controller when it asked PD to
	// offline the disk's store because its node was dead (RFC 3339): a node
	// that comes back while the store drains is reported with the command
	// that cancels it.
	AnnOfflinedAt = "tidb-localpv.io/offlined-at"
	// AnnTiDBOperator is "v2" for a claim of a TiDB Operator v2 cluster,
	// whose PD is found through its Cluster object.
	AnnTiDBOperator = "tidb-localpv.io/tidb-operator"
)

// Ownership is the volume-controller's record of whose data a disk holds:
// the TiKV store or PD member confirmed in PD for one claim. The controller
// writes it on the PV; the node agent keeps a copy with the disk's
// identity where no pod can reach it, so that deleting or relabelling the
// PV never turns an owned disk into one that may be wiped.
type Ownership struct {
	Component string `json:"component"`
	Cluster   string `json:"cluster,omitempty"`
	// Pod is "<namespace>/<name>" of the pod that used the claim.
	Pod string `json:"pod,omitempty"`
	// Claim is the UID of the claim the record is for; ClaimName is
	// "<namespace>/<name>", which the agent needs to re-create a PV that
	// waits for the controller's approval.
	Claim     string `json:"claim"`
	ClaimName string `json:"claimName,omitempty"`
	StoreID   uint64 `json:"storeID,omitempty"`
	Member    string `json:"member,omitempty"`
	MemberID  uint64 `json:"memberID,omitempty"`
	// ClusterID is the PD cluster ID (a uint64 that may exceed 2^53).
	ClusterID uint64 `json:"clusterID,string,omitempty"`
	// State is the owner's state when last seen in PD, at Seen.
	State string    `json:"state,omitempty"`
	Seen  time.Time `json:"seen,omitempty"`
	Peers []uint64  `json:"peers,omitempty"`
	// V2: the claim belongs to a TiDB Operator v2 cluster.
	V2 bool `json:"v2,omitempty"`
}

// Owner names the owner for messages: "TiKV store 7", "PD member pd-2".
func (o Ownership) Owner() string {
	if o.Member != "" {
		return "PD member " + o.Member
	}
	return fmt.Sprintf("TiKV store %d", o.StoreID)
}

// Valid reports whether the record names an owner for a claim.
func (o Ownership) Valid() bool {
	return o.Claim != "" && (o.StoreID != 0 || o.Member != "")
}

// OwnershipOf reads the record on pv, whatever claim it is for; ok is false
// when pv records no owner at all.
func OwnershipOf(pv *corev1.PersistentVolume) (Ownership, bool) {
	a := pv.Annotations
	o := Ownership{
		Component: pv.Labels[LabelComponent],
		Cluster:   pv.Labels[LabelCluster],
		Pod:       a[AnnOwnerPod],
		Claim:     a[AnnOwnerClaim],
		Member:    a[AnnPDMember],
		State:     a[AnnOwnerState],
		V2:        a[AnnTiDBOperator] == "v2",
	}
	o.StoreID, _ = strconv.ParseUint(a[AnnStoreID], 10, 64)
	o.MemberID, _ = strconv.ParseUint(a[AnnPDMemberID], 10, 64)
	o.ClusterID, _ = strconv.ParseUint(a[AnnPDClusterID], 10, 64)
	if t, err := time.Parse(time.RFC3339, a[AnnOwnerSeen]); err == nil {
		o.Seen = t
	}
	for _, p := range strings.Split(a[AnnPDPeers], ",") {
		if id, err := strconv.ParseUint(strings.TrimSpace(p), 10, 64); err == nil && id != 0 {
			o.Peers = append(o.Peers, id)
		}
	}
	if ref := pv.Spec.ClaimRef; ref != nil && string(ref.UID) == o.Claim {
		o.ClaimName = ref.Namespace + "/" + ref.Name
	}
	return o, o.Valid()
}

// DamagedRecord returns the keys of an ownership record that pv carries
// only in part, or for another claim than its own: what is left of a record
// somebody edited. Nil when pv carries a whole record of its claim, or none
// (who uses the claim, AnnOwnerPod, is no record). The controller never
// leaves a record in part: it writes one whole and removes one whole.
func DamagedRecord(pv *corev1.PersistentVolume) []string {
	var present []string
	for _, k := range []string{AnnOwnerClaim, AnnStoreID, AnnPDMember, AnnPDMemberID, AnnPDClusterID, AnnPDPeers} {
		if _, ok := pv.Annotations[k]; ok {
			present = append(present, k)
		}
	}
	if len(present) == 0 {
		return nil
	}
	if _, ok := OwnershipOf(pv); ok && Owned(pv) {
		return nil
	}
	return present
}

// Annotations renders the record as PV annotations; empty values mean
// "remove the key" in a merge patch.
func (o Ownership) Annotations() map[string]string {
	out := map[string]string{
		AnnOwnerPod:     o.Pod,
		AnnOwnerClaim:   o.Claim,
		AnnStoreID:      "",
		AnnPDMember:     o.Member,
		AnnPDMemberID:   "",
		AnnPDClusterID:  "",
		AnnOwnerState:   o.State,
		AnnOwnerSeen:    "",
		AnnPDPeers:      "",
		AnnTiDBOperator: "",
	}
	if o.V2 {
		out[AnnTiDBOperator] = "v2"
	}
	if o.StoreID != 0 {
		out[AnnStoreID] = strconv.FormatUint(o.StoreID, 10)
	}
	if o.MemberID != 0 {
		out[AnnPDMemberID] = strconv.FormatUint(o.MemberID, 10)
	}
	if o.ClusterID != 0 {
		out[AnnPDClusterID] = strconv.FormatUint(o.ClusterID, 10)
	}
	if !o.Seen.IsZero() {
		out[AnnOwnerSeen] = o.Seen.UTC().Format(time.RFC3339)
	}
	if len(o.Peers) > 0 {
		peers := slices.Clone(o.Peers)
		slices.Sort(peers)
		s := make([]string, len(peers))
		for i, p := range peers {
			s[i] = strconv.FormatUint(p, 10)
		}
		out[AnnPDPeers] = strings.Join(s, ",")
	}
	return out
}

// MarshalRecord and UnmarshalRecord are the agent's on-disk form.
func (o Ownership) MarshalRecord() ([]byte, error) { return json.Marshal(o) }

// UnmarshalRecord decodes what MarshalRecord wrote and checks it names an owner.
func UnmarshalRecord(data []byte) (Ownership, error) {
	var o Ownership
	if err := json.Unmarshal(data, &o); err != nil {
		return Ownership{}, fmt.Errorf("decode ownership record: %w", err)
	}
	if !o.Valid() {
		return Ownership{}, fmt.Errorf("ownership record names no owner")
	}
	return o, nil
}

// DiskOwner renders the record for a LocalDisk's status.owner.
func (o Ownership) DiskOwner() *v1alpha1.Owner {
	if !o.Valid() {
		return nil
	}
	d := &v1alpha1.Owner{
		Name: o.Owner(), Component: o.Component, Cluster: o.Cluster, Pod: o.Pod,
		Claim: o.ClaimName, ClaimUID: o.Claim, StoreID: o.StoreID, Member: o.Member,
		State: o.State, TiDBOperator: map[bool]string{true: "v2"}[o.V2],
	}
	if o.MemberID != 0 {
		d.MemberID = strconv.FormatUint(o.MemberID, 10)
	}
	for _, p := range o.Peers {
		d.Peers = append(d.Peers, strconv.FormatUint(p, 10))
	}
	if o.ClusterID != 0 {
		d.PDClusterID = strconv.FormatUint(o.ClusterID, 10)
	}
	if !o.Seen.IsZero() {
		d.Seen = &metav1.Time{Time: o.Seen.UTC()}
	}
	return d
}

// OwnershipFromDisk reads a LocalDisk's status.owner back.
func OwnershipFromDisk(d *v1alpha1.Owner) (Ownership, bool) {
	if d == nil {
		return Ownership{}, false
	}
	o := Ownership{
		Component: d.Component, Cluster: d.Cluster, Pod: d.Pod, Claim: d.ClaimUID, ClaimName: d.Claim,
		StoreID: d.StoreID, Member: d.Member, State: d.State,
		V2: d.TiDBOperator == "v2",
	}
	o.ClusterID, _ = strconv.ParseUint(d.PDClusterID, 10, 64)
	o.MemberID, _ = strconv.ParseUint(d.MemberID, 10, 64)
	for _, p := range d.Peers {
		if id, err := strconv.ParseUint(p, 10, 64); err == nil {
			o.Peers = append(o.Peers, id)
		}
	}
	if d.Seen != nil {
		o.Seen = d.Seen.Time
	}
	return o, o.Valid()
}
