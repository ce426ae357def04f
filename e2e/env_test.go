//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// testLog lets progress lines reach `go test -v` as they happen.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startEnv brings up a control plane with the manifests applied and the
// named nodes, each running our agent. Everything is torn down — and checked
// for leftovers — when the test ends, pass or fail.
func startEnv(t *testing.T, nodes ...string) (*sim.Env, map[string]*sim.Node) {
	t.Helper()
	hostdisk.RequireRoot(t, "mount tmpfs disks and attach loop devices for the simulated nodes")
	root, err := sim.FindRepoRoot()
	require.NoError(t, err)
	work, err := os.MkdirTemp("", "tlpv-e2e-")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	start := time.Now()
	env, err := sim.Start(ctx, sim.Options{RepoRoot: root, WorkDir: work, Progress: testLog{t}, ExtraAgentArgs: []string{"-v=2"}})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, work)
		}
		require.NoError(t, env.Close(), "teardown must leave nothing behind")
		_ = os.RemoveAll(work)
	})
	out := map[string]*sim.Node{}
	for _, name := range nodes {
		n, err := env.AddNode(ctx, name)
		require.NoError(t, err)
		out[name] = n
	}
	t.Logf("environment with %d nodes ready in %s", len(nodes), time.Since(start).Round(time.Millisecond))
	return env, out
}

func dumpLogs(t *testing.T, work string) {
	logs, _ := filepath.Glob(filepath.Join(work, "logs", "agent-*.log"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		lines := strings.Split(string(data), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("---- %s ----\n%s", filepath.Base(l), strings.Join(lines, "\n"))
	}
}

// pvsOf lists our PVs on a node.
func pvsOf(ctx context.Context, t *testing.T, env *sim.Env, node string) []corev1.PersistentVolume {
	t.Helper()
	list, err := env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{provisioner.LabelNode: node}.String(),
	})
	require.NoError(t, err)
	return list.Items
}

// waitPV waits for the PV of the disk at path and returns it.
// Several phases may be given: a pending pod can bind an Available PV
// faster than the test polls.
func waitPV(ctx context.Context, t *testing.T, env *sim.Env, node, path string, phases ...corev1.PersistentVolumePhase) corev1.PersistentVolume {
	t.Helper()
	var got corev1.PersistentVolume
	require.Eventually(t, func() bool {
		for _, pv := range pvsOf(ctx, t, env, node) {
			if pv.Spec.Local.Path == path && slices.Contains(phases, pv.Status.Phase) && pv.DeletionTimestamp == nil {
				got = pv
				return true
			}
		}
		return false
	}, 60*time.Second, 20*time.Millisecond, "PV for %s on %s never became %v", path, node, phases)
	return got
}

// tikvStatefulSet is a TiKV-like StatefulSet: one tikv-ssd volume per pod.
func tikvStatefulSet(name string, replicas int32) *appsv1.StatefulSet {
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
					StorageClassName: ptr.To("tikv-ssd"),
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")},
					},
				},
			}},
		},
	}
}

func podName(sts string, i int) string { return fmt.Sprintf("%s-%d", sts, i) }
