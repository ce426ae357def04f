package provisioner

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// Node is what a PV needs to know of the node that holds its disk.
type Node struct {
	// Name of the Node object.
	Name string
	// Hostname is the node's kubernetes.io/hostname label, which the
	// scheduler matches and which need not equal Name.
	Hostname string
}

// Identity is a disk's identity as the PV records it.
type Identity struct {
	ID string
	// Source is what a block ID was derived from; empty for filesystems.
	Source string
}

// RenderPV renders the PV of a disk (DESIGN rule 4). reclaimPolicy and
// mountOptions come from the StorageClass, so operators choose Delete or
// Retain where they choose everything else about the class.
func RenderPV(d discovery.Disk, id Identity, node Node, class *storagev1.StorageClass) (*corev1.PersistentVolume, error) {
	if d.Capacity <= 0 {
		return nil, fmt.Errorf("disk %s reports no capacity", d.Path)
	}
	if node.Hostname == "" {
		node.Hostname = node.Name
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	mode := d.Mode
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name: PVName(node.Name, d.Name, id.ID),
			Labels: map[string]string{
				LabelHostname: node.Hostname,
				LabelNode:     node.Name,
				LabelDisk:     id.ID,
			},
			Annotations: map[string]string{AnnProvisionedBy: Name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity: corev1.ResourceList{
				corev1.ResourceStorage: *resource.NewQuantity(d.Capacity, resource.BinarySI),
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				Local: &corev1.LocalVolumeSource{Path: d.Path},
			},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              class.Name,
			MountOptions:                  class.MountOptions,
			VolumeMode:                    &mode,
			NodeAffinity: &corev1.VolumeNodeAffinity{
				Required: &corev1.NodeSelector{
					NodeSelectorTerms: []corev1.NodeSelectorTerm{{
						MatchExpressions: []corev1.NodeSelectorRequirement{{
							Key:      LabelHostname,
							Operator: corev1.NodeSelectorOpIn,
							Values:   []string{node.Hostname},
						}},
					}},
				},
			},
		},
	}
	if id.Source != "" {
		pv.Annotations[AnnDiskSource] = id.Source
	}
	return pv, nil
}

// IsOurs reports whether a PV was published by tidb-localpv.
func IsOurs(pv *corev1.PersistentVolume) bool {
	return pv.Annotations[AnnProvisionedBy] == Name && pv.Labels[LabelDisk] != "" && pv.Spec.Local != nil
}
