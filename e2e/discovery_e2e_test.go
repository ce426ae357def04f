//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A disk mounted while the cluster runs becomes an Available PV, and a pod
// that was Pending for want of a disk binds to it.
func TestMountedDisk_BecomesAvailableAndAPendingPodBindsToIt(t *testing.T) {
	env, nodes := startEnv(t, "node-a")
	ctx := context.Background()
	n := nodes["node-a"]
	require.NoError(t, n.StartAgent(ctx))

	sts, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, tikvStatefulSet("late", 1), metav1.CreateOptions{})
	require.NoError(t, err)
	pod := podName(sts.Name, 0)
	require.Eventually(t, func() bool {
		p, err := env.Cluster.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodPending
	}, 30*time.Second, 50*time.Millisecond)

	mounted := time.Now()
	path, err := n.MountDisk("tikv-ssd", "disk0", "32m")
	require.NoError(t, err)
	pv := waitPV(ctx, t, env, "node-a", path, corev1.VolumeAvailable, corev1.VolumeBound)
	published := time.Since(mounted)
	require.Equal(t, "node-a", pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0])

	require.Eventually(t, func() bool {
		p, err := env.Cluster.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
		return err == nil && p.Spec.NodeName == "node-a" && p.Status.Phase == corev1.PodRunning
	}, 60*time.Second, 20*time.Millisecond)
	bound := time.Since(mounted)
	t.Logf("mount appears → PV Available: %s; → pending pod bound and Running: %s", published.Round(time.Millisecond), bound.Round(time.Millisecond))
}
