package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilexec "k8s.io/utils/exec"

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
	hostdisk.LockMountNamespaces(t) // another package's mount namespace would hold the device
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

// stallingExec runs real commands, except that blkid on one device waits
// until a flag file exists, as blkid on a device whose I/O hangs does.
type stallingExec struct {
	utilexec.Interface
	device string
	flag   string
	calls  atomic.Int32
}

func (e *stallingExec) CommandContext(ctx context.Context, name string, args ...string) utilexec.Cmd {
	if name == "blkid" && slices.Contains(args, e.device) {
		e.calls.Add(1)
		script := fmt.Sprintf(`while [ ! -e %q ]; do sleep 0.05; done; exec blkid "$@"`, e.flag)
		return e.Interface.CommandContext(ctx, "sh", append([]string{"-c", script, "sh"}, args...)...)
	}
	return e.Interface.CommandContext(ctx, name, args...)
}

func TestReconcile_PublishesTheOtherDisksWhileTheInventoryStepWaitsOnAStuckDevice(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 64)
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{deviceEntry(dev, "  format: true\n")}})
	target := filepath.Join(h.root, "d0")
	hd.Track("unmount "+target, func() error { return hostdisk.Unmount(target) })
	other := filepath.Join(h.root, "other")
	hostdisk.Tmpfs(t, hd, other, "16m")
	stall := &stallingExec{Interface: utilexec.New(), device: dev, flag: filepath.Join(base, "go-on")}
	t.Cleanup(func() { _ = os.WriteFile(stall.flag, nil, 0o600) })
	h.agent.deps.Exec = stall
	h.agent.io.timeout = 300 * time.Millisecond

	require.NoError(t, within(t, "a reconcile pass", h.reconcile))

	require.Len(t, h.createActions(), 1, "the other disk is published while the device is stuck")
	requirePublished(t, h.createActions()[0].GetObject().(*corev1.PersistentVolume), other, h.marker(other).ID)
	stuck := h.events.withReason(ReasonInvalidEntry)
	require.Len(t, stuck, 1)
	require.Contains(t, stuck[0].Message, "preparing "+dev+" has not finished within")

	require.NoError(t, within(t, "a second pass", h.reconcile))
	require.Equal(t, int32(1), stall.calls.Load(), "the stuck step is not started again while it runs")
	require.Contains(t, h.events.withReason(ReasonInvalidEntry)[1].Message, "has not returned")

	require.NoError(t, os.WriteFile(stall.flag, nil, 0o600))
	require.Eventually(t, func() bool { return h.agent.queue.Len() > 0 }, eventuallyWait, eventuallyTick,
		"the step, finishing after its pass, asks for another")
	h.client.ClearActions()
	h.mustReconcile()

	require.Equal(t, dev, mountedFrom(t, target))
	require.Len(t, h.createActions(), 1, "the device is formatted and published once it answers")
	requirePublished(t, h.createActions()[0].GetObject().(*corev1.PersistentVolume), target, h.marker(target).ID)
}
