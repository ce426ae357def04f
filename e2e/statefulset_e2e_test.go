//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A 3-replica TiKV StatefulSet lands only where free disks are: each pod
// runs on the node of the PV its claim is bound to.
func TestStatefulSet_ThreeTiKVPodsLandWhereFreeDisksAre(t *testing.T) {
	t.Parallel()
	// The card's version: every node has disks, so every node may host
	// pods; what matters is that each pod sits on its PV's node.
	t.Run("three nodes with two disks each", func(t *testing.T) {
		runTiKVPlacement(t, map[string]int{"node-a": 2, "node-b": 2, "node-c": 2})
	})
	// The scheduling is meaningful only if a node without disks exists:
	// node-c offers CPU and memory but no disk, so no pod may go there,
	// although three pods on two nodes is not what the scheduler would do
	// for spreading alone.
	t.Run("node-c has no disk", func(t *testing.T) {
		placed := runTiKVPlacement(t, map[string]int{"node-a": 2, "node-b": 2, "node-c": 0})
		for _, p := range placed {
			require.NotEqual(t, "node-c", p.Pod.Spec.NodeName, "pod %s was scheduled to node-c, which has no disk", p.Pod.Name)
		}
	})
}

func runTiKVPlacement(t *testing.T, disks map[string]int) []placement {
	names := keys(disks)
	env, nodes := startEnv(t, names...)
	ctx := t.Context()
	for _, name := range names {
		n := nodes[name]
		for i := range disks[name] {
			_, err := n.MountDisk("tidb-localpv-tikv", fmt.Sprintf("disk%d", i), "32m")
			require.NoError(t, err)
		}
		require.NoError(t, n.StartAgent(ctx))
	}
	// Publish first: a pod that fails scheduling before the PVs exist only
	// retries after the scheduler's unschedulable flush.
	for _, name := range names {
		waitAvailable(ctx, t, env, name, disks[name])
	}

	created := time.Now()
	sts, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, tikvStatefulSet("basic", 3), metav1.CreateOptions{})
	require.NoError(t, err)
	placed := waitStatefulSetBound(ctx, t, env, sts, 3)
	t.Logf("StatefulSet created → 3 pods Running on Bound claims: %s", time.Since(created).Round(time.Millisecond))
	requirePodsOnTheirPVsNode(t, placed)

	// Every pod's node has a disk; the free disks left are exactly the
	// ones not taken.
	perNode := map[string]int{}
	for _, p := range placed {
		perNode[p.Pod.Spec.NodeName]++
		t.Logf("%s → %s on %s (%s)", p.Pod.Name, p.PV.Name, p.Pod.Spec.NodeName, p.PV.Spec.Local.Path)
	}
	for node, used := range perNode {
		require.LessOrEqual(t, used, disks[node], "node %s hosts %d pods but has %d disks", node, used, disks[node])
		free := 0
		for _, pv := range pvsOf(ctx, t, env, node) {
			if pv.Status.Phase == corev1.VolumeAvailable {
				free++
			}
		}
		require.Equal(t, disks[node]-used, free, "free disks left on %s", node)
	}
	return placed
}
