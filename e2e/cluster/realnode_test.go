package cluster

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

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

func TestUnderPrivateDir_AcceptsOnlyPathsBelowTheNodesOwnTmpfs(t *testing.T) {
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"/mnt/tidb-localpv", true},
		{"/var/lib/tidb-localpv", true},
		{"/run/x", true},
		{"/mnt", false},
		{"/mntx/a", false},
		{"/etc/tidb-localpv", false},
		{"/var/lib/../../etc", false},
	} {
		require.Equal(t, tc.want, underPrivateDir(tc.path), tc.path)
	}
}

// The node's mount namespace keeps its own mounts to itself, except below
// the shared host dirs, where they propagate both ways — what the agent's
// Bidirectional mounts need and what the host's disks need.
func TestNodeNamespace_PropagatesMountsOnlyThroughTheSharedDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root (mount namespaces) and CI is set")
		}
		t.Skip("needs root to make mount namespaces and mounts")
	}
	hostdisk.LockMountNamespaces(t) // the namespace copies (and holds) other tests' mounts
	host := filepath.Join(t.TempDir(), "disks")
	require.NoError(t, shareHostDir(host))
	t.Cleanup(func() { require.NoError(t, unmountTree(host)); require.Empty(t, mountsBelow(host)) })
	ready := filepath.Join(t.TempDir(), "ready")
	// Stands for containerd: mounts below the shared dir (as the agent
	// does), then waits.
	node := []string{"/bin/sh", "-c", "mkdir -p /mnt/disks/by-node && mount -t tmpfs node /mnt/disks/by-node && touch " + ready + " && exec sleep 60"}
	cmd := exec.Command("unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c",
		nodeNamespaceScript(map[string]string{"/mnt/disks": host}, "", nil, node))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 10*time.Second, 10*time.Millisecond, "node script: %s", out)

	require.Contains(t, mountsBelow(host), filepath.Join(host, "by-node"), "a mount made in the node shows on the host")
	hostMounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(hostMounts), " tlpv-node ", "the node's own tmpfs mounts leaked to the host")
	// And the other way: a disk the host mounts appears in the node.
	byHost := filepath.Join(host, "by-host")
	require.NoError(t, os.Mkdir(byHost, 0o755))
	require.NoError(t, syscall.Mount("tmpfs", byHost, "tmpfs", 0, ""))
	nodeMounts, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/mountinfo")
	require.NoError(t, err)
	require.Contains(t, string(nodeMounts), " /mnt/disks/by-host ", "a mount made on the host shows in the node")
}

// Test environments run side by side. A real node's namespace starts as a
// copy of the host's mounts, and a copy of another environment's disk
// mount would keep that disk's filesystem alive: its owner could unmount it
// but not reformat or detach it. The node drops such copies and keeps its
// own mounts and the shared dirs.
func TestNodeNamespace_DropsOtherEnvironmentsMountsAndKeepsItsOwn(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root (mount namespaces) and CI is set")
		}
		t.Skip("needs root to make mount namespaces and mounts")
	}
	hostdisk.LockMountNamespaces(t)
	root := t.TempDir()
	foreign := filepath.Join(root, "other-env", "disk")
	own := filepath.Join(root, "this-env", "disk")
	for _, d := range []string{foreign, own} {
		require.NoError(t, os.MkdirAll(d, 0o755))
		require.NoError(t, syscall.Mount("tmpfs", d, "tmpfs", 0, ""))
		t.Cleanup(func() { _ = syscall.Unmount(d, syscall.MNT_DETACH) })
	}
	host := filepath.Join(root, "this-env", "shared")
	require.NoError(t, shareHostDir(host))
	t.Cleanup(func() { require.NoError(t, unmountTree(host)) })

	ready := filepath.Join(t.TempDir(), "ready")
	node := []string{"/bin/sh", "-c", "touch " + ready + " && exec sleep 60"}
	cmd := exec.Command("unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c",
		nodeNamespaceScript(map[string]string{"/mnt/disks": host}, root, []string{filepath.Join(root, "this-env")}, node))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 10*time.Second, 10*time.Millisecond, "node script: %s", out)

	nodeMounts, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(nodeMounts), " "+foreign+" ", "the node holds a copy of another environment's mount")
	require.Contains(t, string(nodeMounts), " "+own+" ", "the node lost a mount of its own environment")
	require.Contains(t, string(nodeMounts), " "+host+" ", "the node lost the shared dir")
	require.Contains(t, string(nodeMounts), " /mnt/disks ", "the shared dir is not bound in the node")
	hostMounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.Contains(t, string(hostMounts), " "+foreign+" ", "dropping the copy unmounted the host's mount")
	require.Contains(t, string(hostMounts), " "+host+" ", "the shared dir went from the host")
}
