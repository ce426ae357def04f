// Package hostdisk makes real disks for tests and the playground: tmpfs
// mounts and loop devices on the host, each undone by a cleanup, and a check
// that none was left behind.
package hostdisk

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Host tracks what it made so Close can undo it, newest first.
type Host struct {
	mu    sync.Mutex
	undos []undo
}

type undo struct {
	what string
	fn   func() error
}

func (h *Host) push(what string, fn func() error) {
	h.mu.Lock()
	h.undos = append(h.undos, undo{what, fn})
	h.mu.Unlock()
}

// Close undoes everything, newest first, and reports every failure.
func (h *Host) Close() error {
	h.mu.Lock()
	undos := h.undos
	h.undos = nil
	h.mu.Unlock()
	var errs []error
	for i := len(undos) - 1; i >= 0; i-- {
		if err := undos[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", undos[i].what, err))
		}
	}
	return errors.Join(errs...)
}

// MountTmpfs mounts a tmpfs of size (e.g. "64m") on dir, creating dir.
func (h *Host) MountTmpfs(dir, size string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	h.push("unmount "+dir, func() error { return Unmount(dir) })
	return nil
}

// Mount mounts dev (formatted as fsType) on dir, creating dir.
func (h *Host) Mount(dev, dir, fsType string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount(dev, dir, fsType, 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	h.push("unmount "+dir, func() error { return Unmount(dir) })
	return nil
}

// Track registers an undo for something made elsewhere (e.g. a mount the
// code under test made).
func (h *Host) Track(what string, fn func() error) { h.push(what, fn) }

// Unmount unmounts dir; a dir that is not mounted is not an error.
func Unmount(dir string) error {
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if errors.Is(err, unix.EBUSY) {
		// Lazy unmount rather than leave the mount behind; it goes once the
		// last user lets go.
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	return err
}

// AttachLoop creates a sparse backing file of sizeMiB and attaches a free
// loop device to it. Loop devices are shared by the whole machine, so a
// free one is asked for, never assumed.
func (h *Host) AttachLoop(backing string, sizeMiB int) (string, error) {
	f, err := os.OpenFile(backing, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", backing, err)
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("size %s: %w", backing, err)
	}
	out, err := exec.Command("losetup", "-f", "--show", backing).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %w: %s", backing, err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	h.push("detach "+dev, func() error { return DetachLoop(dev) })
	return dev, nil
}

// DetachLoop detaches dev, first unmounting anything still mounted from it.
func DetachLoop(dev string) error {
	for _, mp := range mountsOf(dev) {
		_ = Unmount(mp)
	}
	out, err := exec.Command("losetup", "-d", dev).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such device") {
		return fmt.Errorf("losetup -d %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Mkfs formats dev; extra arguments go before the device.
func Mkfs(dev, fsType string, extra ...string) error {
	force := "-F" // mkfs.ext4: no questions about an existing filesystem
	if fsType == "xfs" {
		force = "-f"
	}
	args := append(append([]string{"-q", force}, extra...), dev)
	out, err := exec.Command("mkfs."+fsType, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.%s %s: %w: %s", fsType, dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Leftovers lists mounts below root and loop devices backed by files below
// root: after a test or a playground run there must be none. It reads
// mountinfo itself rather than through discovery, whose own tests use this
// package (the import would be a cycle).
func Leftovers(root string) (mounts, loops []string, err error) {
	root = filepath.Clean(root)
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == root || strings.HasPrefix(f[4], root+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	entries, _ := filepath.Glob("/sys/class/block/loop*/loop/backing_file")
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if backing == root || strings.HasPrefix(backing, root+"/") {
			loops = append(loops, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(e))))
		}
	}
	return mounts, loops, nil
}

func mountsOf(dev string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+2 < len(f) && f[i+2] == dev {
				out = append(out, f[4])
			}
		}
	}
	return out
}
