package discovery

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MarkerName is the identity marker at the root of every filesystem disk.
// Wiping never removes it, so the disk keeps its identity across recycles.
const MarkerName = ".tidb-localpv-disk"

// markerTemp starts the names a new marker is written under before it is
// renamed into place.
const markerTemp = MarkerName + ".tmp"

// LostFound is created by mkfs.ext4 and is part of an empty filesystem.
const LostFound = "lost+found"

// State is the lifecycle state recorded in a marker.
type State string

// Marker states. Wiping is written before the first byte is removed, so a
// disk found in that state was interrupted and must be wiped again.
const (
	StateReady  State = "ready"
	StateWiping State = "wiping"
)

// Marker is the content of the identity marker.
type Marker struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	State   State  `json:"state"`
	// FormattedDevice is set when the agent made this filesystem, so that
	// it may reformat it instead of deleting files one by one.
	FormattedDevice string    `json:"formattedDevice,omitempty"`
	FSType          string    `json:"fsType,omitempty"`
	Created         time.Time `json:"created"`
}

// NewID returns a fresh filesystem disk identity; it is a valid label value.
func NewID() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate disk id: %w", err)
	}
	return "fs-" + hex.EncodeToString(b[:]), nil
}

// ErrCorruptMarker means a marker exists but cannot be trusted.
var ErrCorruptMarker = errors.New("corrupt identity marker")

// ErrUnsafeMarker means something other than a marker-sized regular file
// sits where the marker belongs: a FIFO, socket, device node, directory,
// symbolic link or huge file. A pod using the disk owns its root and can
// plant one; it is never read, and the disk is neither published nor wiped
// until someone puts a marker back.
var ErrUnsafeMarker = errors.New("identity marker is not a regular file")

// MaxMarkerSize bounds a marker file; a real one is about 200 bytes.
const MaxMarkerSize = 64 << 10

// markerOpenFlags never block and never follow: a FIFO opens at once
// instead of waiting for a writer, a link is refused, and a terminal
// cannot become the agent's controlling one.
const markerOpenFlags = unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOFOLLOW | unix.O_NOCTTY | unix.O_CLOEXEC

// ReadMarker reads the marker at a disk's root. A missing marker returns
// ok=false. Only a regular file of marker size is read: the entry is
// checked before it is opened (so a device node planted there is not opened
// at all), opened without blocking or following links, and checked again
// on the open descriptor, in case it was swapped in between.
func ReadMarker(root string) (m Marker, ok bool, err error) {
	dir, err := openDir(root)
	if err != nil {
		return Marker{}, false, err
	}
	defer unix.Close(dir)
	return readMarkerAt(dir, root)
}

func readMarkerAt(dir int, root string) (Marker, bool, error) {
	path := filepath.Join(root, MarkerName)
	var st unix.Stat_t
	err := unix.Fstatat(dir, MarkerName, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return Marker{}, false, nil
	}
	if err != nil {
		return Marker{}, false, fmt.Errorf("stat marker %s: %w", path, err)
	}
	if err := checkMarkerFile(path, &st); err != nil {
		return Marker{}, false, err
	}
	fd, err := unix.Openat(dir, MarkerName, markerOpenFlags, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return Marker{}, false, nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENXIO):
		// Swapped for a link or a socket since the stat.
		return Marker{}, false, fmt.Errorf("%w: %s changed into something else while being read", ErrUnsafeMarker, path)
	case err != nil:
		return Marker{}, false, fmt.Errorf("open marker %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := unix.Fstat(fd, &st); err != nil {
		return Marker{}, false, fmt.Errorf("stat marker %s: %w", path, err)
	}
	if err := checkMarkerFile(path, &st); err != nil {
		return Marker{}, false, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxMarkerSize+1))
	if err != nil {
		return Marker{}, false, fmt.Errorf("read marker %s: %w", path, err)
	}
	if len(data) > MaxMarkerSize {
		return Marker{}, false, fmt.Errorf("%w: %s grew past %d bytes while being read", ErrUnsafeMarker, path, MaxMarkerSize)
	}
	var m Marker
	if err := json.Unmarshal(data, &m); err != nil {
		return Marker{}, false, fmt.Errorf("%w in %s: %v", ErrCorruptMarker, root, err)
	}
	if !validID(m.ID) || (m.State != StateReady && m.State != StateWiping) {
		return Marker{}, false, fmt.Errorf("%w in %s: id %q state %q", ErrCorruptMarker, root, m.ID, m.State)
	}
	return m, true, nil
}

