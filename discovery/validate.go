package discovery

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Validator checks inventory entries against this node: its discovery
// directories, its device directory and its mount table.
type Validator struct {
	Node  string
	Roots Roots
	// DevDir is where devices must live; "/dev" outside tests.
	DevDir string
	Mounts MountIndex
}

// supportedFSTypes are the filesystems the agent formats; the image ships
// their mkfs tools.
var supportedFSTypes = map[string]bool{"ext4": true, "xfs": true}

// Validate returns the entries for this node that can be applied, and a
// Problem for each that cannot. Entries for other nodes are left out
// silently: they are another agent's to judge.
func (v Validator) Validate(entries []IndexedEntry) ([]ValidEntry, []Problem) {
	var (
		valid    []ValidEntry
		problems []Problem
		claimed  = map[string]int{} // resolved device, path or mount target → entry index
	)
	for _, e := range entries {
		if !e.AppliesTo(v.Node) {
			continue
		}
		ve, err := v.validate(e)
		if err == nil {
			err = claim(claimed, ve)
		}
		if err != nil {
			problems = append(problems, Problem{Index: e.Index, Target: e.Target(), Message: err.Error()})
			continue
		}
		valid = append(valid, ve)
	}
	return valid, problems
}

// claim rejects an entry naming the same device, path or mount directory as
// an earlier one: applying both would publish one disk twice.
func claim(claimed map[string]int, ve ValidEntry) error {
	keys := []string{ve.Resolved}
	if ve.MountTarget != "" {
		keys = append(keys, ve.MountTarget)
	}
	for _, k := range keys {
		if i, dup := claimed[k]; dup {
			return fmt.Errorf("duplicate: %s is already named by entry %d; remove one of the two", k, i+1)
		}
	}
	for _, k := range keys {
		claimed[k] = ve.Index
	}
	return nil
}

func (v Validator) validate(e IndexedEntry) (ValidEntry, error) {
	ve := ValidEntry{IndexedEntry: e}
	if e.StorageClass == "" {
		return ve, fmt.Errorf("storageClass is required; one of: %s", strings.Join(v.Roots.Classes(), ", "))
	}
	root, ok := v.Roots.ForClass(e.StorageClass)
	if !ok {
		return ve, fmt.Errorf("storageClass %q has no discovery directory on this agent; use one of: %s", e.StorageClass, strings.Join(v.Roots.Classes(), ", "))
	}
	// One entry for every node names a device path, and /dev/nvme1n1 is a
	// different disk on each node: erasing "whatever is there" on all of
	// them is never what a single line in a ConfigMap should be able to do.
	if e.Force && e.Device != "" && (e.Node == "" || e.Node == AllNodes) {
		return ve, fmt.Errorf("force: true erases what the device holds, and this entry applies to every node (node is %s): it would erase %s on each of them; set node to the one node whose device should be erased (one entry per node)", describeNode(e.Node), e.Device)
	}
	switch e.VolumeMode {
	case "", string(corev1.PersistentVolumeFilesystem):
		ve.Mode = corev1.PersistentVolumeFilesystem
	case string(corev1.PersistentVolumeBlock):
		ve.Mode = corev1.PersistentVolumeBlock
	default:
		return ve, fmt.Errorf("volumeMode %q: use Filesystem or Block", e.VolumeMode)
	}
	switch {
	case e.Device != "" && e.Path != "":
		return ve, fmt.Errorf("set either device or path, not both")
	case e.Device != "":
		return v.validateDevice(ve, root)
	case e.Path != "":
		return v.validatePath(ve, root)
	default:
		return ve, fmt.Errorf("set device (a block device under %s) or path (a directory in %s)", v.DevDir, root.Dir)
	}
}

