package provisioner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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
	if w.mayReformat(d, m, idx) {
		res, err = w.reformat(ctx, d, m, idx)
	} else if w.FSMode == FSWipeReformat {
		return Result{}, fmt.Errorf("wipe mode reformat: %s was not formatted by tidb-localpv (or is not mounted from the device it was formatted on); use --fs-wipe=auto", d.Path)
	} else {
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

// mayReformat allows reformatting only a filesystem the agent made, still
// mounted at the disk's path from the same device, with nothing mounted
// inside it.
func (w *Wiper) mayReformat(d discovery.Disk, m discovery.Marker, idx discovery.MountIndex) bool {
	if w.FSMode == FSWipeContents || m.FormattedDevice == "" || m.FSType == "" {
		return false
	}
	cur, ok := idx[d.Path]
	if !ok || len(idx.Below(d.Path)) > 0 {
		return false
	}
	dev, err := filepath.EvalSymlinks(m.FormattedDevice)
	if err != nil {
		return false
	}
	src, err := filepath.EvalSymlinks(cur.Source)
	return err == nil && src == dev
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

// reformat replaces the filesystem: its cost does not grow with the number
// of files. A crash before mkfs leaves the wiping mark on the old filesystem;
// a crash after it leaves a blank filesystem without a marker, which is a new,
// empty disk. Neither is ever published with data.
func (w *Wiper) reformat(ctx context.Context, d discovery.Disk, m discovery.Marker, idx discovery.MountIndex) (Result, error) {
	log := klog.FromContext(ctx)
	dev := idx[d.Path].Source
	if err := w.Mounter.Unmount(d.Path); err != nil {
		return Result{}, fmt.Errorf("unmount %s for reformat: %w", d.Path, err)
	}
	args := MkfsArgs(m.FSType, dev, true)
	out, err := w.Exec.CommandContext(ctx, "mkfs."+m.FSType, args...).CombinedOutput()
	if err != nil {
		// Put the old filesystem back so the disk stays visible (and marked
		// wiping) rather than vanishing.
		if merr := w.Mounter.Mount(dev, d.Path, m.FSType, nil); merr != nil {
			log.Error(merr, "remount after failed reformat", "device", dev, "path", d.Path)
		}
		return Result{}, fmt.Errorf("mkfs.%s %s: %w: %s", m.FSType, dev, err, strings.TrimSpace(string(out)))
	}
	if err := w.Mounter.Mount(dev, d.Path, m.FSType, nil); err != nil {
		return Result{}, fmt.Errorf("mount %s after reformat: %w", dev, err)
	}
	m.State = discovery.StateWiping // flipped to ready by the caller after verification
	if err := discovery.WriteMarker(d.Path, m); err != nil {
		return Result{}, fmt.Errorf("restore marker after reformat: %w", err)
	}
	return Result{Method: "reformat"}, nil
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
