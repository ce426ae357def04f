package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion of the API.
var GroupVersion = schema.GroupVersion{Group: "tidb-localpv.io", Version: "v1alpha1"}

// Resource is the LocalDisk resource.
var Resource = GroupVersion.WithResource("localdisks")

// Kind names.
const (
	Kind     = "LocalDisk"
	ListKind = "LocalDiskList"
)

// AddToScheme registers the API's types.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &LocalDisk{}, &LocalDiskList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Phase is where a disk is in its life.
type Phase string

// Phases. Available, Bound and Released follow the disk's PV; the others
// say why a disk is not published.
const (
	// PhaseAvailable: published, no claim yet.
	PhaseAvailable Phase = "Available"
	// PhaseBound: its PV is bound to a claim.
	PhaseBound Phase = "Bound"
	// PhaseReleased: its claim is gone; it waits for the wipe (and, for a
	// TiKV/PD disk, for the controller's approval).
	PhaseReleased Phase = "Released"
	// PhaseWiping: being wiped.
	PhaseWiping Phase = "Wiping"
	// PhaseUnpublished: usable soon, not published yet (no StorageClass,
	// waiting out a resync, a PV name still taken, …); see reason.
	PhaseUnpublished Phase = "Unpublished"
	// PhaseForeign: holds data without a tidb-localpv identity; never
	// published, never wiped.
	PhaseForeign Phase = "Foreign"
	// PhaseConflict: another PV names the disk or its path.
	PhaseConflict Phase = "Conflict"
	// PhaseMissing: the disk is not where it was on its node.
	PhaseMissing Phase = "Missing"
	// PhaseFailed: the disk cannot be used (unreadable marker, failed
	// wipe, failing hardware); see reason and health.
	PhaseFailed Phase = "Failed"
)

// LocalDisk is one disk tidb-localpv manages on a node: what it is (spec,
// written by the node's agent), what the agent sees of it, and whose data
// it holds as the volume-controller confirmed it in PD (status.owner).
// The record outlives edits and deletions of the disk's PV.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ldisk,categories=tidb-localpv
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Class",type=string,JSONPath=`.spec.storageClassName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Capacity",type=string,JSONPath=`.status.capacity`
// +kubebuilder:printcolumn:name="Claim",type=string,JSONPath=`.status.claim`
// +kubebuilder:printcolumn:name="Owner",type=string,JSONPath=`.status.owner.name`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`
// +kubebuilder:printcolumn:name="Path",type=string,JSONPath=`.spec.path`,priority=1
// +kubebuilder:printcolumn:name="PV",type=string,JSONPath=`.status.persistentVolume`,priority=1
// +kubebuilder:printcolumn:name="Owner-State",type=string,JSONPath=`.status.owner.state`,priority=1
// +kubebuilder:printcolumn:name="Health",type=string,JSONPath=`.status.health.state`,priority=1
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LocalDisk struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LocalDiskSpec   `json:"spec"`
	Status LocalDiskStatus `json:"status,omitempty"`
}

// LocalDiskSpec is what the disk is.
type LocalDiskSpec struct {
	// NodeName is the Node the disk is attached to.
	NodeName string `json:"nodeName"`
	// Path is the mount point (Filesystem) or the device as the inventory
	// names it (Block).
	Path string `json:"path"`
	// Device is the block device behind the path, when known.
	// +optional
	Device string `json:"device,omitempty"`
	// StorageClassName is the class the disk is published for.
	StorageClassName string `json:"storageClassName"`
	// VolumeMode is Filesystem or Block.
	VolumeMode corev1.PersistentVolumeMode `json:"volumeMode"`
	// DiskID is the disk's identity (the marker's ID, or a block device's
	// by-id/WWN digest); empty when the disk has none (foreign, unreadable).
	// +optional
	DiskID string `json:"diskID,omitempty"`
	// IdentitySource is what a block identity was derived from.
	// +optional
	IdentitySource string `json:"identitySource,omitempty"`
	// Source says how the disk was found: discovery or inventory.
	Source string `json:"source"`
}