func (v Validator) validateDevice(ve ValidEntry, root Root) (ValidEntry, error) {
	if ve.AllowNonMountPoint {
		return ve, fmt.Errorf("allowNonMountPoint applies to path entries only")
	}
	dev, err := v.resolveUnder(ve.Device, v.DevDir, "device")
	if err != nil {
		return ve, err
	}
	fi, err := os.Stat(dev)
	if err != nil {
		return ve, fmt.Errorf("device %s: %w", ve.Device, err)
	}
	if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
		return ve, fmt.Errorf("%s is a %s, not a block device; name the disk's block device (see ls -l /dev/disk/by-id)", ve.Device, kind(fi.Mode()))
	}
	ve.Resolved = dev
	if ve.Mode == corev1.PersistentVolumeBlock {
		if ve.FSType != "" || ve.Format || ve.Force || ve.Name != "" {
			return ve, fmt.Errorf("fsType, format, force and name apply to Filesystem devices only; remove them or set volumeMode: Filesystem")
		}
		return ve, nil
	}
	if ve.FSType == "" {
		ve.FSType = "ext4"
	}
	if !supportedFSTypes[ve.FSType] {
		return ve, fmt.Errorf("fsType %q is not supported; use ext4 or xfs", ve.FSType)
	}
	if ve.Force && !ve.Format {
		return ve, fmt.Errorf("force needs format: true")
	}
	name := ve.Name
	if name == "" {
		name = strings.ToLower(baseName(dev))
	}
	if !nameRE.MatchString(name) {
		return ve, fmt.Errorf("name %q: use lower-case letters, digits, '-', '.' or '_' (at most 63), it becomes a directory under %s", name, root.Dir)
	}
	ve.MountTarget = filepath.Join(root.Dir, name)
	if m, ok := v.Mounts[ve.MountTarget]; ok && m.Source != dev && m.Source != ve.Device {
		return ve, fmt.Errorf("%s already has %s mounted on it; choose another name", ve.MountTarget, m.Source)
	}
	return ve, nil
}

func (v Validator) validatePath(ve ValidEntry, root Root) (ValidEntry, error) {
	if ve.Mode == corev1.PersistentVolumeBlock {
		return ve, fmt.Errorf("volumeMode Block needs a device, not a path")
	}
	if ve.FSType != "" || ve.Format || ve.Force || ve.Name != "" {
		return ve, fmt.Errorf("fsType, format, force and name apply to devices only; a path is published as it is")
	}
	if r, ok := v.Roots.Containing(filepath.Clean(ve.Path)); ok && r.Class != root.Class {
		return ve, fmt.Errorf("%s is in the discovery directory of class %s (%s), not %s", ve.Path, r.Class, r.Dir, root.Class)
	}
	p, err := v.resolveUnder(ve.Path, root.Dir, "path")
	if err != nil {
		return ve, err
	}
	if p == root.Dir {
		return ve, fmt.Errorf("%s is the discovery directory itself; name a directory inside it", ve.Path)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return ve, fmt.Errorf("path %s: %w", ve.Path, err)
	}
	if !fi.IsDir() {
		return ve, fmt.Errorf("%s is a %s, not a directory", ve.Path, kind(fi.Mode()))
	}
	if _, mounted := v.Mounts[p]; !mounted && !ve.AllowNonMountPoint {
		return ve, fmt.Errorf("%s is not a mount point, so it would be a directory of the node's root disk; mount a disk there, or set allowNonMountPoint: true to publish the directory as is", ve.Path)
	}
	ve.Resolved = p
	return ve, nil
}

// resolveUnder checks that p is an absolute, clean path inside dir and that
// resolving its symbolic links keeps it there.
func (v Validator) resolveUnder(p, dir, what string) (string, error) {
	switch {
	case !filepath.IsAbs(p):
		return "", fmt.Errorf("%s %q is relative; give an absolute path", what, p)
	case filepath.Clean(p) == "/":
		return "", fmt.Errorf("%s / is the node's root; name a disk", what)
	case hasDotDot(p):
		return "", fmt.Errorf("%s %q contains '..'; give the path without it", what, p)
	case !within(filepath.Clean(p), dir):
		return "", fmt.Errorf("%s %s is outside %s; only %s may be used", what, p, dir, describeAllowed(what, dir))
	}
	resolved, err := filepath.EvalSymlinks(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s %s does not exist on node %s", what, p, v.Node)
	}
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, p, err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if !within(resolved, realDir) {
		return "", fmt.Errorf("%s %s is a symbolic link to %s, outside %s; name the target inside it instead", what, p, resolved, dir)
	}
	// Report the path in the configured tree, not the resolved one, so it
	// matches what the mount table and other entries say.
	rel, err := filepath.Rel(realDir, resolved)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, p, err)
	}
	return filepath.Join(dir, rel), nil
}

func describeNode(node string) string {
	if node == "" {
		return "omitted"
	}
	return fmt.Sprintf("%q", node)
}

func describeAllowed(what, dir string) string {
	if what == "device" {
		return "devices under " + dir
	}
	return "paths inside the class's discovery directory " + dir
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	default:
		return "special file"
	}
}