// checkMarkerFile accepts only a regular file of marker size.
func checkMarkerFile(path string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: %s is %s", ErrUnsafeMarker, path, FileKind(st.Mode))
	}
	if st.Size > MaxMarkerSize {
		return fmt.Errorf("%w: %s is %d bytes, far more than a marker (at most %d)", ErrUnsafeMarker, path, st.Size, MaxMarkerSize)
	}
	return nil
}

// FileKind names a file type for messages: "a FIFO", "a directory", ….
func FileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of type %#o", mode&unix.S_IFMT)
}

// openDir opens a disk's root (or a directory in it) for *at calls. Even
// a FIFO swapped in for a directory cannot block it: O_DIRECTORY fails on
// anything else before the open would wait.
func openDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	return fd, nil
}

// OpenRoot opens a disk's root directory without following a link, for
// WriteMarkerAt; the caller closes it.
func OpenRoot(path string) (*os.File, error) {
	fd, err := openDir(path)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// WriteMarker replaces the marker atomically and durably: a crash leaves
// either the old marker or the new one, never half of one.
func WriteMarker(root string, m Marker) error {
	dir, err := OpenRoot(root)
	if err != nil {
		return err
	}
	defer dir.Close()
	return WriteMarkerAt(dir, m)
}

// WriteMarkerAt writes the marker into the directory dir, which the caller
// opened (and may have checked, e.g. that it is the filesystem it just
// made), so the path cannot be swapped for another between check and write.
func WriteMarkerAt(dir *os.File, m Marker) error {
	if m.Version == 0 {
		m.Version = 1
	}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode marker: %w", err)
	}
	root, dfd := dir.Name(), int(dir.Fd())
	// A fresh random name each time: a fixed one could be taken by the
	// consumer (a directory, a FIFO) and block every marker write, the
	// wipe's first among them. A crash leaves the temporary file behind,
	// which Contents ignores and a wipe removes.
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("name temporary marker: %w", err)
	}
	tmp := markerTemp + "." + hex.EncodeToString(b[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create marker in %s: %w", root, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(root, tmp))
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("write marker in %s: %w", root, werr)
	}
	if err := unix.Renameat(dfd, tmp, dfd, MarkerName); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("install marker in %s: %w", root, err)
	}
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", root, err)
	}
	return nil
}

// Contents lists what a disk's root holds besides the disk's own names; an
// empty result means the disk holds no user data. The marker is left to
// ReadMarker to judge. lost+found counts only when it holds something (or
// is not a directory), and a temporary marker file left by a crash only
// when it is not a plain marker-sized file: a pod owns the root and could
// otherwise keep data under those names. Nothing but directories is opened.
func Contents(root string) ([]string, error) {
	dfd, err := openDir(root)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	dir := os.NewFile(uintptr(dfd), root)
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	sort.Strings(names)
	var out []string
	for _, name := range names {
		own, err := ownEntry(dfd, root, name)
		if err != nil {
			return nil, err
		}
		if !own {
			out = append(out, name)
		}
	}
	return out, nil
}