// LocalDiskStatus is what the agent sees of the disk, and what the
// controller knows of its owner.
type LocalDiskStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// Reason is a CamelCase word for the phase (e.g. HoldsDataWithoutIdentity).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says what to do about it.
	// +optional
	Message string `json:"message,omitempty"`
	// CapacityBytes is the filesystem or device size; Capacity the same,
	// for people (e.g. 1788Gi).
	// +optional
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
	// +optional
	Capacity string `json:"capacity,omitempty"`
	// PersistentVolume is the disk's PV.
	// +optional
	PersistentVolume string `json:"persistentVolume,omitempty"`
	// Claim is the namespace/name of the claim bound to it.
	// +optional
	Claim string `json:"claim,omitempty"`
	// Since is when the phase (or reason) last changed.
	// +optional
	Since *metav1.Time `json:"since,omitempty"`
	// LastWipe is the last completed wipe.
	// +optional
	LastWipe *Wipe `json:"lastWipe,omitempty"`
	// Health is the agent's reading of the disk's health.
	// +optional
	Health *Health `json:"health,omitempty"`
	// Owner is whose data the disk holds, as the volume-controller
	// confirmed it in PD; written by the controller only.
	// +optional
	Owner *Owner `json:"owner,omitempty"`
	// NodeLost is set by the controller when the disk's node is dead by
	// its rules (deleted past the grace, out-of-service, NotReady past
	// the threshold); the agent there can no longer report.
	// +optional
	NodeLost *metav1.Time `json:"nodeLost,omitempty"`
}

// Wipe is one completed wipe.
type Wipe struct {
	// Method: contents, reformat, discard, zero, command.
	Method   string          `json:"method"`
	Duration metav1.Duration `json:"duration"`
	Time     metav1.Time     `json:"time"`
	// Files and Dirs removed (contents wipe).
	// +optional
	Files int64 `json:"files,omitempty"`
	// +optional
	Dirs int64 `json:"dirs,omitempty"`
}

// Health is the agent's reading of a disk's health.
type Health struct {
	// State: Healthy, Warning (capacity, inodes) or Failed.
	State string `json:"state"`
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string      `json:"message,omitempty"`
	Since   metav1.Time `json:"since"`
}

// Owner is the TiKV store or PD member whose data the disk holds.
type Owner struct {
	// Name is "store 7" or "member pd-2", for printing.
	Name      string `json:"name"`
	Component string `json:"component"`
	// +optional
	Cluster string `json:"cluster,omitempty"`
	// Pod is namespace/name of the pod that used the claim.
	// +optional
	Pod string `json:"pod,omitempty"`
	// Claim is namespace/name of the claim; ClaimUID the claim the record
	// is for.
	// +optional
	Claim    string `json:"claim,omitempty"`
	ClaimUID string `json:"claimUID"`
	// +optional
	StoreID uint64 `json:"storeID,omitempty"`
	// +optional
	Member string `json:"member,omitempty"`
	// MemberID is the PD member's member_id (a uint64, often above 2^63,
	// hence a string).
	// +optional
	MemberID string `json:"memberID,omitempty"`
	// PDClusterID is the PD cluster the owner was confirmed in (a uint64
	// that may exceed 2^53, hence a string).
	// +optional
	PDClusterID string `json:"pdClusterID,omitempty"`
	// State is the owner's state when last seen in PD, at Seen.
	// +optional
	State string `json:"state,omitempty"`
	// +optional
	Seen *metav1.Time `json:"seen,omitempty"`
	// Peers are the member IDs PD listed beside a PD member (strings, as
	// MemberID).
	// +optional
	Peers []string `json:"peers,omitempty"`
	// TiDBOperator is "v2" for a claim of a TiDB Operator v2 cluster.
	// +optional
	TiDBOperator string `json:"tidbOperator,omitempty"`
}

// LocalDiskList is a list of LocalDisks.
//
// +kubebuilder:object:root=true
type LocalDiskList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LocalDisk `json:"items"`
}
