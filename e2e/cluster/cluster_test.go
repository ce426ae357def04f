//go:build e2e

package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// testWriter sends progress lines to the test log as they come.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestClusterRunsAStatefulSetOnALocalPVOfAKwokNode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()

	start := time.Now()
	bins, err := EnsureBinaries(ctx, BuildOptions{Progress: testWriter{t}})
	require.NoError(t, err)
	t.Logf("EnsureBinaries took %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	c, err := Start(ctx, Config{WorkDir: t.TempDir(), Binaries: bins, Progress: testWriter{t}})
	require.NoError(t, err)
	t.Cleanup(c.Stop)
	t.Logf("Start took %s", time.Since(start).Round(time.Millisecond))

	node, err := c.AddNode(ctx, "kwok-node-0", map[string]string{"tidb-localpv/test": "yes"})
	require.NoError(t, err)
	require.Equal(t, "yes", node.Labels["tidb-localpv/test"])
	require.Equal(t, "kwok-node-0", node.Labels[corev1.LabelHostname])
	require.Equal(t, "32", node.Status.Allocatable.Cpu().String(), "kwok keeps the capacity we gave")

	createLocalStorage(ctx, t, c.Client, node.Name)
	createStatefulSet(ctx, t, c.Client)

	pvc := "data-web-0" // <template>-<statefulset>-<ordinal>
	require.Eventually(t, func() bool {
		pod, err := c.Client.CoreV1().Pods("default").Get(ctx, "web-0", metav1.GetOptions{})
		return err == nil && pod.Spec.NodeName == node.Name && pod.Status.Phase == corev1.PodRunning
	}, 2*time.Minute, 200*time.Millisecond, "pod web-0 should run on %s", node.Name)
	claim, err := c.Client.CoreV1().PersistentVolumeClaims("default").Get(ctx, pvc, metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, corev1.ClaimBound, claim.Status.Phase)
	require.Equal(t, "local-pv-0", claim.Spec.VolumeName)

	out, err := c.Kubectl(ctx, "get", "pods", "-o", "wide")
	require.NoError(t, err)
	require.Contains(t, string(out), "web-0")

	pids := c.pids()
	require.Len(t, pids, 5)
	start = time.Now()
	c.Stop()
	t.Logf("Stop took %s", time.Since(start).Round(time.Millisecond))
	c.Stop() // idempotent
	for _, pid := range pids {
		require.True(t, groupGone(pid), "process group %d outlived Stop", pid)
	}
	require.Empty(t, processesIn(t, c.WorkDir))
}

func TestClusterStartFailsWithTheLogOfAComponentThatExits(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	bins, err := EnsureBinaries(ctx, BuildOptions{Progress: testWriter{t}})
	require.NoError(t, err)
	workDir := t.TempDir()

	_, err = Start(ctx, Config{WorkDir: workDir, Binaries: bins, SchedulerFlags: []string{"--no-such-flag"}})
	require.ErrorContains(t, err, "kube-scheduler exit status 1")
	require.ErrorContains(t, err, "unknown flag: --no-such-flag")
	require.Empty(t, processesIn(t, workDir), "a failed Start stops what it started")

	_, err = Start(ctx, Config{WorkDir: workDir, Binaries: bins})
	require.ErrorContains(t, err, "already holds a cluster")
}

func TestClusterServiceAccountKubeconfigHasOnlyThatAccountsRights(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	bins, err := EnsureBinaries(ctx, BuildOptions{Progress: testWriter{t}})
	require.NoError(t, err)
	c, err := Start(ctx, Config{WorkDir: t.TempDir(), Binaries: bins, Progress: testWriter{t}})
	require.NoError(t, err)
	t.Cleanup(c.Stop)

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent"}}
	_, err = c.Client.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{})
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "agent.kubeconfig")
	require.NoError(t, c.ServiceAccountKubeconfig(ctx, "default", "agent", path))

	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	require.NoError(t, err)
	agent, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)

	// Authenticated (a bad token would be 401) but not authorized.
	_, err = agent.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.ErrorContains(t, err, `"system:serviceaccount:default:agent" cannot list resource "nodes"`)
}

// processesIn lists the live processes whose command line mentions dir:
// every component of a cluster names its work dir in a flag.
func processesIn(t *testing.T, dir string) []string {
	t.Helper()
	matches, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	var found []string
	for _, m := range matches {
		cmdline, err := os.ReadFile(m)
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue // gone meanwhile, or not ours
		}
		stat, err := os.ReadFile(filepath.Join(filepath.Dir(m), "stat"))
		if err == nil && strings.Contains(string(stat), ") Z ") {
			continue // a zombie is dead, merely not yet reaped by its new parent
		}
		found = append(found, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return found
}

func createLocalStorage(ctx context.Context, t *testing.T, client kubernetes.Interface, nodeName string) {
	t.Helper()
	wait := storagev1.VolumeBindingWaitForFirstConsumer
	sc := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: "local"},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: &wait,
	}
	_, err := client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{})
	require.NoError(t, err)

	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "local-pv-0"},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "local",
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				Local: &corev1.LocalVolumeSource{Path: "/tmp/x"},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName},
				}}}},
			}},
		},
	}
	_, err = client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	require.NoError(t, err)
}

func createStatefulSet(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	t.Helper()
	labels := map[string]string{"app": "web"}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr.To[int32](1),
			ServiceName: "web",
			Selector:    &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:         "main",
					Image:        "busybox",
					VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
				}}},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: ptr.To("local"),
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
					},
				},
			}},
		},
	}
	_, err := client.AppsV1().StatefulSets("default").Create(ctx, sts, metav1.CreateOptions{})
	require.NoError(t, err)
}
