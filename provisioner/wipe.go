package provisioner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// FSWipeMode chooses how filesystem disks are wiped.
type FSWipeMode string

// Filesystem wipe modes.
const (
	// FSWipeAuto reformats disks the agent formatted itself and removes the
	// contents of all others.
	FSWipeAuto FSWipeMode = "auto"
	// FSWipeContents always removes contents file by file.
	FSWipeContents FSWipeMode = "contents"
	// FSWipeReformat reformats whenever the agent formatted the disk, and
	// refuses (rather than silently falling back) otherwise.
	FSWipeReformat FSWipeMode = "reformat"
)

// ParseFSWipeMode reads a --fs-wipe value.
func ParseFSWipeMode(s string) (FSWipeMode, error) {
	switch m := FSWipeMode(s); m {
	case FSWipeAuto, FSWipeContents, FSWipeReformat:
		return m, nil
	}
	return "", fmt.Errorf("filesystem wipe mode %q: use auto, contents or reformat", s)
}

// Errors a wipe reports so callers can tell a refusal from a failure.
var (
	// ErrIdentityMismatch: the disk at the path is not the disk the PV names.
	ErrIdentityMismatch = errors.New("disk identity does not match")
	// ErrNestedMount: something is mounted inside the disk; it was left alone
	// and the disk stays marked wiping until it is unmounted.
	ErrNestedMount = errors.New("disk contains other mount points")
	// ErrNotClean: verification found data after the wipe.
	ErrNotClean = errors.New("disk not clean after wipe")
)

// Wiper wipes disks, crash-safely: the disk is marked wiping before the first
// byte goes, and only a verified wipe clears the mark.
type Wiper struct {
	Mounts  discovery.MountTable
	Mounter *mount.SafeFormatAndMount
	Exec    utilexec.Interface
	// StateDir holds wipe records of block disks, which have no place of
	// their own to keep one.
	StateDir string
	FSMode   FSWipeMode
	// BlockCommand, when set, replaces the built-in discard; "{device}" in
	// any argument is replaced by the device path.
	BlockCommand []string
	// Claim, when set, gives the wipe its disk — mount path and device —
	// for the whole wipe: nothing else of the caller's may probe, mount,
	// unmount or format it meanwhile.
	Claim func(ctx context.Context, d discovery.Disk) (release func(), err error)
}

// Result describes a finished wipe.
type Result struct {
	Method   string
	Files    int
	Dirs     int
	Duration time.Duration
}

// Wipe wipes the disk whose identity is id. It refuses a disk that does not
// carry that identity, so a replaced disk is never wiped for its predecessor.
func (w *Wiper) Wipe(ctx context.Context, d discovery.Disk, id string) (Result, error) {
	start := time.Now()
	var (
		res Result
		err error
	)
	if w.Claim != nil {
		release, cerr := w.Claim(ctx, d)
		if cerr != nil {
			return Result{}, fmt.Errorf("wait for %s: %w", d.Path, cerr)
		}
		defer release()
	}
	if d.Mode == corev1.PersistentVolumeBlock {
		res, err = w.wipeBlock(ctx, d, id)
	} else {
		res, err = w.wipeFilesystem(ctx, d, id)
	}
	res.Duration = time.Since(start)
	return res, err
}

