package daemon

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
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

const (
	wipeHelperDisk = "TIDB_LOCALPV_WIPE_HELPER_DISK"
	wipeHelperID   = "TIDB_LOCALPV_WIPE_HELPER_ID"
	crashDirs      = 100
	crashFiles     = 200 // per directory: 20,000 files
)

// TestHelperProcessWipe is the agent that crashes: run as a child process
// by TestReconcile_FinishesAWipeKilledMidwayBeforePublishing, it wipes the
// disk it is given until it is killed.
func TestHelperProcessWipe(t *testing.T) {
	disk := os.Getenv(wipeHelperDisk)
	if disk == "" {
		t.Skip("the wiping child of TestReconcile_FinishesAWipeKilledMidwayBeforePublishing")
	}
	w := &provisioner.Wiper{Mounts: discovery.ProcMountTable{}, FSMode: provisioner.FSWipeContents}
	_, err := w.Wipe(context.Background(), discovery.Disk{Path: disk, Mode: corev1.PersistentVolumeFilesystem}, os.Getenv(wipeHelperID))
	require.NoError(t, err)
}

func TestReconcile_FinishesAWipeKilledMidwayBeforePublishing(t *testing.T) {
	hostdisk.RequireRoot(t, "mount a tmpfs disk")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	h := newHarness(t, harnessConfig{base: base, realMounts: true})
	disk := filepath.Join(h.root, "disk0")
	hostdisk.Tmpfs(t, hd, disk, "512m")
	writeMarker(t, disk, idA, discovery.StateReady)
	for d := range crashDirs {
		dir := filepath.Join(disk, fmt.Sprintf("db-%03d", d))
		require.NoError(t, os.Mkdir(dir, 0o755))
		for f := range crashFiles {
			require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%06d.sst", f)), []byte("sst"), 0o644))
		}
	}

	child := exec.Command(os.Args[0], "-test.run=^TestHelperProcessWipe$", "-test.v")
	child.Env = append(os.Environ(), wipeHelperDisk+"="+disk, wipeHelperID+"="+idA)
	var out strings.Builder
	child.Stdout, child.Stderr = &out, &out
	require.NoError(t, child.Start())
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()

	// Kill it as soon as the disk is marked wiping and a directory is gone:
	// the crash lands in the middle of removing files.
	require.Eventually(t, func() bool {
		m, ok, err := discovery.ReadMarker(disk)
		if err != nil || !ok || m.State != discovery.StateWiping {
			return false
		}
		left, err := discovery.Contents(disk)
		return err == nil && len(left) < crashDirs
	}, 30*time.Second, time.Millisecond, "the child never started wiping: %s", &out)
	require.NoError(t, child.Process.Kill())
	err := <-exited
	require.ErrorContains(t, err, "signal: killed", "the child finished before it could be killed; output: %s", &out)

	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.NotEmpty(t, left, "the crash left data behind")
	t.Logf("killed with %d of %d directories left", len(left), crashDirs)
	require.Equal(t, discovery.StateWiping, h.marker(disk).State, "the crash left the disk marked wiping")

	// The restarted agent: at the moment it creates a PV, the disk must
	// already be empty and marked ready.
	var atCreate []string
	h.client.PrependReactor("create", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		left, err := discovery.Contents(disk)
		require.NoError(t, err)
		m, _, err := discovery.ReadMarker(disk)
		require.NoError(t, err)
		atCreate = append(atCreate, fmt.Sprintf("%s left=%d", m.State, len(left)))
		return false, nil, nil
	})

	h.mustReconcile()
	require.Empty(t, h.createActions(), "a disk marked wiping is not published")
	require.Eventually(t, func() bool { return !h.agent.isBusy(idA) }, time.Minute, eventuallyTick)
	require.Len(t, h.events.withReason(ReasonWiped), 1)

	h.mustReconcile()
	require.Equal(t, []string{"ready left=0"}, atCreate)
	require.Len(t, h.createActions(), 1)
	requirePublished(t, h.createActions()[0].GetObject().(*corev1.PersistentVolume), disk, idA)
}
