// Package discovery finds the disks of one node: mount points directly under
// the configured discovery directories, block devices and paths named by the
// inventory ConfigMap, and the identity each disk carries.
package discovery

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Source says how a disk was found.
type Source string

// The ways a disk can be found.
const (
	SourceDiscovery Source = "discovery"
	SourceInventory Source = "inventory"
)

// Root maps a StorageClass to the directory whose direct child mount points
// are that class's disks.
type Root struct {
	Class string
	Dir   string
}

// ParseRoot reads a "class=/abs/dir" flag value.
func ParseRoot(s string) (Root, error) {
	class, dir, ok := strings.Cut(s, "=")
	if !ok || class == "" || dir == "" {
		return Root{}, fmt.Errorf("discovery directory %q: want <storage-class>=<absolute directory>", s)
	}
	if !filepath.IsAbs(dir) {
		return Root{}, fmt.Errorf("discovery directory %q: %q is not absolute", s, dir)
	}
	clean := filepath.Clean(dir)
	if clean == "/" {
		return Root{}, fmt.Errorf("discovery directory %q: / would publish the root disk", s)
	}
	return Root{Class: class, Dir: clean}, nil
}

// Roots is the set of configured discovery directories.
type Roots []Root

// Validate rejects duplicate classes and directories that overlap, since a
// disk must belong to exactly one class.
func (rs Roots) Validate() error {
	if len(rs) == 0 {
		return fmt.Errorf("no discovery directory configured")
	}
	classes := map[string]bool{}
	for i, r := range rs {
		if classes[r.Class] {
			return fmt.Errorf("storage class %q has two discovery directories", r.Class)
		}
		classes[r.Class] = true
		for _, o := range rs[i+1:] {
			if within(r.Dir, o.Dir) || within(o.Dir, r.Dir) {
				return fmt.Errorf("discovery directories %s and %s overlap", r.Dir, o.Dir)
			}
		}
	}
	return nil
}

// ForClass returns the root of a class.
func (rs Roots) ForClass(class string) (Root, bool) {
	for _, r := range rs {
		if r.Class == class {
			return r, true
		}
	}
	return Root{}, false
}

// Containing returns the root a path lies in (the root itself excluded).
func (rs Roots) Containing(path string) (Root, bool) {
	for _, r := range rs {
		if within(path, r.Dir) && path != r.Dir {
			return r, true
		}
	}
	return Root{}, false
}

// Classes lists the configured class names, sorted.
func (rs Roots) Classes() []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Class)
	}
	sort.Strings(out)
	return out
}

// within reports whether path is dir or below it; both must be clean.
func within(path, dir string) bool {
	if path == dir {
		return true
	}
	return strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// Disk is one disk found on the node, before identity is read.
type Disk struct {
	// Class is the StorageClass the disk is published under.
	Class string
	// Name is the disk's short name: the directory under the class root, or
	// the device's base name for block volumes.
	Name string
	// Path becomes spec.local.path: the mount point, or the device node.
	Path string
	// Mode is Filesystem or Block.
	Mode corev1.PersistentVolumeMode
	// Device is the block device behind the disk, when there is one.
	Device string
	// FSType is the mounted filesystem type (Filesystem mode).
	FSType string
	// MountPoint is false only for directories an inventory entry publishes
	// explicitly without a mount (allowNonMountPoint).
	MountPoint bool
	// Source says whether discovery or the inventory found the disk.
	Source Source
	// Capacity in bytes: filesystem size, or block device size.
	Capacity int64
}

// Key identifies a disk on this node by where it is, not by what it is.
func (d Disk) Key() string { return string(d.Mode) + ":" + d.Path }
