package discovery

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OSSizer measures real filesystems and block devices.
type OSSizer struct{}

// FilesystemSize is the total size of the filesystem mounted at path: what
// the disk holds, not what is free, so a half-full disk is not under-sold.
func (OSSizer) FilesystemSize(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Blocks) * int64(st.Frsize), nil
}

// BlockDeviceSize asks the kernel for the device's size in bytes.
func (OSSizer) BlockDeviceSize(device string) (int64, error) {
	f, err := os.OpenFile(device, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", device, err)
	}
	defer f.Close()
	var size uint64
	if err := ioctlGetSize(int(f.Fd()), &size); err != nil {
		return 0, fmt.Errorf("get size of %s: %w", device, err)
	}
	return int64(size), nil
}
