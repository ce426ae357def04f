package discovery

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
)

// What the kernel says of a disk's health, read from the mount table and
// sysfs. Every reader here touches kernel memory only (mountinfo, sysfs),
// never the disk, except Usage and RootAlive, which callers bound in time.

// DefaultSysFS is where sysfs is mounted.
const DefaultSysFS = "/sys"

// MountState is what the mount table says of one mount.
type MountState struct {
	// ID is the mount's ID: a remount of the same disk gets a new one.
	ID     int
	Source string
	FSType string
	Major  int
	Minor  int
	// ReadOnly is set when either the mount or its superblock is
	// read-only; Options says which option said so.
	ReadOnly bool
	Options  string
}

// ReadMounts reads the mount states of a mountinfo file, by mount point
// (the last mount on a path wins, as in the kernel's lookup).
func ReadMounts(mountInfo string) (map[string]MountState, error) {
	if mountInfo == "" {
		mountInfo = DefaultMountInfo
	}
	infos, err := mount.ParseMountInfo(mountInfo)
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", mountInfo, err)
	}
	out := make(map[string]MountState, len(infos))
	for _, mi := range infos {
		st := MountState{ID: mi.ID, Source: mi.Source, FSType: mi.FsType, Major: mi.Major, Minor: mi.Minor}
		st.ReadOnly, st.Options = readOnly(mi.MountOptions, mi.SuperOptions)
		out[filepath.Clean(mi.MountPoint)] = st
	}
	return out, nil
}

// readOnly looks at both option sets: a remount read-only shows in the
// mount options, while ext4's emergency read-only (errors=remount-ro after
// an error, on Linux 6.x) keeps "rw" there and adds "emergency_ro" to the
// superblock options only.
func readOnly(mountOpts, superOpts []string) (bool, string) {
	switch {
	case slices.Contains(superOpts, "emergency_ro"):
		return true, "superblock option emergency_ro"
	case slices.Contains(mountOpts, "ro"):
		return true, "mount option ro"
	case slices.Contains(superOpts, "ro"):
		return true, "superblock option ro"
	}
	return false, ""
}

// BlockDevice is what sysfs says of a block device.
type BlockDevice struct {
	// Name is the kernel's name (sda1, nvme0n1, loop3, dm-0).
	Name string
	// Parent is the whole disk of a partition; empty otherwise.
	Parent string
	// Slaves are the devices under a device-mapper or md device.
	Slaves []string
	// Present is false when sysfs no longer lists the device.
	Present bool
	// Sectors is the size in 512-byte sectors; 0 for a loop device
	// without a backing file or a device that lost its medium.
	Sectors int64
	// Physical is set for devices backed by hardware (sysfs "device"
	// link): only those can answer SMART.
	Physical bool
}

// Names lists the kernel names errors about this device may carry: its
// own, its whole disk's (the block layer names the disk, not the
// partition) and those of the devices under it.
func (b BlockDevice) Names() []string {
	out := []string{b.Name}
	if b.Parent != "" {
		out = append(out, b.Parent)
	}
	return append(out, b.Slaves...)
}

// ReadBlockDevice looks a device up by number under sysfs.
func ReadBlockDevice(sysfs string, major, minor int) (BlockDevice, error) {
	if sysfs == "" {
		sysfs = DefaultSysFS
	}
	link := filepath.Join(sysfs, "dev", "block", fmt.Sprintf("%d:%d", major, minor))
	real, err := filepath.EvalSymlinks(link)
	if errors.Is(err, os.ErrNotExist) {
		return BlockDevice{}, nil
	}
	if err != nil {
		return BlockDevice{}, fmt.Errorf("block device %d:%d: %w", major, minor, err)
	}
	b := BlockDevice{Name: filepath.Base(real), Present: true}
	if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
		b.Parent = filepath.Base(filepath.Dir(real))
	}
	if entries, err := os.ReadDir(filepath.Join(real, "slaves")); err == nil {
		for _, e := range entries {
			b.Slaves = append(b.Slaves, e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(real, "device")); err == nil {
		b.Physical = true
	}
	if b.Parent != "" {
		if _, err := os.Stat(filepath.Join(filepath.Dir(real), "device")); err == nil {
			b.Physical = true
		}
	}
	n, err := readInt(filepath.Join(real, "size"))
	if errors.Is(err, os.ErrNotExist) {
		// Gone between the lookup and this read.
		return BlockDevice{Name: b.Name}, nil
	}
	if err != nil {
		return BlockDevice{}, err
	}
	b.Sectors = n
	return b, nil
}

// DeviceNumber returns the device number of a block device node.
func DeviceNumber(path string) (major, minor int, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, fmt.Errorf("%s is not a block device", path)
	}
	return int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev)), nil
}

