package daemon

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

// raceRounds is how many recycles race the inventory step; the race it
// guards against showed up in 2 of 10 releases on a real node.
const raceRounds = 15

// TestRecycle_ReformatOwnsItsDeviceWhileTheInventoryStepRuns drives the
// inventory step (a reconcile pass, as the mount watcher triggers on every
// unmount) in a tight loop while released disks are reformatted: every
// reformat must succeed on the first try, and the disk keep its identity.
func TestRecycle_ReformatOwnsItsDeviceWhileTheInventoryStepRuns(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 64)
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{deviceEntry(dev, "  format: true\n")}})
	target := filepath.Join(h.root, "d0")
	hd.Track("unmount "+target, func() error { return hostdisk.Unmount(target) })
	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
	pv := h.createActions()[0].GetObject().(*corev1.PersistentVolume)
	id := h.marker(target).ID

	for round := range raceRounds {
		for f := range 50 {
			writeFile(t, filepath.Join(target, "db", fmt.Sprintf("%04d.sst", f)))
		}
		released := h.release(pv.Name)
		uuid := blkid(t, dev)["UUID"]

		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		passes := 0
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Errors are expected while the disk is mid-wipe; what
				// matters is what the pass does to the device.
				_ = h.agent.reconcile(h.ctx)
				passes++
			}
		}()
		err := h.agent.Recycle(h.ctx, released)
		close(stop)
		wg.Wait()

		require.NoError(t, err, "round %d: the reformat failed on its first try (%d inventory passes raced it)", round, passes)
		require.Equal(t, dev, mountedFrom(t, target), "round %d", round)
		require.Equal(t, id, h.marker(target).ID, "round %d: the disk keeps its identity", round)
		require.NotEqual(t, uuid, blkid(t, dev)["UUID"], "round %d: reformatted", round)
		wiped := h.events.withReason(ReasonWiped)
		require.Len(t, wiped, round+1)
		require.Contains(t, wiped[round].Message, "wiped by reformat", "round %d", round)
		require.Empty(t, h.events.withReason(ReasonPrepared)[1:], "round %d: the inventory step never formatted or mounted the device again", round)
	}
}
