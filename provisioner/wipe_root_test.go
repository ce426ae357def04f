package provisioner

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

func TestWipe_RemovesReadOnlyDirectoriesAndUnreadableFiles(t *testing.T) {
	hostdisk.RequireRoot(t, "remove entries of read-only directories, as the agent (root) does")
	root := newDisk(t, testID)
	write(t, filepath.Join(root, "ro", "inner", "file"))
	write(t, filepath.Join(root, "ro", "file"))
	require.NoError(t, os.WriteFile(filepath.Join(root, "ro", "unreadable"), []byte("x"), 0o000))
	require.NoError(t, os.Chmod(filepath.Join(root, "ro", "inner"), 0o500))
	require.NoError(t, os.Chmod(filepath.Join(root, "ro"), 0o500))
	require.NoError(t, os.WriteFile(filepath.Join(root, "locked"), []byte("x"), 0o000))

	_, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
}

// realDisk mounts a tmpfs at <base>/tikv/disk0 and marks it with testID.
// base must come from t.TempDir before hostdisk.ForTest, so the mounts go
// before the directory is removed.
func realDisk(t *testing.T, h *hostdisk.Host, base string) string {
	t.Helper()
	disk := filepath.Join(base, "tikv", "disk0")
	hostdisk.Tmpfs(t, h, disk, "64m")
	require.NoError(t, discovery.WriteMarker(disk, discovery.Marker{ID: testID, State: discovery.StateReady}))
	return disk
}

func bindMount(t *testing.T, h *hostdisk.Host, src, dst string) {
	t.Helper()
	require.NoError(t, unix.Mount(src, dst, "", unix.MS_BIND, ""))
	h.Track("unmount "+dst, func() error { return hostdisk.Unmount(dst) })
}

func TestWipe_NeverCrossesIntoANestedMountOrFollowsALinkOut(t *testing.T) {
	hostdisk.RequireRoot(t, "mount tmpfs disks")
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	disk := realDisk(t, h, base)

	nested := filepath.Join(disk, "data", "mnt")
	hostdisk.Tmpfs(t, h, nested, "16m")
	write(t, filepath.Join(nested, "tikv", "000001.sst"))
	write(t, filepath.Join(nested, "LOCK"))

	outside := filepath.Join(base, "outside")
	write(t, filepath.Join(outside, "precious"))
	write(t, filepath.Join(outside, "sub", "precious"))
	require.NoError(t, os.Symlink(outside, filepath.Join(disk, "link-out")))
	require.NoError(t, os.Symlink(filepath.Join(outside, "precious"), filepath.Join(disk, "data", "file-link-out")))

	bound := filepath.Join(base, "bound-file")
	write(t, bound)
	write(t, filepath.Join(disk, "bind-target"))
	bindMount(t, h, bound, filepath.Join(disk, "bind-target"))

	write(t, filepath.Join(disk, "db", "000001.sst"))
	write(t, filepath.Join(disk, "data", "sibling"))
	nestedBefore, outsideBefore := snapshot(t, nested), snapshot(t, outside)
	w := &Wiper{Mounts: discovery.ProcMountTable{}, FSMode: FSWipeAuto}

	_, err := w.Wipe(context.Background(), fsDisk(disk), testID)

	require.ErrorIs(t, err, ErrNestedMount)
	require.ErrorContains(t, err, nested)
	require.ErrorContains(t, err, filepath.Join(disk, "bind-target"))
	require.Equal(t, nestedBefore, snapshot(t, nested), "the nested mount and its files are untouched")
	require.Equal(t, outsideBefore, snapshot(t, outside), "what the links pointed at is untouched")
	require.Equal(t, []string{discovery.MarkerName, "bind-target", "data/", "data/mnt/", "data/mnt/LOCK", "data/mnt/tikv/", "data/mnt/tikv/000001.sst"}, tree(t, disk))
	require.Equal(t, discovery.StateWiping, marker(t, disk).State, "not clean, so not publishable")

	require.NoError(t, hostdisk.Unmount(nested))
	require.NoError(t, hostdisk.Unmount(filepath.Join(disk, "bind-target")))
	_, err = w.Wipe(context.Background(), fsDisk(disk), testID)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, disk))
	require.Equal(t, discovery.StateReady, marker(t, disk).State)
	require.Equal(t, outsideBefore, snapshot(t, outside))
	data, err := os.ReadFile(bound)
	require.NoError(t, err)
	require.Equal(t, "data of bound-file", string(data))
}

// TestWipe_StopsAtAnotherFilesystemEvenIfTheMountTableMissesIt: the mount
// table read before the wipe can be stale (a mount made mid-wipe); the walk
// also refuses to enter a directory on another device.
func TestWipe_StopsAtAnotherFilesystemEvenIfTheMountTableMissesIt(t *testing.T) {
	hostdisk.RequireRoot(t, "mount tmpfs disks")
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	disk := realDisk(t, h, base)
	nested := filepath.Join(disk, "late-mount")
	hostdisk.Tmpfs(t, h, nested, "16m")
	write(t, filepath.Join(nested, "file"))
	write(t, filepath.Join(disk, "file"))

	_, err := contentsWiper().Wipe(context.Background(), fsDisk(disk), testID)

	require.ErrorIs(t, err, ErrNestedMount)
	require.Equal(t, []string{discovery.MarkerName, "late-mount/", "late-mount/file"}, tree(t, disk))
	require.Equal(t, discovery.StateWiping, marker(t, disk).State)
}