// ownEntry reports whether a root entry belongs to the disk, not its user.
func ownEntry(dir int, root, name string) (bool, error) {
	temp := strings.HasPrefix(name, markerTemp)
	if name != MarkerName && !temp && name != LostFound {
		return false, nil
	}
	if name == MarkerName {
		return true, nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return true, nil
		}
		return false, fmt.Errorf("stat %s: %w", filepath.Join(root, name), err)
	}
	if temp {
		return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size <= MaxMarkerSize, nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, nil
	}
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", filepath.Join(root, name), err)
	}
	lf := os.NewFile(uintptr(fd), filepath.Join(root, name))
	defer lf.Close()
	_, err = lf.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("list %s: %w", lf.Name(), err)
	}
	return false, nil
}

func validID(id string) bool {
	if len(id) < 8 || len(id) > 63 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// BlockIdentity finds what names a block device across reboots and
// renames, in order of trust: a WWN or other /dev/disk/by-id link, the
// kernel's wwid, and for loop devices their backing file.
type BlockIdentity struct {
	// ByIDDir is /dev/disk/by-id outside tests.
	ByIDDir string
	// SysBlockDir is /sys/class/block outside tests.
	SysBlockDir string
}

// ErrNoStableIdentity means a device offers nothing that survives a reboot.
var ErrNoStableIdentity = errors.New("no stable identity")

// Identify returns the disk ID (a label-safe digest) and the raw identity it
// was derived from.
func (b BlockIdentity) Identify(device string) (id, source string, err error) {
	real, err := filepath.EvalSymlinks(device)
	if err != nil {
		return "", "", fmt.Errorf("resolve %s: %w", device, err)
	}
	source, err = b.rawIdentity(real)
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256([]byte(source))
	return "blk-" + hex.EncodeToString(sum[:12]), source, nil
}

func (b BlockIdentity) rawIdentity(real string) (string, error) {
	if links, err := b.byIDLinks(real); err == nil && len(links) > 0 {
		return "by-id:" + links[0], nil
	}
	name := filepath.Base(real)
	for _, f := range []string{"wwid", "device/wwid"} {
		if data, err := os.ReadFile(filepath.Join(b.SysBlockDir, name, f)); err == nil {
			if w := strings.TrimSpace(string(data)); w != "" {
				return "wwid:" + w, nil
			}
		}
	}
	if data, err := os.ReadFile(filepath.Join(b.SysBlockDir, name, "loop", "backing_file")); err == nil {
		backing := strings.TrimSpace(string(data))
		var st unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, backing, 0, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
			return "", fmt.Errorf("%w for %s: backing file %s: %v", ErrNoStableIdentity, real, backing, err)
		}
		// Inode numbers are reused; inode plus birth time tells a recreated
		// backing file from the old one at the same path, as a replaced disk
		// must get a new identity.
		return fmt.Sprintf("loop:%s:%d:%d.%d", backing, st.Ino, st.Btime.Sec, st.Btime.Nsec), nil
	}
	return "", fmt.Errorf("%w for %s: no /dev/disk/by-id link, wwid or loop backing file", ErrNoStableIdentity, real)
}

// byIDLinks lists by-id links to real, WWN names first, then the rest sorted,
// skipping partition links.
func (b BlockIdentity) byIDLinks(real string) ([]string, error) {
	entries, err := os.ReadDir(b.ByIDDir)
	if err != nil {
		return nil, err
	}
	var links []string
	for _, e := range entries {
		target, err := filepath.EvalSymlinks(filepath.Join(b.ByIDDir, e.Name()))
		if err != nil || target != real || strings.Contains(e.Name(), "-part") {
			continue
		}
		links = append(links, e.Name())
	}
	sort.Slice(links, func(i, j int) bool {
		wi, wj := strings.HasPrefix(links[i], "wwn-"), strings.HasPrefix(links[j], "wwn-")
		if wi != wj {
			return wi
		}
		return links[i] < links[j]
	})
	return links, nil
}

// FilesystemLabel is the label of filesystems the agent creates (12
// characters: the most xfs allows). It lets the agent recognise its own
// filesystem on an inventory device before mounting it.
const FilesystemLabel = "tidb-localpv"
