package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// hangBound is how long a call that blocks forever on the old code (a FIFO
// opened for reading waits for a writer) is given before the test fails
// instead of hanging with it.
const hangBound = 10 * time.Second

// hostileMarkers are what a pod using a disk can put in its marker's
// place, since it owns the disk's root, and what the refusal calls each.
var hostileMarkers = []struct {
	name  string
	plant func(t *testing.T, path string)
	says  string
}{
	{"a FIFO", func(t *testing.T, path string) {
		require.NoError(t, unix.Mkfifo(path, 0o644))
		// A reader stuck in open(2) on it is let go by a writer's open.
		t.Cleanup(func() {
			if fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				unix.Close(fd)
			}
		})
	}, "is a FIFO"},
	{"a socket", func(t *testing.T, path string) {
		// A socket node, as bind(2) leaves one; mknod makes it without
		// the 108-byte limit of socket addresses.
		require.NoError(t, unix.Mknod(path, unix.S_IFSOCK|0o644, 0))
	}, "is a socket"},
	{"a directory", func(t *testing.T, path string) {
		require.NoError(t, os.MkdirAll(filepath.Join(path, "inside"), 0o755))
	}, "is a directory"},
	{"a symbolic link to a valid marker", func(t *testing.T, path string) {
		real := filepath.Join(t.TempDir(), "marker")
		require.NoError(t, discovery.WriteMarker(filepath.Dir(real), discovery.Marker{ID: idA, State: discovery.StateReady}))
		require.NoError(t, os.Symlink(filepath.Join(filepath.Dir(real), discovery.MarkerName), path))
	}, "is a symbolic link"},
	{"a valid marker padded to a MiB", func(t *testing.T, path string) {
		marker := `{"version":1,"id":"` + idA + `","state":"ready"}`
		require.NoError(t, os.WriteFile(path, []byte(marker+strings.Repeat(" ", 1<<20)), 0o644))
	}, "bytes, far more than a marker"},
}

// within runs fn and fails the test if it has not returned in hangBound.
func within(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangBound):
		t.Fatalf("%s did not return within %s", what, hangBound)
		return nil
	}
}

func TestReconcile_PublishesTheOtherDisksWhenOneMarkerIsHostileAndKeepsItsPV(t *testing.T) {
	for _, c := range hostileMarkers {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			disk0 := filepath.Join(base, "tikv", "disk0")
			// The hostile disk's PV is Available: a disk thought missing
			// would lose it.
			pv0 := ourPV(t, disk0, idA, corev1.VolumeAvailable)
			h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv0}})
			h.newDisk("disk0")
			writeFile(t, filepath.Join(disk0, "db", "000001.sst"))
			c.plant(t, filepath.Join(disk0, discovery.MarkerName))
			disk1 := h.newDisk("disk1")
			h.sync()

			require.NoError(t, within(t, "a reconcile pass", func() error { return h.agent.reconcile(h.ctx) }))

			creates := h.createActions()
			require.Len(t, creates, 1, "the healthy disk is published")
			requirePublished(t, creates[0].GetObject().(*corev1.PersistentVolume), disk1, h.marker(disk1).ID)
			require.Contains(t, h.apiPVs(), pv0.Name, "the PV of the disk whose marker cannot be read stays")
			require.NotContains(t, h.apiPV(pv0.Name).Annotations, provisioner.AnnDiskMissing, "the disk is there, just unreadable")
			require.FileExists(t, filepath.Join(disk0, "db", "000001.sst"))
			bad := h.events.withReason(ReasonBadDisk)
			require.Len(t, bad, 1)
			require.Equal(t, corev1.EventTypeWarning, bad[0].Type)
			for _, says := range []string{disk0, c.says, "neither published nor wiped", provisioner.LabelDisk, `"state":"wiping"`} {
				require.Contains(t, bad[0].Message, says, "the warning says what is wrong and what to do")
			}
		})
	}
}

func TestRecycle_NeverTakesADiskWithAHostileMarkerForGone(t *testing.T) {
	for _, c := range hostileMarkers {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			disk := filepath.Join(base, "tikv", "disk0")
			pv := ourPV(t, disk, idA, corev1.VolumeReleased)
			h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
			h.newDisk("disk0")
			writeFile(t, filepath.Join(disk, "db", "000001.sst"))
			c.plant(t, filepath.Join(disk, discovery.MarkerName))
			h.sync()
			p := &provisioner.Provisioner{Node: testNode, Client: h.client, Recycler: h.agent}

			err := within(t, "Delete", func() error { return p.Delete(h.ctx, pv) })

			// "Not on this node" would let the PV go without a wipe, and the
			// next consumer of a disk with this PV's data would be anyone.
			require.Error(t, err)
			require.ErrorContains(t, err, c.says)
			require.Contains(t, h.apiPVs(), pv.Name, "the PV stays Released until the marker is fixed")
			require.FileExists(t, filepath.Join(disk, "db", "000001.sst"))
			require.Empty(t, h.events.withReason(ReasonDiskMissing))
		})
	}
}

