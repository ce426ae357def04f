package hostdisk

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot skips a test that needs root, with the reason, except on CI
// (CI set), where a skipped root test would count a claim as proven without
// running it: there it fails.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("this test needs root (%s) and CI is set: run the suite as root", why)
	}
	t.Skipf("needs root to %s; run as root (CI does) to include it", why)
}

// ForTest returns a Host whose disks are undone when the test ends; a
// failure to undo one fails the test.
func ForTest(t testing.TB) *Host {
	t.Helper()
	h := &Host{}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("clean up host disks: %v", err)
		}
	})
	return h
}

// Tmpfs mounts a tmpfs at dir for the duration of the test.
func Tmpfs(t testing.TB, h *Host, dir, size string) {
	t.Helper()
	if err := h.MountTmpfs(dir, size); err != nil {
		t.Fatal(err)
	}
}

// Loop attaches a loop device over a fresh backing file in a temp dir.
func Loop(t testing.TB, h *Host, sizeMiB int) string {
	t.Helper()
	dev, err := h.AttachLoop(filepath.Join(t.TempDir(), "disk.img"), sizeMiB)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

// mountNamespaceLock is machine-wide: go test runs packages in parallel.
const mountNamespaceLock = "/run/tidb-localpv-test-mountns.lock"

// LockMountNamespaces serialises, across test processes, the tests that
// start a process in a new mount namespace (which copies every mount of
// the moment, and keeps the devices under them busy until it exits) and
// the tests that need a device no other namespace holds (a reformat on
// the first try). It is released when the test ends.
func LockMountNamespaces(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(mountNamespaceLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("open the mount-namespace lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("take the mount-namespace lock: %v", err)
	}
	t.Cleanup(func() { f.Close() })
}
