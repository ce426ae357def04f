package provisioner

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

// agentDisk formats a loop device as the agent does, mounts it at
// <base>/tikv/disk0 and marks it as the agent's own filesystem.
func agentDisk(t testing.TB, h *hostdisk.Host, base string, sizeMiB int) (dev, disk string) {
	t.Helper()
	dev = hostdisk.Loop(t, h, sizeMiB)
	args := append([]string{"-q"}, MkfsArgs("ext4", dev, true)...)
	if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	disk = filepath.Join(base, "tikv", "disk0")
	if err := h.Mount(dev, disk, "ext4"); err != nil {
		t.Fatal(err)
	}
	m := discovery.Marker{ID: testID, State: discovery.StateReady, FormattedDevice: dev, FSType: "ext4", Created: time.Now().UTC()}
	if err := discovery.WriteMarker(disk, m); err != nil {
		t.Fatal(err)
	}
	return dev, disk
}

// hostWiper wipes real disks as the agent does.
func hostWiper(mode FSWipeMode) *Wiper {
	ex := utilexec.New()
	return &Wiper{
		Mounts:  discovery.ProcMountTable{},
		Mounter: &mount.SafeFormatAndMount{Interface: mount.NewWithoutSystemd(""), Exec: ex},
		Exec:    ex,
		FSMode:  mode,
	}
}

func fsUUID(t *testing.T, dev string) string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "UUID", dev).CombinedOutput()
	require.NoError(t, err, "blkid: %s", out)
	return strings.TrimSpace(string(out))
}

func mountSource(t *testing.T, dir string) string {
	t.Helper()
	ms, err := discovery.ProcMountTable{}.Mounts()
	require.NoError(t, err)
	return discovery.IndexMounts(ms)[dir].Source
}

// The marker lives on the consumer's root: a consumer can claim in it that
// the agent formatted the disk. Reformatting an administrator's filesystem
// would replace its mkfs options with ours.
func TestWipe_DoesNotReformatAFilesystemTheAgentDidNotMakeWhateverItsMarkerSays(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, h, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4")) // the administrator's, unlabelled
	disk := filepath.Join(base, "tikv", "disk0")
	require.NoError(t, h.Mount(dev, disk, "ext4"))
	forged := discovery.Marker{ID: testID, State: discovery.StateReady, FormattedDevice: dev, FSType: "ext4"}
	require.NoError(t, discovery.WriteMarker(disk, forged))
	write(t, filepath.Join(disk, "db", "000001.sst"))
	uuid := fsUUID(t, dev)

	d := fsDisk(disk)
	d.Device = dev
	res, err := hostWiper(FSWipeAuto).Wipe(t.Context(), d, testID)

	require.NoError(t, err)
	require.Equal(t, "contents", res.Method)
	require.Equal(t, uuid, fsUUID(t, dev), "the administrator's filesystem is kept")
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)
}

func TestWipe_RemovesTheContentsWhenAFileStaysOpenOnTheDisk(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	dev, disk := agentDisk(t, h, base, 64)
	write(t, filepath.Join(disk, "db", "000001.sst"))
	// Whoever holds it (a backup agent, a shell left in the directory)
	// makes the unmount fail with EBUSY.
	held, err := os.Open(filepath.Join(disk, "db", "000001.sst"))
	require.NoError(t, err)
	defer held.Close()

	d := fsDisk(disk)
	d.Device = dev
	res, err := hostWiper(FSWipeAuto).Wipe(t.Context(), d, testID)

	require.NoError(t, err, "the first try succeeds")
	require.Equal(t, "contents", res.Method)
	require.Equal(t, dev, mountSource(t, disk))
	require.Equal(t, discovery.StateReady, marker(t, disk).State)
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)
}

// A mount the agent cannot see — in a pod's mount namespace, or detached
// lazily with a file still open — keeps the device busy after the disk's
// own unmount; mkfs would refuse it ("apparently in use by the system").
func TestWipe_RemovesTheContentsWhenTheDeviceStaysBusyAfterTheUnmount(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	dev, disk := agentDisk(t, h, base, 64)
	write(t, filepath.Join(disk, "db", "000001.sst"))
	other := filepath.Join(base, "other")
	require.NoError(t, os.MkdirAll(other, 0o755))
	require.NoError(t, unix.Mount(dev, other, "ext4", 0, ""))
	held, err := os.Open(filepath.Join(other, "db", "000001.sst"))
	require.NoError(t, err)
	defer held.Close()
	require.NoError(t, unix.Unmount(other, unix.MNT_DETACH))
	require.Empty(t, mountSource(t, other), "gone from the mount table, still holding the device")

	d := fsDisk(disk)
	d.Device = dev
	res, err := hostWiper(FSWipeAuto).Wipe(t.Context(), d, testID)

	require.NoError(t, err, "the first try succeeds")
	require.Equal(t, "contents", res.Method)
	require.Equal(t, dev, mountSource(t, disk), "the disk is mounted again")
	require.Equal(t, testID, marker(t, disk).ID)
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)

	_, err = hostWiper(FSWipeReformat).Wipe(t.Context(), d, testID)
	require.ErrorIs(t, err, errStillInUse, "reformat mode says why instead of wiping otherwise")
	require.Equal(t, dev, mountSource(t, disk))
}

func TestWipe_ReformatsAJustWrittenTreeOnTheFirstTry(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	hostdisk.LockMountNamespaces(t) // another package's mount namespace would hold the device
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	dev, disk := agentDisk(t, h, base, 512)
	uuid := fsUUID(t, dev)
	// Written and not synced: the consumer just stopped, its dirty pages
	// are still in memory.
	for d := range 40 {
		for f := range 500 {
			write(t, filepath.Join(disk, fmt.Sprintf("db-%02d", d), fmt.Sprintf("%06d.sst", f)))
		}
	}

	d := fsDisk(disk)
	d.Device = dev
	res, err := hostWiper(FSWipeAuto).Wipe(t.Context(), d, testID)

	require.NoError(t, err, "the first try succeeds")
	require.Equal(t, "reformat", res.Method)
	t.Logf("reformatted a just-written tree of 20,000 files in %s", res.Duration)
	require.NotEqual(t, uuid, fsUUID(t, dev))
	require.Equal(t, dev, mountSource(t, disk))
	m := marker(t, disk)
	require.Equal(t, testID, m.ID)
	require.Equal(t, discovery.StateReady, m.State)
	require.Equal(t, dev, m.FormattedDevice)
	left, err := discovery.Contents(disk)
	require.NoError(t, err)
	require.Empty(t, left)
}

// udev probes a device right after its unmount and blkid readers open it for
// a moment: a reformat that gave up on the first busy answer would remove
// every file instead (the exclusive-root test saw this on CI).
func TestReformat_WaitsOutAHolderThatLetsGoOfTheDeviceSoon(t *testing.T) {
	hostdisk.RequireRoot(t, "hold a loop device exclusively")
	h := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, h, 16)

	brief, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	require.ErrorIs(t, deviceFree(dev), unix.EBUSY, "a held device is busy")
	go func() {
		time.Sleep(200 * time.Millisecond)
		unix.Close(brief)
	}()
	require.NoError(t, deviceSettles(t.Context(), dev), "a holder that lets go within the settle time is waited out")

	held, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(held)
	require.ErrorIs(t, deviceSettles(t.Context(), dev), unix.EBUSY, "a holder that stays is reported")
}
