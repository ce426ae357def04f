package discovery

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// markerTemp is where a new marker is written before it is renamed into place.
const markerTemp = MarkerName + ".tmp"

// LostFound is created by mkfs.ext4 and is part of an empty filesystem.
const LostFound = "lost+found"

// Reserved reports whether a name at a disk's root belongs to the disk
// itself rather than to its user: wiping keeps these and emptiness ignores them.
func Reserved(name string) bool {
	return name == MarkerName || name == markerTemp || name == LostFound
}

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

// ReadMarker reads the marker at a disk's root. A missing marker returns
// ok=false. The marker is opened without following symbolic links so that
// a link planted in its place cannot redirect it.
func ReadMarker(root string) (m Marker, ok bool, err error) {
	f, err := os.OpenFile(filepath.Join(root, MarkerName), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return Marker{}, false, nil
	}
	if err != nil {
		return Marker{}, false, fmt.Errorf("open marker in %s: %w", root, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return Marker{}, false, fmt.Errorf("read marker in %s: %w", root, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return Marker{}, false, fmt.Errorf("%w in %s: %v", ErrCorruptMarker, root, err)
	}
	if !validID(m.ID) || (m.State != StateReady && m.State != StateWiping) {
		return Marker{}, false, fmt.Errorf("%w in %s: id %q state %q", ErrCorruptMarker, root, m.ID, m.State)
	}
	return m, true, nil
}

// WriteMarker replaces the marker atomically and durably: a crash leaves
// either the old marker or the new one, never half of one.
func WriteMarker(root string, m Marker) error {
	if m.Version == 0 {
		m.Version = 1
	}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode marker: %w", err)
	}
	tmp := filepath.Join(root, markerTemp)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale marker in %s: %w", root, err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create marker in %s: %w", root, err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write marker in %s: %w", root, werr)
	}
	if err := os.Rename(tmp, filepath.Join(root, MarkerName)); err != nil {
		return fmt.Errorf("install marker in %s: %w", root, err)
	}
	return syncDir(root)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Contents lists what a disk's root holds besides its reserved names; an
// empty result means the disk holds no user data.
func Contents(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	var out []string
	for _, e := range entries {
		if !Reserved(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
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
