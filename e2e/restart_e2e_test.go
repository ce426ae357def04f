//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

const reconcileCount = "tidb_localpv_discovery_duration_seconds_count"

// An agent that restarts — stopped, or killed — on a node whose disks are
// in use re-adopts them: no file is removed, no PV is created, deleted or
// even updated.
func TestAgentRestart_WithBoundPVs_ChangesNothing(t *testing.T) {
	t.Parallel()
	env, nodes := startEnv(t, "node-a")
	ctx := t.Context()
	n := nodes["node-a"]
	for i := range 3 {
		_, err := n.MountDisk("tidb-localpv-tikv", fmt.Sprintf("disk%d", i), "32m")
		require.NoError(t, err)
	}
	require.NoError(t, n.StartAgent(ctx))
	waitAvailable(ctx, t, env, "node-a", 3)
	sts, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, tikvStatefulSet("restart", 2), metav1.CreateOptions{})
	require.NoError(t, err)
	placed := waitStatefulSetBound(ctx, t, env, sts, 2)
	files := map[string][]string{}
	for _, p := range placed {
		disk := p.PV.Spec.Local.Path
		writeUserData(t, disk, 2, 10)
		files[disk] = tree(t, disk)
	}
	// Two bound disks with data and one free disk, all of which must stay
	// exactly as they are.
	before := snapshotPVs(ctx, t, env)
	require.Len(t, before, 3)

	for _, restart := range []struct {
		how  string
		stop func()
	}{
		{"stopped (SIGTERM)", n.StopAgent},
		{"killed (SIGKILL)", n.KillAgent},
	} {
		restart.stop()
		started := time.Now()
		require.NoError(t, n.StartAgent(ctx))
		require.NoError(t, n.WaitAgentReady(ctx, waitLong))
		ready := time.Since(started)
		// Ready means one full reconcile passed; two more, each triggered by
		// an inventory edit, give the agent every chance to act.
		for i := range 2 {
			waitReconcile(ctx, t, env, n, fmt.Sprintf("disks: []\n# %s, nudge %d\n", restart.how, i))
		}
		t.Logf("agent %s and restarted: ready after %s", restart.how, ready.Round(time.Millisecond))

		require.Equal(t, before, snapshotPVs(ctx, t, env), "PVs changed after the agent was %s", restart.how)
		for disk, want := range files {
			require.Equal(t, want, tree(t, disk), "files of %s changed after the agent was %s", disk, restart.how)
		}
		for state, want := range map[string]float64{"bound": 2, "available": 1} {
			got, err := n.Metric(ctx, fmt.Sprintf(`tidb_localpv_disks{class="tidb-localpv-tikv",state=%q}`, state))
			require.NoError(t, err)
			require.Equal(t, want, got, "%s disks the restarted agent reports", state)
		}
		log, err := os.ReadFile(n.AgentLog())
		require.NoError(t, err)
		for _, act := range []string{`"published disk"`, `"wiped disk"`, `"wiping disk before publishing it"`, `"new disk"`, `"removed PV of missing disk"`} {
			require.NotContains(t, string(log), act, "the agent %s and restarted must not act", restart.how)
		}
	}
}

// waitReconcile edits the inventory (a no-op for the disks) and waits until
// the agent has run at least one more reconcile pass.
func waitReconcile(ctx context.Context, t *testing.T, env *sim.Env, n *sim.Node, doc string) {
	t.Helper()
	before, err := n.Metric(ctx, reconcileCount)
	require.NoError(t, err)
	_, err = env.SetInventory(ctx, doc)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		now, err := n.Metric(ctx, reconcileCount)
		return err == nil && now > before
	}, waitLong, tick, "the agent of %s never reconciled after an inventory edit", n.Name)
}

// tree lists every path below dir with its size, marker included.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if info.IsDir() {
			rel += "/"
		}
		out = append(out, fmt.Sprintf("%s %d", rel, info.Size()))
		return nil
	})
	require.NoError(t, err)
	require.NotEmpty(t, out)
	return out
}