func (w *Wiper) wipeFilesystem(ctx context.Context, d discovery.Disk, id string) (Result, error) {
	m, ok, err := discovery.ReadMarker(d.Path)
	if err != nil {
		return Result{}, err
	}
	if !ok || m.ID != id {
		return Result{}, fmt.Errorf("%w: %s holds %q, want %q", ErrIdentityMismatch, d.Path, m.ID, id)
	}
	if m.State != discovery.StateWiping {
		m.State = discovery.StateWiping
		if err := discovery.WriteMarker(d.Path, m); err != nil {
			return Result{}, fmt.Errorf("mark wiping: %w", err)
		}
	}
	ms, err := w.Mounts.Mounts()
	if err != nil {
		return Result{}, err
	}
	idx := discovery.IndexMounts(ms)
	var res Result
	why := w.whyNotReformat(d, m, idx)
	if why == "" {
		why = w.notOurLabel(ctx, idx[d.Path].Source, m.FSType)
	}
	switch {
	case why == "":
		res, err = w.reformat(ctx, d, m, idx)
		if errors.Is(err, errStillInUse) && w.FSMode != FSWipeReformat {
			klog.FromContext(ctx).Info("filesystem still in use after unmount; removing its contents instead", "path", d.Path, "err", err.Error())
			res, err = w.removeAll(ctx, d, idx)
		}
	case w.FSMode == FSWipeReformat:
		return Result{}, fmt.Errorf("wipe mode reformat: %s cannot be reformatted (%s); use --fs-wipe=auto", d.Path, why)
	default:
		res, err = w.removeAll(ctx, d, idx)
	}
	if err != nil {
		return res, err
	}
	if err := verifyEmpty(d.Path); err != nil {
		return res, err
	}
	m.State = discovery.StateReady
	if err := discovery.WriteMarker(d.Path, m); err != nil {
		return res, fmt.Errorf("mark ready: %w", err)
	}
	return res, nil
}

// reformatTypes are the filesystems a reformat may make: the ones the
// agent formats, whose mkfs the image ships.
var reformatTypes = map[string]bool{"ext4": true, "xfs": true}

// whyNotReformat allows reformatting only a filesystem the agent made,
// still mounted at the disk's path from the same device, of the type it
// was made with, with nothing mounted inside it and the device mounted
// nowhere else: unmounting the path must free the device. The marker is
// written by the agent but lives on a disk whose root the consumer owns,
// so none of its claims is taken on trust: each is checked against the
// mount table (and, by the caller, against the device's label). It returns
// why not, or "" when the disk may be reformatted.
func (w *Wiper) whyNotReformat(d discovery.Disk, m discovery.Marker, idx discovery.MountIndex) string {
	switch {
	case w.FSMode == FSWipeContents:
		return "wipe mode contents"
	case m.FormattedDevice == "" || m.FSType == "":
		return "not formatted by tidb-localpv"
	case !reformatTypes[m.FSType]:
		return fmt.Sprintf("filesystem type %q is not one the agent formats", m.FSType)
	}
	cur, ok := idx[d.Path]
	if !ok {
		return "not a mount point"
	}
	if below := idx.Below(d.Path); len(below) > 0 {
		return "something is mounted inside it: " + strings.Join(below, ", ")
	}
	if cur.FSType != m.FSType {
		return fmt.Sprintf("mounted as %s, formatted as %s", cur.FSType, m.FSType)
	}
	dev, err := filepath.EvalSymlinks(m.FormattedDevice)
	if err != nil {
		return fmt.Sprintf("formatted on %s, which is gone", m.FormattedDevice)
	}
	src, err := filepath.EvalSymlinks(cur.Source)
	if err != nil || src != dev {
		return fmt.Sprintf("formatted on %s but mounted from %s", m.FormattedDevice, cur.Source)
	}
	if d.Device != "" {
		if claimed, err := filepath.EvalSymlinks(d.Device); err != nil || claimed != dev {
			return fmt.Sprintf("found as device %s but mounted from %s", d.Device, cur.Source)
		}
	}
	for mp, other := range idx {
		if mp == d.Path || !filepath.IsAbs(other.Source) {
			continue
		}
		if s, err := filepath.EvalSymlinks(other.Source); err == nil && s == dev {
			return fmt.Sprintf("%s is also mounted at %s", cur.Source, mp)
		}
	}
	return ""
}