// gaugeWith reads tidb_localpv_disks for a state.
func (h *harness) disksIn(state string) float64 {
	h.t.Helper()
	return h.metric("tidb_localpv_disks", "state", state)
}

// metric reads one labelled series (gauge or counter) from the registry, 0
// if absent.
func (h *harness) metric(name, label, value string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(h.t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if m.GetGauge() != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// hangingDisk makes the listing of one disk block until released, as a
// disk whose I/O hangs does; the others are listed for real.
type hangingDisk struct {
	path    string
	calls   atomic.Int32
	release chan struct{}
	once    sync.Once
}

func (d *hangingDisk) contents(root string) ([]string, error) {
	if root == d.path {
		d.calls.Add(1)
		<-d.release
	}
	return discovery.Contents(root)
}

func (d *hangingDisk) letGo() { d.once.Do(func() { close(d.release) }) }

func TestReconcile_SkipsADiskWhoseIOHangsAndPublishesTheOthers(t *testing.T) {
	base := t.TempDir()
	disk0 := filepath.Join(base, "tikv", "disk0")
	bound := ourPV(t, disk0, idA, corev1.VolumeBound)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{bound}})
	h.newDisk("disk0")
	writeMarker(t, disk0, idA, discovery.StateReady)
	hang := &hangingDisk{path: disk0, release: make(chan struct{})}
	t.Cleanup(hang.letGo)
	h.agent.io.contents = hang.contents
	h.agent.io.timeout = 200 * time.Millisecond
	disk1 := h.newDisk("disk1")

	require.NoError(t, within(t, "a reconcile pass", h.reconcile))

	creates := h.createActions()
	require.Len(t, creates, 1, "the other disk is published in the same pass")
	requirePublished(t, creates[0].GetObject().(*corev1.PersistentVolume), disk1, h.marker(disk1).ID)
	require.NotContains(t, h.apiPV(bound.Name).Annotations, provisioner.AnnDiskMissing, "a disk that does not answer is not a missing disk")
	stalled := h.events.withReason(ReasonDiskStalled)
	require.Len(t, stalled, 1)
	require.Equal(t, corev1.EventTypeWarning, stalled[0].Type)
	require.Contains(t, stalled[0].Message, disk0)
	require.Contains(t, stalled[0].Message, "not probed again until that call returns")
	require.Equal(t, 1.0, h.disksIn(stateStalled))
	require.Equal(t, 1.0, h.metric("tidb_localpv_errors_total", "op", "identify-timeout"))

	h.client.ClearActions()
	require.NoError(t, within(t, "a second pass", h.reconcile))

	require.Equal(t, int32(1), hang.calls.Load(), "the stuck probe is not started again while it runs")
	require.Len(t, h.events.withReason(ReasonDiskStalled), 1, "one standing problem, one event")
	require.Equal(t, 1.0, h.disksIn(stateStalled))
	require.Empty(t, h.writes())

	hang.letGo()
	require.Eventually(t, func() bool {
		h.agent.io.mu.Lock()
		defer h.agent.io.mu.Unlock()
		return len(h.agent.io.held) == 0
	}, eventuallyWait, eventuallyTick, "the stuck probe returned and let go of the disk")
	h.mustReconcile()

	require.Equal(t, 0.0, h.disksIn(stateStalled))
	require.Equal(t, 1.0, h.disksIn(stateBound), "the disk answers again and is adopted")
	require.Equal(t, 1.0, h.disksIn(stateAvailable))
}

func TestReconcile_LeavesADiskAWipeHoldsAloneEvenThroughItsDevice(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	h.mounts.remove(disk)
	h.mounts.add(disk, "/dev/fake-nvme0n1", "ext4")
	probed := atomic.Int32{}
	h.agent.io.contents = func(root string) ([]string, error) {
		probed.Add(1)
		return discovery.Contents(root)
	}
	// The wipe names the disk by another path (it may have moved) but the
	// same device.
	release, err := h.agent.io.claimForWipe(h.ctx, discovery.Disk{Path: "/elsewhere", Device: "/dev/fake-nvme0n1"})
	require.NoError(t, err)

	h.mustReconcile()

	require.Zero(t, probed.Load(), "nothing reads a disk a wipe holds")
	require.Empty(t, h.createActions())
	require.Equal(t, 1.0, h.disksIn(stateWiping))

	release()
	h.mustReconcile()
	require.Equal(t, int32(1), probed.Load())
	require.Len(t, h.createActions(), 1)
}
