package discovery

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

const watcherHelperEnv = "TIDB_LOCALPV_WATCHER_HELPER"

// TestWatcher_SignalsMountsUnmountsAndNewDirectories runs the watcher in a
// child process with a private mount namespace: the host's mount table
// changes all the time (other tests, other engineers), and a signal caused by
// someone else's mount would make the test pass for the wrong reason.
func TestWatcher_SignalsMountsUnmountsAndNewDirectories(t *testing.T) {
	hostdisk.RequireRoot(t, "mount tmpfs in a private mount namespace")
	hostdisk.LockMountNamespaces(t) // the child's namespace copies (and holds) other tests' mounts
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatcherHelperProcess$", "-test.v", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), watcherHelperEnv+"=1")
	// Go makes / recursively private after unsharing the mount namespace,
	// so no mount from outside propagates in.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	require.NoError(t, err)
	for _, name := range []string{
		"mounting_onto_an_existing_directory_signals_through_the_mount_table",
		"unmounting_signals_through_the_mount_table",
		"creating_a_directory_signals_through_fsnotify_only",
	} {
		require.Contains(t, string(out), "--- PASS: TestWatcherHelperProcess/"+name+" ")
	}
}

func TestWatcherHelperProcess(t *testing.T) {
	if os.Getenv(watcherHelperEnv) == "" {
		t.Skip("the body of TestWatcher_SignalsMountsUnmountsAndNewDirectories, run in its own mount namespace")
	}
	base := t.TempDir()
	h := hostdisk.ForTest(t)
	tikv := filepath.Join(base, "tikv")
	disk := filepath.Join(tikv, "disk0")
	scratch := filepath.Join(base, "scratch") // outside every root
	require.NoError(t, os.MkdirAll(disk, 0o755))
	require.NoError(t, os.MkdirAll(scratch, 0o755))

	// The agent's watcher, and one with no roots: it has no fsnotify watch
	// at all, so whatever it reports came from the mount table alone.
	agent := startWatcher(t, Roots{{Class: "tidb-localpv-tikv", Dir: tikv}})
	bare := startWatcher(t, nil)
	// Run gives no sign that it is watching; a mount elsewhere that it
	// reports is that sign.
	for _, w := range []*Watcher{agent, bare} {
		require.Eventually(t, func() bool {
			if !assert.NoError(t, unix.Mount("tmpfs", scratch, "tmpfs", 0, "size=1m")) {
				return false
			}
			return assert.NoError(t, hostdisk.Unmount(scratch)) && signalled(w)
		}, 10*time.Second, 20*time.Millisecond, "watcher never started")
	}

	t.Run("mounting onto an existing directory signals through the mount table", func(t *testing.T) {
		quiet(agent, bare)
		hostdisk.Tmpfs(t, h, disk, "1m")
		requireSignal(t, agent)
		requireSignal(t, bare)
	})
	t.Run("unmounting signals through the mount table", func(t *testing.T) {
		quiet(agent, bare)
		require.NoError(t, hostdisk.Unmount(disk))
		requireSignal(t, agent)
		requireSignal(t, bare)
	})
	t.Run("creating a directory signals through fsnotify only", func(t *testing.T) {
		quiet(agent, bare)
		require.NoError(t, os.Mkdir(filepath.Join(tikv, "disk1"), 0o755))
		requireSignal(t, agent)
		require.Never(t, func() bool { return signalled(bare) }, 300*time.Millisecond, 10*time.Millisecond,
			"a new directory does not change the mount table")
	})
}

func startWatcher(t *testing.T, roots Roots) *Watcher {
	t.Helper()
	w := NewWatcher(roots, "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return w
}

func signalled(w *Watcher) bool {
	select {
	case <-w.Notify:
		return true
	default:
		return false
	}
}

// quiet drains both watchers until neither has signalled for a while, so
// the next signal is caused by what the test does next.
func quiet(a, b *Watcher) {
	for {
		select {
		case <-a.Notify:
		case <-b.Notify:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

func requireSignal(t *testing.T, w *Watcher) {
	t.Helper()
	require.Eventually(t, func() bool { return signalled(w) }, 5*time.Second, 5*time.Millisecond)
}