// notOurLabel checks the device's own superblock, which a consumer of the
// filesystem cannot change, for the agent's label and the expected type.
func (w *Wiper) notOurLabel(ctx context.Context, dev, fsType string) string {
	out, err := w.Exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("blkid %s: %v: %s", dev, err, strings.TrimSpace(string(out)))
	}
	tags := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			tags[k] = v
		}
	}
	if tags["LABEL"] != discovery.FilesystemLabel || tags["TYPE"] != fsType {
		return fmt.Sprintf("%s carries label %q type %q, not the agent's %q %s", dev, tags["LABEL"], tags["TYPE"], discovery.FilesystemLabel, fsType)
	}
	return ""
}

func (w *Wiper) removeAll(ctx context.Context, d discovery.Disk, idx discovery.MountIndex) (Result, error) {
	st, err := removeContents(ctx, d.Path, idx)
	res := Result{Method: "contents", Files: st.Files, Dirs: st.Dirs}
	if err != nil {
		return res, fmt.Errorf("wipe contents of %s: %w", d.Path, err)
	}
	if len(st.KeptMounts) > 0 {
		return res, fmt.Errorf("%w: %s; unmount them and the wipe will finish", ErrNestedMount, strings.Join(st.KeptMounts, ", "))
	}
	return res, nil
}

// errStillInUse means the old filesystem could not be let go of: a file is
// open on it, or the device is still held after the unmount (mounted in
// another mount namespace, or a lazy unmount pending). mkfs would refuse
// such a device ("apparently in use by the system"); in auto mode the wipe
// removes the contents instead, so it still succeeds on its first try.
var errStillInUse = errors.New("filesystem still in use")

// reformat replaces the filesystem: its cost does not grow with the number
// of files. A crash before mkfs leaves the wiping mark on the old filesystem;
// a crash after it leaves a blank filesystem without a marker, which is a new,
// empty disk. Neither is ever published with data. The caller's Claim keeps
// the agent's other actors off the path and the device throughout.
func (w *Wiper) reformat(ctx context.Context, d discovery.Disk, m discovery.Marker, idx discovery.MountIndex) (Result, error) {
	log := klog.FromContext(ctx)
	dev := idx[d.Path].Source
	if err := w.Mounter.Unmount(d.Path); err != nil {
		if w.stillMounted(d.Path) {
			return Result{}, fmt.Errorf("%w: unmount %s: %v", errStillInUse, d.Path, err)
		}
		return Result{}, fmt.Errorf("unmount %s for reformat: %w", d.Path, err)
	}
	remount := func(why string) error {
		// Put the old filesystem back so the disk stays visible (and marked
		// wiping) rather than vanishing.
		err := w.Mounter.Mount(dev, d.Path, m.FSType, nil)
		if err != nil {
			log.Error(err, "remount after "+why, "device", dev, "path", d.Path)
		}
		return err
	}
	if err := deviceSettles(ctx, dev); err != nil {
		if merr := remount("finding the device still in use"); merr != nil {
			// Not errStillInUse: the path is no longer the disk, and its
			// contents are not the disk's to remove.
			return Result{}, fmt.Errorf("%s stays in use after the unmount (%v) and could not be mounted again: %w", dev, err, merr)
		}
		return Result{}, fmt.Errorf("%w: %v", errStillInUse, err)
	}
	args := MkfsArgs(m.FSType, dev, true)
	out, err := w.Exec.CommandContext(ctx, "mkfs."+m.FSType, args...).CombinedOutput()
	if err != nil {
		_ = remount("a failed reformat") // logged; the error below is the news
		return Result{}, fmt.Errorf("mkfs.%s %s: %w: %s", m.FSType, dev, err, strings.TrimSpace(string(out)))
	}
	if err := w.Mounter.Mount(dev, d.Path, m.FSType, nil); err != nil {
		return Result{}, fmt.Errorf("mount %s after reformat: %w", dev, err)
	}
	root, err := openFresh(d.Path, dev)
	if err != nil {
		return Result{}, fmt.Errorf("restore marker after reformat: %w", err)
	}
	defer root.Close()
	// Only what was checked goes back: the ID the caller asked for, and the
	// device and type the mount table and the label confirmed.
	restored := discovery.Marker{ID: m.ID, State: discovery.StateWiping, FormattedDevice: m.FormattedDevice, FSType: m.FSType, Created: m.Created}
	if err := discovery.WriteMarkerAt(root, restored); err != nil {
		return Result{}, fmt.Errorf("restore marker after reformat: %w", err)
	}
	return Result{Method: "reformat"}, nil
}

