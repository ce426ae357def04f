//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

// A scenario that fails half-way returns straight into the teardown with
// everything running: agents, pods on local PVs, tmpfs disks, a loop device
// the agent itself formatted and mounted (which the harness never tracked).
// Close alone must leave no mount, loop device or process behind.
func TestTeardown_AfterAFailingScenario_LeavesNothing(t *testing.T) {
	t.Parallel()
	hostdisk.RequireRoot(t, "mount tmpfs disks and attach loop devices for the simulated nodes")
	takeScenarioSlot(t)
	root, err := sim.FindRepoRoot()
	require.NoError(t, err)
	work, err := os.MkdirTemp("", "tlpv-e2e-teardown-")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	env, err := sim.Start(ctx, sim.Options{RepoRoot: root, WorkDir: work, Progress: testLog{t}, Binary: tidbLocalPV(t)})
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed { // the test failed before its own Close
			dumpLogs(t, work)
			require.NoError(t, env.Close())
		}
		_ = os.RemoveAll(work)
	})

	nodes := map[string]*sim.Node{}
	for _, name := range []string{"node-a", "node-b"} {
		n, err := env.AddNode(ctx, name)
		nodes[name] = n
		require.NoError(t, err)
		for i := range 2 {
			_, err := n.MountDisk("tidb-localpv-tikv", fmt.Sprintf("disk%d", i), "16m")
			require.NoError(t, err)
		}
		require.NoError(t, n.StartAgent(ctx))
		require.NoError(t, n.WaitAgentReady(ctx, waitLong))
	}
	a := env.Cluster.Client
	dev, err := env.Host.AttachLoop(filepath.Join(work, "node-a-nvme0.img"), 32)
	require.NoError(t, err)
	_, err = env.SetInventory(ctx, fmt.Sprintf("disks:\n- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  format: true\n", dev))
	require.NoError(t, err)
	target := filepath.Join(nodes["node-a"].ClassDir("tidb-localpv-tikv"), filepath.Base(dev))
	waitPV(ctx, t, env, "node-a", target, corev1.VolumeAvailable)
	require.Equal(t, dev, mountSource(t, target), "the agent mounted the inventory device")

	sts, err := a.AppsV1().StatefulSets("default").Create(ctx, tikvStatefulSet("teardown", 3), metav1.CreateOptions{})
	require.NoError(t, err)
	waitStatefulSetBound(ctx, t, env, sts, 3)
	before, err := sim.Stragglers(work)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(before), 7, "the scan must see the running env (etcd, apiserver, controller-manager, scheduler, kwok, 2 agents): %v", before)
	t.Logf("%d processes of the env running before Close", len(before))
	// The scan finds a process nobody tracks, just by its command line.
	stray := exec.Command("tail", "-f", filepath.Join(work, "agent.kubeconfig"))
	require.NoError(t, stray.Start())
	found, err := sim.Stragglers(work)
	require.NoError(t, err)
	require.Contains(t, strings.Join(found, "\n"), fmt.Sprintf("%d: tail -f %s", stray.Process.Pid, work))
	require.NoError(t, stray.Process.Kill())
	_ = stray.Wait()

	started := time.Now()
	closed = true
	require.NoError(t, env.Close(), "Close must report nothing left behind")
	t.Logf("Close with everything running took %s", time.Since(started).Round(time.Millisecond))

	mounts, loops, err := hostdisk.WaitLeftovers(work)
	require.NoError(t, err)
	require.Empty(t, mounts, "mounts left below %s", work)
	require.Empty(t, loops, "loop devices left backed by files in %s", work)
	left, err := sim.Stragglers(work)
	require.NoError(t, err)
	require.Empty(t, left, "processes left that name %s", work)
}
