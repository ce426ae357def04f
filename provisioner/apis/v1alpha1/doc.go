// Package v1alpha1 is the tidb-localpv.io/v1alpha1 API: LocalDisk, one
// cluster-scoped object per disk, the contract between the node agent
// (which owns its spec and most of its status) and the volume-controller
// (which owns status.owner and status.nodeLost).
//
// +kubebuilder:object:generate=true
// +groupName=tidb-localpv.io
package v1alpha1
