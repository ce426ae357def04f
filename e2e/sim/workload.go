package sim

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// TiKVStatefulSet is a TiKV-like StatefulSet <name>-tikv in namespace
// default: one tidb-localpv-tikv volume (claim template "tikv") per pod, pods
// labelled as tidb-operator labels TiKV.
func TiKVStatefulSet(name string, replicas int32) *appsv1.StatefulSet {
	lbl := map[string]string{"app.kubernetes.io/component": "tikv", "app.kubernetes.io/instance": name}
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-tikv", Namespace: "default"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(replicas),
			ServiceName:         name + "-tikv-peer",
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: "tikv", Image: "pingcap/tikv:v8.5.0",
						VolumeMounts: []corev1.VolumeMount{{Name: "tikv", MountPath: "/var/lib/tikv"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "tikv"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: ptr.To("tidb-localpv-tikv"),
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")},
					},
				},
			}},
		},
	}
}

// ClaimName is the PVC a StatefulSet made from claim template tmpl for its
// pod number i.
func ClaimName(tmpl, sts string, i int) string { return fmt.Sprintf("%s-%s-%d", tmpl, sts, i) }

// SetInventory replaces the inventory document (key disks.yaml) of the
// inventory ConfigMap, retrying on conflicts, and returns the updated object.
func (e *Env) SetInventory(ctx context.Context, doc string) (*corev1.ConfigMap, error) {
	var out *corev1.ConfigMap
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cms := e.Cluster.Client.CoreV1().ConfigMaps(Namespace)
		cm, err := cms.Get(ctx, InventoryName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[discovery.InventoryKey] = doc
		out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update inventory %s/%s: %w", Namespace, InventoryName, err)
	}
	return out, nil
}

// DisksTable runs `tidb-localpv disks` as an operator would, with the admin
// kubeconfig and any further arguments (-o wide), and returns its table.
func (e *Env) DisksTable(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.Binary, append([]string{"disks", "--kubeconfig", e.Cluster.AdminKubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("tidb-localpv disks: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