func (w *Wiper) stillMounted(path string) bool {
	ms, err := w.Mounts.Mounts()
	if err != nil {
		return true // cannot tell: assume the worst, which keeps the disk
	}
	_, ok := discovery.IndexMounts(ms)[path]
	return ok
}

// deviceFree opens dev exclusively, which fails while any filesystem on it
// is mounted anywhere (in any mount namespace) or another exclusive holder
// has it: the kernel's own answer to whether mkfs may run.
func deviceFree(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open %s exclusively: %w", dev, err)
	}
	return unix.Close(fd)
}

// deviceSettleTime bounds how long a reformat waits for short-lived holders
// of a just-unmounted device: udev's probe after the unmount and blkid
// readers open it for a few milliseconds, and the reformat should not fall
// back to removing every file because of them.
const deviceSettleTime = time.Second

// deviceSettles is deviceFree, retried while the device is busy for up to
// deviceSettleTime. A device still mounted elsewhere stays busy and is
// reported as such.
func deviceSettles(ctx context.Context, dev string) error {
	deadline := time.Now().Add(deviceSettleTime)
	for {
		err := deviceFree(dev)
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// openFresh opens the root of the filesystem just made on dev and mounted
// at path, refusing anything else: a different filesystem at the path, or
// one that already carries a marker. The marker is then written through
// this descriptor, so it lands in the new filesystem or nowhere.
func openFresh(path, dev string) (*os.File, error) {
	var ds unix.Stat_t
	if err := unix.Stat(dev, &ds); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	root, err := discovery.OpenRoot(path)
	if err != nil {
		return nil, err
	}
	var rs unix.Stat_t
	if err := unix.Fstat(int(root.Fd()), &rs); err != nil {
		root.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if ds.Mode&unix.S_IFMT != unix.S_IFBLK || rs.Dev != ds.Rdev {
		root.Close()
		return nil, fmt.Errorf("%s is not the filesystem just made on %s", path, dev)
	}
	var ms unix.Stat_t
	if err := unix.Fstatat(int(root.Fd()), discovery.MarkerName, &ms, unix.AT_SYMLINK_NOFOLLOW); !errors.Is(err, unix.ENOENT) {
		root.Close()
		return nil, fmt.Errorf("the new filesystem at %s already has an entry %s (%v)", path, discovery.MarkerName, err)
	}
	return root, nil
}

// MkfsArgs are the arguments the agent formats with: no reserved blocks on
// ext4 (a data disk has no root daemons to save), and the tidb-localpv label
// so a disk the agent formatted is recognisable before it is mounted. force
// lets mkfs overwrite an existing filesystem, for reformat and force entries.
func MkfsArgs(fsType, dev string, force bool) []string {
	var args []string
	switch fsType {
	case "xfs":
		if force {
			args = append(args, "-f")
		}
		args = append(args, "-L", discovery.FilesystemLabel)
	default:
		if force {
			args = append(args, "-F")
		}
		args = append(args, "-m0", "-L", discovery.FilesystemLabel)
	}
	return append(args, dev)
}

func verifyEmpty(root string) error {
	left, err := discovery.Contents(root)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		if len(left) > 5 {
			left = append(left[:5], "…")
		}
		return fmt.Errorf("%w: %s still holds %s", ErrNotClean, root, strings.Join(left, ", "))
	}
	return nil
}

// blockRecord is where a block disk's wiping mark lives.
func (w *Wiper) blockRecord(id string) string {
	return filepath.Join(w.StateDir, "wiping", id)
}

// BlockWiping reports whether a block disk has an unfinished wipe.
func (w *Wiper) BlockWiping(id string) (bool, error) {
	_, err := os.Stat(w.blockRecord(id))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}
