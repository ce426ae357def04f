package hostdisk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A loop device that will not go away fails the test that made it; the
// report must say who holds it, or the failure cannot be told from a
// teardown bug.
func TestLoopHolders_NamesAProcessThatHasItOpenAndANamespaceThatHasItMounted(t *testing.T) {
	RequireRoot(t, "attach a loop device and mount it")
	LockMountNamespaces(t)
	h := ForTest(t)
	dev := Loop(t, h, 16)
	require.Empty(t, LoopHolders(dev), "nobody holds a fresh device")

	f, err := os.Open(dev)
	require.NoError(t, err)
	got := strings.Join(LoopHolders(dev), "; ")
	require.Contains(t, got, "pid "+strconv.Itoa(os.Getpid())+" ")
	require.Contains(t, got, "has it open")
	f.Close()

	require.NoError(t, Mkfs(dev, "ext4"))
	dir := filepath.Join(t.TempDir(), "m")
	require.NoError(t, h.Mount(dev, dir, "ext4"))
	ready := filepath.Join(t.TempDir(), "ready")
	ns := exec.Command("unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", "touch "+ready+" && exec sleep 60")
	ns.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, ns.Start())
	t.Cleanup(func() { _ = ns.Process.Kill(); _ = ns.Wait() })
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, Unmount(dir))

	holders := LoopHolders(dev)
	require.Len(t, holders, 1, "only the copy holds it: %v", holders)
	require.Equal(t, "mounted at "+dir+" in the mount namespace of pid "+strconv.Itoa(ns.Process.Pid)+" (sleep 60)", holders[0])
}