// hookedExec runs real commands, letting a test look at (or replace) each
// one before it runs.
type hookedExec struct {
	utilexec.Interface
	mu   sync.Mutex
	hook func(name string, args []string) (string, []string)
}

func (e *hookedExec) CommandContext(ctx context.Context, name string, args ...string) utilexec.Cmd {
	e.mu.Lock()
	if e.hook != nil {
		name, args = e.hook(name, args)
	}
	e.mu.Unlock()
	return e.Interface.CommandContext(ctx, name, args...)
}

func blockWiper(t *testing.T, ex utilexec.Interface) *Wiper {
	return &Wiper{
		Mounter:  &mount.SafeFormatAndMount{Interface: mount.NewWithoutSystemd(""), Exec: ex},
		Exec:     ex,
		StateDir: t.TempDir(),
	}
}

// signatureOf is what blkid's low-level probe finds on dev, "" for nothing.
func signatureOf(t *testing.T, dev string) string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", dev).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return ""
	}
	require.NoError(t, err, "blkid: %s", out)
	return strings.TrimSpace(string(out))
}

const blockID = "blk-0123456789abcdef01234567"

func blockDisk(dev string) discovery.Disk {
	return discovery.Disk{Class: "tikv-raw", Name: filepath.Base(dev), Path: dev, Mode: corev1.PersistentVolumeBlock, Device: dev, Capacity: 64 << 20}
}

func TestWipe_DiscardsABlockDiskAndKeepsAWipeRecordOnlyWhileItRuns(t *testing.T) {
	hostdisk.RequireRoot(t, "attach loop devices")
	h := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, h, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4"))
	require.Equal(t, "ext4", signatureOf(t, dev))

	ex := &hookedExec{Interface: utilexec.New()}
	w := blockWiper(t, ex)
	var ran []string
	var recordDuringWipe bool
	ex.hook = func(name string, args []string) (string, []string) {
		ran = append(ran, name)
		if name == "blkdiscard" {
			recordDuringWipe, _ = w.BlockWiping(blockID)
		}
		return name, args
	}

	res, err := w.Wipe(context.Background(), blockDisk(dev), blockID)

	require.NoError(t, err)
	require.Equal(t, "discard", res.Method)
	require.Contains(t, ran, "blkdiscard")
	require.True(t, recordDuringWipe, "the wipe record exists while the device is being wiped")
	require.Empty(t, signatureOf(t, dev))
	wiping, err := w.BlockWiping(blockID)
	require.NoError(t, err)
	require.False(t, wiping, "a finished wipe clears its record")
	require.NoFileExists(t, filepath.Join(w.StateDir, "wiping", blockID))
}

func TestWipe_ZeroesSignaturesWhenDiscardFails(t *testing.T) {
	hostdisk.RequireRoot(t, "attach loop devices")
	h := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, h, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4"))
	ex := &hookedExec{Interface: utilexec.New(), hook: func(name string, args []string) (string, []string) {
		if name == "blkdiscard" {
			return "false", nil // a device without discard support
		}
		return name, args
	}}
	w := blockWiper(t, ex)

	res, err := w.Wipe(context.Background(), blockDisk(dev), blockID)

	require.NoError(t, err)
	require.Equal(t, "zero-signatures", res.Method)
	require.Empty(t, signatureOf(t, dev))
	wiping, err := w.BlockWiping(blockID)
	require.NoError(t, err)
	require.False(t, wiping)
}

func TestWipe_KeepsTheWipeRecordWhenTheBlockCommandFails(t *testing.T) {
	hostdisk.RequireRoot(t, "attach loop devices")
	h := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, h, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4"))
	w := blockWiper(t, utilexec.New())
	w.BlockCommand = []string{"sh", "-c", "echo cannot erase $0 >&2; exit 3", "{device}"}

	res, err := w.Wipe(context.Background(), blockDisk(dev), blockID)

	require.Error(t, err)
	require.Equal(t, "command", res.Method)
	require.ErrorContains(t, err, "cannot erase "+dev, "the command's own message reaches the operator")
	wiping, err := w.BlockWiping(blockID)
	require.NoError(t, err)
	require.True(t, wiping, "the record stays, so the disk is not published until a wipe succeeds")
	require.Equal(t, "ext4", signatureOf(t, dev))

	w.BlockCommand = []string{"wipefs", "-a", "{device}"}
	res, err = w.Wipe(context.Background(), blockDisk(dev), blockID)
	require.NoError(t, err)
	require.Equal(t, "command", res.Method)
	require.Empty(t, signatureOf(t, dev))
	wiping, err = w.BlockWiping(blockID)
	require.NoError(t, err)
	require.False(t, wiping)
}

func TestWipe_ReportsABlockCommandThatLeavesASignature(t *testing.T) {
	hostdisk.RequireRoot(t, "attach loop devices")
	h := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, h, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4"))
	w := blockWiper(t, utilexec.New())
	w.BlockCommand = []string{"true", "{device}"}

	_, err := w.Wipe(context.Background(), blockDisk(dev), blockID)

	require.ErrorIs(t, err, ErrNotClean)
	require.ErrorContains(t, err, "ext4")
	wiping, err := w.BlockWiping(blockID)
	require.NoError(t, err)
	require.True(t, wiping)
}