// Ext4Errors is the error record ext4 keeps in its superblock and shows
// under /sys/fs/ext4/<device>/. It survives remounts and reboots until
// e2fsck clears it.
type Ext4Errors struct {
	Count     int64
	First     time.Time
	Last      time.Time
	FirstFunc string
	LastFunc  string
}

// ReadExt4Errors reads the error record of the ext4 filesystem on device
// name; ok is false when sysfs has no such ext4 filesystem.
func ReadExt4Errors(sysfs, name string) (e Ext4Errors, ok bool, err error) {
	if sysfs == "" {
		sysfs = DefaultSysFS
	}
	dir := filepath.Join(sysfs, "fs", "ext4", name)
	e.Count, err = readInt(filepath.Join(dir, "errors_count"))
	if errors.Is(err, os.ErrNotExist) {
		return Ext4Errors{}, false, nil
	}
	if err != nil {
		return Ext4Errors{}, false, err
	}
	if e.Count == 0 {
		return e, true, nil
	}
	epoch := func(file string) time.Time {
		n, err := readInt(filepath.Join(dir, file))
		if err != nil || n <= 0 {
			return time.Time{}
		}
		return time.Unix(n, 0).UTC()
	}
	e.First, e.Last = epoch("first_error_time"), epoch("last_error_time")
	e.FirstFunc, _ = readString(filepath.Join(dir, "first_error_func"))
	e.LastFunc, _ = readString(filepath.Join(dir, "last_error_func"))
	return e, true, nil
}

// Usage is how full a filesystem is, in percent of what its users can
// have (as df counts: used / (used + available)).
type Usage struct {
	BytesPercent  float64
	InodesPercent float64
	// InodesKnown is false for filesystems that report no inode count.
	InodesKnown bool
}

// ReadUsage reads a filesystem's usage with statfs; it may block on a
// failing disk, so callers bound it in time.
func ReadUsage(path string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	var u Usage
	used := float64(st.Blocks - st.Bfree)
	if avail := used + float64(st.Bavail); avail > 0 {
		u.BytesPercent = 100 * used / avail
	}
	if st.Files > 0 {
		u.InodesKnown = true
		u.InodesPercent = 100 * float64(st.Files-st.Ffree) / float64(st.Files)
	}
	return u, nil
}

// RootAlive stats a filesystem's root. A filesystem that shut down (xfs
// after a metadata I/O error or `xfs_io -x -c shutdown`) answers EIO while
// its statfs still succeeds. It may block on a failing disk.
func RootAlive(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	return nil
}

// MountInstance names the mount at path so that a remount of the same
// filesystem gets a different name: the kernel's unique mount ID (Linux
// 6.8 and later; never reused), else the mountinfo ID (reused once freed)
// with the boot ID. It stats the path, so callers bound it in time.
func MountInstance(path string, mountinfoID int) string {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID_UNIQUE, &stx)
	if err == nil && stx.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
		return fmt.Sprintf("unique/%d", stx.Mnt_id)
	}
	return fmt.Sprintf("%s/%d", BootID(), mountinfoID)
}

// BootID identifies this boot of the kernel; mount IDs are unique within
// one boot only.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readInt(path string) (int64, error) {
	s, err := readString(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

func readString(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
