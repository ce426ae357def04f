package discovery

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Sizer measures disks. It is a seam so unit tests need no real devices.
type Sizer interface {
	FilesystemSize(path string) (int64, error)
	BlockDeviceSize(device string) (int64, error)
}

// Scanner finds the disks of this node.
type Scanner struct {
	Roots  Roots
	Mounts MountTable
	// Sizer measures each disk found; nil leaves Capacity zero for a
	// caller that measures the disks itself (the agent bounds each disk's
	// I/O in time, which a serial scan cannot).
	Sizer Sizer
}

// Result is one scan: the disks found and the reasons others were passed over.
type Result struct {
	Disks []Disk
	// Skipped names entries under a root that are not disks, with why.
	Skipped map[string]string
	// Mounts is the mount table the scan saw, for callers that must check
	// mount boundaries against the same view.
	Mounts MountIndex
}

// Scan lists each discovery directory and returns its direct children that
// are mount points, plus the disks of the validated inventory entries. A
// directory that is not a mount point is never a disk: it would be a
// directory of the root filesystem.
func (s *Scanner) Scan(ctx context.Context, inventory []ValidEntry) (Result, error) {
	ms, err := s.Mounts.Mounts()
	if err != nil {
		return Result{}, err
	}
	idx := IndexMounts(ms)
	res := Result{Skipped: map[string]string{}, Mounts: idx}
	seen := map[string]bool{}
	add := func(d Disk) error {
		if seen[d.Key()] {
			return nil
		}
		if err := s.measure(&d); err != nil {
			return err
		}
		seen[d.Key()] = true
		res.Disks = append(res.Disks, d)
		return nil
	}

	// Inventory first, so an entry's explicit settings win over what plain
	// discovery would infer for the same path.
	for _, e := range inventory {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		d, ok, why := e.disk(idx)
		if !ok {
			res.Skipped[e.Target()] = why
			continue
		}
		if err := add(d); err != nil {
			res.Skipped[d.Path] = err.Error()
		}
	}

	for _, r := range s.Roots {
		entries, err := os.ReadDir(r.Dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Result{}, fmt.Errorf("list discovery directory %s: %w", r.Dir, err)
		}
		for _, e := range entries {
			p := filepath.Join(r.Dir, e.Name())
			if e.Type()&fs.ModeSymlink != 0 {
				res.Skipped[p] = "symbolic link; disks must be mount points, not links"
				continue
			}
			if !e.IsDir() {
				continue
			}
			m, ok := idx[p]
			if !ok {
				res.Skipped[p] = "not a mount point"
				continue
			}
			d := Disk{
				Class:      r.Class,
				Name:       e.Name(),
				Path:       p,
				Mode:       corev1.PersistentVolumeFilesystem,
				FSType:     m.FSType,
				MountPoint: true,
				Source:     SourceDiscovery,
			}
			if strings.HasPrefix(m.Source, "/dev/") {
				d.Device = m.Source
			}
			if err := add(d); err != nil {
				res.Skipped[p] = err.Error()
			}
		}
	}
	sort.Slice(res.Disks, func(i, j int) bool { return res.Disks[i].Path < res.Disks[j].Path })
	return res, nil
}

func (s *Scanner) measure(d *Disk) error {
	if s.Sizer == nil {
		return nil
	}
	var (
		n   int64
		err error
	)
	if d.Mode == corev1.PersistentVolumeBlock {
		n, err = s.Sizer.BlockDeviceSize(d.Path)
	} else {
		n, err = s.Sizer.FilesystemSize(d.Path)
	}
	if err != nil {
		return fmt.Errorf("measure %s: %w", d.Path, err)
	}
	d.Capacity = n
	return nil
}
