package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/mount-utils"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Real faults on real loop devices, read through the agent's real
// detection path: the mount table, sysfs, statfs and the kernel log.

// faultWait bounds how long a fault may take to show; the health poll is
// seconds, the kernel log immediate.
const faultWait = 20 * time.Second

// newRootHarness is a harness on the real mount table, whose host disks
// are undone before its directories are removed.
func newRootHarness(t *testing.T) (*harness, *hostdisk.Host) {
	t.Helper()
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	return newHarness(t, harnessConfig{base: base, realMounts: true}), hd
}

// realDisk is a filesystem on a fresh loop device mounted as a disk of
// the harness's class.
type realDisk struct {
	dev, path, backing string
}

// mountRealDisk formats dev as fsType and mounts it at <root>/<name> with
// options (e.g. errors=remount-ro).
func mountRealDisk(t *testing.T, h *harness, hd *hostdisk.Host, dev, name, fsType, options string) realDisk {
	t.Helper()
	require.NoError(t, hostdisk.Mkfs(dev, fsType))
	path := filepath.Join(h.root, name)
	require.NoError(t, os.MkdirAll(path, 0o755))
	require.NoError(t, unix.Mount(dev, path, fsType, 0, options))
	hd.Track("unmount "+path, func() error { return hostdisk.Unmount(path) })
	return realDisk{dev: dev, path: path}
}

