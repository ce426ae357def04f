package discovery

import (
	"fmt"
	"path/filepath"

	"k8s.io/mount-utils"
)

// Mount is one entry of the mount table.
type Mount struct {
	MountPoint string
	Source     string
	FSType     string
	// Root is the path inside the source filesystem that is mounted; "/"
	// unless this is a bind mount of a subdirectory.
	Root  string
	Major int
	Minor int
}

// MountTable reads the mounts of the agent's mount namespace. It is the seam
// tests replace.
type MountTable interface {
	Mounts() ([]Mount, error)
}

// ProcMountTable reads /proc/self/mountinfo (or another mountinfo file).
type ProcMountTable struct {
	Path string
}

// DefaultMountInfo is the mount table of the agent's own mount namespace.
const DefaultMountInfo = "/proc/self/mountinfo"

// Mounts implements MountTable.
func (t ProcMountTable) Mounts() ([]Mount, error) {
	path := t.Path
	if path == "" {
		path = DefaultMountInfo
	}
	infos, err := mount.ParseMountInfo(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", path, err)
	}
	out := make([]Mount, 0, len(infos))
	for _, mi := range infos {
		out = append(out, Mount{
			MountPoint: filepath.Clean(mi.MountPoint),
			Source:     mi.Source,
			FSType:     mi.FsType,
			Root:       mi.Root,
			Major:      mi.Major,
			Minor:      mi.Minor,
		})
	}
	return out, nil
}

// MountIndex answers "is this path a mount point" from one read of the table.
// The last mount on a path wins, as it does for path lookup in the kernel.
type MountIndex map[string]Mount

// IndexMounts builds a MountIndex.
func IndexMounts(ms []Mount) MountIndex {
	idx := make(MountIndex, len(ms))
	for _, m := range ms {
		idx[m.MountPoint] = m
	}
	return idx
}

// Below lists mount points strictly below dir.
func (idx MountIndex) Below(dir string) []string {
	var out []string
	for mp := range idx {
		if mp != dir && within(mp, dir) {
			out = append(out, mp)
		}
	}
	return out
}
