package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// ContentStats counts what a contents wipe removed and what it kept.
type ContentStats struct {
	Files int
	Dirs  int
	// KeptMounts are mount points inside the disk, left untouched.
	KeptMounts []string
}

// removeContents empties a filesystem disk, keeping its reserved names.
// It works on directory file descriptors with O_NOFOLLOW and unlinkat, so a
// symbolic link is removed rather than followed even if one is swapped in
// mid-walk, and it never enters a directory on another device or listed as a
// mount point: what is mounted inside the disk is not the disk.
func removeContents(ctx context.Context, root string, mounts discovery.MountIndex) (ContentStats, error) {
	var st ContentStats
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return st, fmt.Errorf("open %s: %w", root, err)
	}
	var rst unix.Stat_t
	if err := unix.Fstat(fd, &rst); err != nil {
		unix.Close(fd)
		return st, fmt.Errorf("stat %s: %w", root, err)
	}
	nested := map[string]bool{}
	for _, mp := range mounts.Below(root) {
		nested[mp] = true
	}
	w := contentWalker{dev: rst.Dev, nested: nested, stats: &st}
	_, err = w.empty(ctx, fd, root, true)
	slices.Sort(st.KeptMounts)
	st.KeptMounts = slices.Compact(st.KeptMounts)
	return st, err
}

type contentWalker struct {
	dev    uint64
	nested map[string]bool
	stats  *ContentStats
}

// empty removes the children of the directory open at fd (it takes ownership
// of fd) and reports whether anything had to be kept inside it.
func (w contentWalker) empty(ctx context.Context, fd int, path string, top bool) (kept bool, err error) {
	dir := os.NewFile(uintptr(fd), path)
	defer dir.Close()
	// Whether readdir returns every entry while entries are being removed is
	// unspecified, so passes repeat until one removes nothing.
	for {
		before := w.stats.Files + w.stats.Dirs
		kept = false
		for {
			if err := ctx.Err(); err != nil {
				return kept, err
			}
			// Batches bound memory on huge directories.
			names, rerr := dir.Readdirnames(4096)
			for _, name := range names {
				// At the root only the marker is kept as is (the caller
				// checked it and rewrites it). lost+found keeps its
				// directory but not what is in it, and a stale temporary
				// marker goes: the consumer owned the root and could have
				// kept data under either name.
				if top && name == discovery.MarkerName {
					continue
				}
				keepDir := top && name == discovery.LostFound
				k, err := w.remove(ctx, int(dir.Fd()), path, name, keepDir)
				if err != nil {
					return kept, err
				}
				kept = kept || k
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				return kept, fmt.Errorf("list %s: %w", path, rerr)
			}
		}
		if w.stats.Files+w.stats.Dirs == before {
			return kept, nil
		}
		if _, err := dir.Seek(0, io.SeekStart); err != nil {
			return kept, fmt.Errorf("rewind %s: %w", path, err)
		}
	}
}

// remove removes the entry name of the directory open at dirfd; keepDir
// empties a directory but keeps it. Only directories are ever opened (with
// O_DIRECTORY, which fails on a FIFO or device before the open could block
// or reach a driver): every other entry is unlinked.
func (w contentWalker) remove(ctx context.Context, dirfd int, parent, name string, keepDir bool) (kept bool, err error) {
	child := filepath.Join(parent, name)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat %s: %w", child, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		err := unix.Unlinkat(dirfd, name, 0)
		switch {
		case err == nil:
			w.stats.Files++
			return false, nil
		case errors.Is(err, unix.EBUSY):
			// A file bind-mounted from elsewhere.
			w.stats.KeptMounts = append(w.stats.KeptMounts, child)
			return true, nil
		case errors.Is(err, unix.ENOENT):
			return false, nil
		default:
			return false, fmt.Errorf("remove %s: %w", child, err)
		}
	}
	if st.Dev != w.dev || w.nested[child] {
		w.stats.KeptMounts = append(w.stats.KeptMounts, child)
		return true, nil
	}
	cfd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("open %s: %w", child, err)
	}
	// Re-check on the open descriptor: the entry may have been replaced
	// by a mount between the stat and the open.
	var cst unix.Stat_t
	if err := unix.Fstat(cfd, &cst); err != nil || cst.Dev != w.dev {
		unix.Close(cfd)
		w.stats.KeptMounts = append(w.stats.KeptMounts, child)
		return true, nil
	}
	kept, err = w.empty(ctx, cfd, child, false)
	if err != nil || kept || keepDir {
		return kept, err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		if errors.Is(err, unix.EBUSY) {
			w.stats.KeptMounts = append(w.stats.KeptMounts, child)
			return true, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("remove %s: %w", child, err)
		}
	}
	w.stats.Dirs++
	return false, nil
}