// followKernelLog feeds the real kernel log to the agent for the test.
func followKernelLog(t *testing.T, h *harness) {
	t.Helper()
	kl, err := discovery.OpenKmsg(discovery.DefaultKmsg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = kl.Follow(ctx, func(e discovery.KernelError) { h.agent.kernelError(ctx, e) })
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// publishAndBind publishes the harness's disks and binds the PV of the one
// at path, returning its name.
func publishAndBind(t *testing.T, h *harness, path string) string {
	t.Helper()
	h.mustReconcile()
	name := provisioner.PVName(testNode, filepath.Base(path), h.marker(path).ID)
	pv := h.apiPV(name)
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "tikv-db-tikv-0", UID: "claim-uid"}
	pv.Status.Phase = corev1.VolumeBound
	h.updatePV(pv)
	h.mustReconcile()
	return name
}

// eventuallyHealth reconciles until the PV's health reads state/reason.
func eventuallyHealth(t *testing.T, h *harness, pv string, state provisioner.HealthState, reason string) provisioner.Health {
	t.Helper()
	var got provisioner.Health
	require.Eventually(t, func() bool {
		_ = h.reconcile()
		obj, ok := h.apiPVs()[pv]
		if !ok {
			return false
		}
		got, _, _ = provisioner.HealthOf(obj)
		return got.State == state && got.Reason == reason
	}, faultWait, 100*time.Millisecond, "PV %s never read %s/%s; last %+v", pv, state, reason, got)
	return got
}

func abnormalEvents(h *harness, pv string) []recordedEvent {
	var out []recordedEvent
	for _, e := range h.events.withReason(provisioner.ReasonVolumeConditionAbnormal) {
		if p, ok := e.Object.(*corev1.PersistentVolume); ok && p.Name == pv {
			out = append(out, e)
		}
	}
	return out
}

func TestHealthRoot_AnExt4ErrorWithRemountReadOnlyIsReadOnlyWithErrorsAndRecoversAfterRepair(t *testing.T) {
	hostdisk.RequireRoot(t, "make, break and repair an ext4 filesystem on a loop device")
	h, hd := newRootHarness(t)
	d := mountRealDisk(t, h, hd, hostdisk.Loop(t, hd, 64), "disk0", "ext4", "errors=remount-ro")
	name := publishAndBind(t, h, d.path)
	followKernelLog(t, h)
	base := filepath.Base(d.dev)
	trigger := filepath.Join("/sys/fs/ext4", base, "trigger_fs_error")
	if _, err := os.Stat(trigger); err != nil {
		t.Skipf("this kernel has no %s: %v", trigger, err)
	}
	before, _, err := discovery.ReadExt4Errors("", base)
	require.NoError(t, err)
	require.Zero(t, before.Count)

	require.NoError(t, os.WriteFile(trigger, []byte("1"), 0o200))

	got := eventuallyHealth(t, h, name, provisioner.HealthFailed, HealthReadOnly)
	require.Contains(t, got.Message, "emergency_ro")
	require.Contains(t, got.Message, "errors in itself", "with errors: the kernel log and errors_count both say so")
	after, _, err := discovery.ReadExt4Errors("", base)
	require.NoError(t, err)
	require.EqualValues(t, 1, after.Count, "errors_count 0 → 1")
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, mi := range infos {
		if mi.MountPoint == d.path {
			require.Contains(t, mi.MountOptions, "rw", "the mount options keep rw")
			require.Contains(t, mi.SuperOptions, "emergency_ro", "the superblock options say read-only")
		}
	}
	require.NotEmpty(t, abnormalEvents(h, name))

	// The operator repairs it: unmount, e2fsck, mount read-write again.
	require.NoError(t, hostdisk.Unmount(d.path))
	out, err := exec.Command("e2fsck", "-fy", d.dev).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errorsAs(err, &exit) && exit.ExitCode() <= 1) {
		t.Fatalf("e2fsck: %v: %s", err, out)
	}
	require.NoError(t, unix.Mount(d.dev, d.path, "ext4", 0, "errors=remount-ro"))
	got = eventuallyHealth(t, h, name, provisioner.HealthHealthy, "")
	require.NotEmpty(t, h.events.withReason(provisioner.ReasonVolumeConditionNormal))
	oos, err := h.agent.outOfService(h.marker(d.path).ID)
	require.NoError(t, err)
	require.NotNil(t, oos, "recovered, but it stays out of the pool once released")
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

func TestHealthRoot_ALoopDeviceWhoseBackingTmpfsFillsUpHasIOErrors(t *testing.T) {
	hostdisk.RequireRoot(t, "fill the tmpfs under a loop device")
	h, hd := newRootHarness(t)
	small := filepath.Join(t.TempDir(), "small")
	hostdisk.Tmpfs(t, hd, small, "8m")
	dev, err := hd.AttachLoop(filepath.Join(small, "disk.img"), 64)
	require.NoError(t, err)
	d := mountRealDisk(t, h, hd, dev, "disk0", "ext4", "")
	name := publishAndBind(t, h, d.path)
	followKernelLog(t, h)

	fillAndSync(t, filepath.Join(d.path, "fill"), 20<<20)

	got := eventuallyHealth(t, h, name, provisioner.HealthFailed, HealthIOErrors)
	require.Contains(t, got.Message, filepath.Base(dev))
	require.NotEmpty(t, abnormalEvents(h, name))
}

// fillAndSync writes n bytes and syncs them; the write errors are the
// point, so they are not checked.
func fillAndSync(t testing.TB, path string, n int) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	buf := []byte(strings.Repeat("tidb-localpv", 1<<16/12+1))[:1<<16]
	for written := 0; written < n; written += len(buf) {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	_ = f.Sync()
	_ = f.Close()
}

func TestHealthRoot_ADeviceThatLosesItsMediumWhileMountedIsGone(t *testing.T) {
	hostdisk.RequireRoot(t, "shrink a mounted loop device to nothing")
	h, hd := newRootHarness(t)
	backing := filepath.Join(t.TempDir(), "disk.img")
	dev, err := hd.AttachLoop(backing, 64)
	require.NoError(t, err)
	d := mountRealDisk(t, h, hd, dev, "disk0", "ext4", "")
	name := publishAndBind(t, h, d.path)

	// The backing file is cut to nothing and the loop device told: what
	// a disk pulled out of its bay looks like to the filesystem on it.
	require.NoError(t, os.Truncate(backing, 0))
	out, err := exec.Command("losetup", "-c", dev).CombinedOutput()
	require.NoError(t, err, "%s", out)

	got := eventuallyHealth(t, h, name, provisioner.HealthFailed, HealthDeviceGone)
	require.Contains(t, got.Message, "size 0")
}

func TestHealthRoot_ALazilyUnmountedDiskOfABoundPVIsMissing(t *testing.T) {
	hostdisk.RequireRoot(t, "unmount a loop device lazily")
	h, hd := newRootHarness(t)
	d := mountRealDisk(t, h, hd, hostdisk.Loop(t, hd, 64), "disk0", "ext4", "")
	name := publishAndBind(t, h, d.path)

	require.NoError(t, unix.Unmount(d.path, unix.MNT_DETACH))

	eventuallyHealth(t, h, name, provisioner.HealthFailed, HealthDiskMissing)
	require.NotEmpty(t, abnormalEvents(h, name))
}

func TestHealthRoot_AnXFSShutdownIsSeen(t *testing.T) {
	hostdisk.RequireRoot(t, "shut down an xfs filesystem on a loop device")
	if _, err := exec.LookPath("xfs_io"); err != nil {
		t.Skip("xfs_io is not installed (xfsprogs)")
	}
	h, hd := newRootHarness(t)
	d := mountRealDisk(t, h, hd, hostdisk.Loop(t, hd, 320), "disk0", "xfs", "")
	name := publishAndBind(t, h, d.path)

	out, err := exec.Command("xfs_io", "-x", "-c", "shutdown", d.path).CombinedOutput()
	require.NoError(t, err, "%s", out)

	got := eventuallyHealth(t, h, name, provisioner.HealthFailed, HealthFilesystemShutdown)
	require.Contains(t, got.Message, "input/output error")
}
