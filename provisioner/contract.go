// Package provisioner holds the PersistentVolume contract shared by the node
// agent and the volume-controller (names, labels, annotations, how a disk
// renders as a PV), the crash-safe wipe, and the
// sig-storage-lib-external-provisioner Provisioner that wipes released
// volumes on its own node.
package provisioner

import (
	"fmt"
	"hash/fnv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Name is the provisioner name: the provisioned-by annotation of every PV we
// publish, and the name the library's ProvisionController runs under.
const Name = "tidb-localpv.io"

// Label and annotation keys of the PV contract. The volume-controller reads
// what the agent writes; neither shares code with the other beyond these.
const (
	// AnnProvisionedBy marks PVs whose deletion goes through our Delete.
	AnnProvisionedBy = "pv.kubernetes.io/provisioned-by"
	// LabelHostname is the well-known node label the scheduler matches.
	LabelHostname = "kubernetes.io/hostname"
	// LabelNode is the Node object's name (which may differ from its
	// hostname label); each agent watches only PVs carrying its own.
	LabelNode = "tidb-localpv.io/node"
	// LabelDisk is the disk's identity (see discovery.Marker, BlockIdentity).
	LabelDisk = "tidb-localpv.io/disk"
	// AnnDiskSource is what a block disk's identity was derived from
	// (by-id link, wwid, loop backing file).
	AnnDiskSource = "tidb-localpv.io/disk-source"
	// AnnDiskMissing is set on a bound PV whose disk the agent cannot find,
	// with the time it was first missed.
	AnnDiskMissing = "tidb-localpv.io/disk-missing"
)

// PVName is the deterministic, readable name of a disk's PV:
// tlpv-<node>-<disk>-<8 hex of the disk ID>. The digest keeps a replaced
// disk at the same path from reusing the old disk's PV name.
func PVName(node, disk, id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return fmt.Sprintf("tlpv-%s-%s-%08x", dnsPart(node, 100), dnsPart(disk, 100), h.Sum32())
}

// dnsPart lower-cases s and replaces what a DNS subdomain cannot hold.
func dnsPart(s string, max int) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	// Every dot-separated label must start and end with a letter or digit:
	// "disk..1" or "disk.-1" would make the PV name invalid. Names that were
	// valid already are left as they were.
	var parts []string
	for _, p := range strings.Split(b.String(), ".") {
		if p = strings.Trim(p, "-"); p != "" {
			parts = append(parts, p)
		}
	}
	out := strings.Join(parts, ".")
	if len(out) > max {
		out = strings.Trim(out[:max], "-.")
	}
	if out == "" {
		out = "x"
	}
	return out
}

// Ownership, written on bound PVs by the volume-controller so that it
// outlives the pod (DESIGN rule 6).
const (
	// LabelComponent is the owning pod's app.kubernetes.io/component (tikv, pd, …).
	LabelComponent = "tidb-localpv.io/component"
	// LabelCluster is the owning pod's app.kubernetes.io/instance.
	LabelCluster = "tidb-localpv.io/cluster"
	// AnnOwnerPod is the namespace/name of the pod that mounts the claim.
	AnnOwnerPod = "tidb-localpv.io/owner-pod"
	// AnnStoreID is the TiKV store ID that keeps its data on the disk.
	AnnStoreID = "tidb-localpv.io/store-id"
	// AnnPDMember is the PD member name that keeps its data on the disk.
	AnnPDMember = "tidb-localpv.io/pd-member"
	// AnnOwnerState is the owner's last state read from PD (Up, Offline,
	// Tombstone, Down, Disconnected, Removed, Unknown).
	AnnOwnerState = "tidb-localpv.io/owner-state"
	// AnnOwnerClaim is the UID of the claim the ownership was recorded for:
	// a PV rebound to another claim has a new owner to find.
	AnnOwnerClaim = "tidb-localpv.io/owner-claim"
	// AnnReleaseApproved is set by the volume-controller to the UID of the
	// claim whose data it has found no longer needed (store Tombstone,
	// member removed). The agent wipes an owned PV only with this approval
	// for the PV's current claim, so a claim deleted by hand while its
	// store is Up keeps its data.
	AnnReleaseApproved = "tidb-localpv.io/release-approved"
	// AnnReleaseReason says why the claim was released.
	AnnReleaseReason = "tidb-localpv.io/release-reason"
)

// Owned reports whether the volume-controller recorded a TiKV store or PD
// member as the owner of pv's current claim.
func Owned(pv *corev1.PersistentVolume) bool {
	ref := pv.Spec.ClaimRef
	if ref == nil || ref.UID == "" || pv.Annotations[AnnOwnerClaim] != string(ref.UID) {
		return false
	}
	return pv.Annotations[AnnStoreID] != "" || pv.Annotations[AnnPDMember] != ""
}

// ReleaseApproved reports whether the volume-controller approved wiping
// pv's current claim's data.
func ReleaseApproved(pv *corev1.PersistentVolume) bool {
	ref := pv.Spec.ClaimRef
	return ref != nil && ref.UID != "" && pv.Annotations[AnnReleaseApproved] == string(ref.UID)
}
