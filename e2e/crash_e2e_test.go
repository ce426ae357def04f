//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Size of the data that makes a wipe slow enough to kill the agent in the
// middle of it: 200k empty files in 200 directories take the agent about a
// second to remove from a tmpfs on this machine. Progress is watched at
// the top level, where each directory that vanishes is 1000 files gone.
const (
	slowDirs        = 200
	slowFilesPerDir = 1000
)

// The agent is SIGKILLed while it wipes a released disk. The disk stays
// marked "wiping" and unpublished; the restarted agent finishes the wipe
// before the disk is ever published again — at no moment does a new PV
// exist for a disk that still holds data.
func TestAgentKilledDuringWipe_FinishesTheWipeBeforeThePVReturns(t *testing.T) {
	t.Parallel()
	env, nodes := startEnv(t, "node-a")
	ctx := t.Context()
	n := nodes["node-a"]
	// Empty files take no tmpfs blocks; 64m is plenty.
	disk, err := n.MountDisk("tidb-localpv-tikv", "disk0", "64m")
	require.NoError(t, err)
	require.NoError(t, n.StartAgent(ctx))
	waitAvailable(ctx, t, env, "node-a", 1)
	// The classes ship with reclaimPolicy Retain; the volume-controller sets
	// a claim's PV to Delete once it sees no TiKV or PD pod uses it.
	startPlainController(t, env)

	sts, err := env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, plainStatefulSet("crash", 1), metav1.CreateOptions{})
	require.NoError(t, err)
	placed := waitStatefulSetBound(ctx, t, env, sts, 1)[0]
	old := placed.PV
	id := old.Labels[provisioner.LabelDisk]
	made := time.Now()
	writeManyFiles(t, disk, slowDirs, slowFilesPerDir)
	t.Logf("wrote %d files into %s in %s", slowDirs*slowFilesPerDir, disk, time.Since(made).Round(time.Millisecond))

	waitReclaimDelete(ctx, t, env, old.Name)
	scaleStatefulSet(ctx, t, env, sts, 0, 1)
	deleteClaim(ctx, t, env, placed.Claim)

	// Kill once the wipe is certainly under way: the marker says so and at
	// least one top-level directory (1000 files) is gone.
	deadline := time.Now().Add(waitLong)
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	for {
		m, ok, err := discovery.ReadMarker(disk)
		require.NoError(t, err)
		require.True(t, ok, "the marker must never vanish")
		dirs := dbDirs(userContents(t, disk))
		if m.State == discovery.StateWiping {
			if dirs < slowDirs {
				break
			}
		} else {
			require.Equal(t, slowDirs, dirs, "files went before the disk was marked wiping")
		}
		require.True(t, time.Now().Before(deadline), "the agent never started wiping the released disk")
		<-poll.C
	}
	n.KillAgent()
	killed := time.Now()

	// Half-wiped, still marked wiping, and not published.
	dirsLeft := dbDirs(userContents(t, disk))
	t.Logf("agent killed with %d of %d top-level directories left", dirsLeft, slowDirs)
	require.NotZero(t, dirsLeft, "the wipe finished before the kill; make it slower (more files)")
	require.Less(t, dirsLeft, slowDirs, "nothing was wiped before the kill")
	require.Equal(t, discovery.StateWiping, readMarker(t, disk).State)
	pvs, err := pvsOfDisk(ctx, env, id)
	require.NoError(t, err)
	require.Len(t, pvs, 1, "only the released PV may exist: %s", describePVs(pvs))
	require.Equal(t, old.UID, pvs[0].UID)
	require.Equal(t, corev1.VolumeReleased, pvs[0].Status.Phase)

	restarted := time.Now()
	require.NoError(t, n.StartAgent(ctx))
	// Whenever a PV other than the released one exists for the disk, the
	// disk must already be empty and marked ready; poll until that PV is
	// Available, checking the invariant on every pass.
	deadline = time.Now().Add(waitLong)
	for {
		pvs, err := pvsOfDisk(ctx, env, id)
		require.NoError(t, err)
		var fresh *corev1.PersistentVolume
		for i, pv := range pvs {
			if pv.UID == old.UID {
				continue
			}
			contents := userContents(t, disk)
			require.Empty(t, contents, "PV %s (%s) exists for disk %s while it still holds %d entries", pv.Name, pv.Status.Phase, id, len(contents))
			require.Equal(t, discovery.StateReady, readMarker(t, disk).State, "PV %s exists while the disk is marked wiping", pv.Name)
			fresh = &pvs[i]
		}
		if fresh != nil && fresh.Status.Phase == corev1.VolumeAvailable {
			require.Len(t, pvs, 1, "the released PV must be gone once its disk is published again: %s", describePVs(pvs))
			t.Logf("agent restarted → new PV %s Available: %s (%s after the kill)", fresh.Name,
				time.Since(restarted).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
			break
		}
		require.True(t, time.Now().Before(deadline), "disk %s never came back after the restart (last: %s)", id, describePVs(pvs))
		<-poll.C
	}
	require.Empty(t, userContents(t, disk))
	require.Equal(t, id, readMarker(t, disk).ID, "the disk keeps its identity")
	if log := wipeLine(t, n.AgentLog()); log != "" {
		t.Logf("restarted agent: %s", log)
	}
}

// writeManyFiles makes dirs directories of files empty files each.
func writeManyFiles(t *testing.T, disk string, dirs, files int) {
	t.Helper()
	for d := range dirs {
		dir := filepath.Join(disk, fmt.Sprintf("db-%04d", d))
		require.NoError(t, os.Mkdir(dir, 0o755))
		for f := range files {
			fh, err := os.Create(filepath.Join(dir, fmt.Sprintf("%06d.sst", f)))
			require.NoError(t, err)
			require.NoError(t, fh.Close())
		}
	}
	require.NoError(t, os.WriteFile(filepath.Join(disk, "LOCK"), []byte("store 1"), 0o644))
}

// dbDirs counts the data directories writeManyFiles made that are left.
func dbDirs(names []string) int {
	n := 0
	for _, name := range names {
		if strings.HasPrefix(name, "db-") {
			n++
		}
	}
	return n
}

// wipeLine returns the agent log's "wiped disk" line, if any.
func wipeLine(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, `"wiped disk"`) {
			return l
		}
	}
	return ""
}
