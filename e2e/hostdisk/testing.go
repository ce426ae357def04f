package hostdisk

import (
	"os"
	"path/filepath"
	"testing"
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
