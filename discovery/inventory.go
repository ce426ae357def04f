package discovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// InventoryKey is the ConfigMap data key that holds the inventory.
const InventoryKey = "disks.yaml"

// AllNodes in an entry's node field (or an empty field) applies it to every node.
const AllNodes = "*"

// Entry is one disk of the inventory ConfigMap, as the operator wrote it.
type Entry struct {
	// Node the entry applies to; empty or "*" for every node.
	Node string `json:"node,omitempty"`
	// Device is a block device (/dev/...) to publish; exactly one of
	// Device and Path is set.
	Device string `json:"device,omitempty"`
	// Path is an existing directory inside a discovery directory.
	Path string `json:"path,omitempty"`
	// StorageClass the disk is published under.
	StorageClass string `json:"storageClass"`
	// VolumeMode is Filesystem (default) or Block.
	VolumeMode string `json:"volumeMode,omitempty"`
	// Name of the mount directory under the class's discovery directory for
	// a Filesystem device; default: the device's base name.
	Name string `json:"name,omitempty"`
	// FSType for a Filesystem device: ext4 (default) or xfs.
	FSType string `json:"fsType,omitempty"`
	// Format allows formatting the device when it is blank.
	Format bool `json:"format,omitempty"`
	// Force allows formatting a device that carries a filesystem or
	// partition signature: it destroys whatever is on it.
	Force bool `json:"force,omitempty"`
	// AllowNonMountPoint publishes a Path that is a plain directory rather
	// than a mount point. It shares the capacity of whatever holds it.
	AllowNonMountPoint bool `json:"allowNonMountPoint,omitempty"`
}

// Target is how problems and logs name the entry.
func (e Entry) Target() string {
	what := "entry without device or path"
	switch {
	case e.Device != "":
		what = "device " + e.Device
	case e.Path != "":
		what = "path " + e.Path
	}
	if e.Node != "" && e.Node != AllNodes {
		what += " on node " + e.Node
	}
	return what
}

// AppliesTo reports whether the entry is meant for node.
func (e Entry) AppliesTo(node string) bool {
	return e.Node == "" || e.Node == AllNodes || e.Node == node
}

// Problem is an inventory entry that cannot be applied, with what to fix.
type Problem struct {
	// Index is the entry's position in the list (0-based), -1 for the document.
	Index   int
	Target  string
	Message string
}

func (p Problem) String() string {
	if p.Index < 0 {
		return p.Message
	}
	return fmt.Sprintf("entry %d (%s): %s", p.Index+1, p.Target, p.Message)
}

type inventoryDoc struct {
	Disks []json.RawMessage `json:"disks"`
}

// ParseInventory decodes the inventory. A document that is not an inventory
// at all is an error; an entry that does not decode is a Problem and the
// other entries still apply. Entries keep their list index.
func ParseInventory(data string) ([]IndexedEntry, []Problem, error) {
	if strings.TrimSpace(data) == "" {
		return nil, nil, nil
	}
	raw, err := yaml.YAMLToJSON([]byte(data))
	if err != nil {
		return nil, nil, fmt.Errorf("inventory %s is not valid YAML: %w", InventoryKey, err)
	}
	var doc inventoryDoc
	if err := decodeStrict(raw, &doc); err != nil {
		return nil, nil, fmt.Errorf("inventory %s: want a document with a \"disks:\" list: %w", InventoryKey, err)
	}
	var (
		entries  []IndexedEntry
		problems []Problem
	)
	for i, r := range doc.Disks {
		var e Entry
		if err := decodeStrict(r, &e); err != nil {
			problems = append(problems, Problem{Index: i, Target: "unreadable entry", Message: fmt.Sprintf("%v (fields: node, device, path, storageClass, volumeMode, name, fsType, format, force, allowNonMountPoint)", err)})
			continue
		}
		entries = append(entries, IndexedEntry{Index: i, Entry: e})
	}
	return entries, problems, nil
}

// decodeStrict decodes like kubectl does: field names are case-sensitive,
// and unknown or duplicate fields are errors, so a misspelt field is
// reported instead of silently ignored.
func decodeStrict(data []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// IndexedEntry is an entry with its position in the list.
type IndexedEntry struct {
	Index int
	Entry
}

// ValidEntry is an entry that passed validation on this node, with its
// defaults filled in and its paths resolved.
type ValidEntry struct {
	IndexedEntry
	Mode corev1.PersistentVolumeMode
	// Resolved is Device or Path with symbolic links resolved.
	Resolved string
	// MountTarget is where a Filesystem device is mounted.
	MountTarget string
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// disk turns the entry into a disk if what it names is there now.
func (e ValidEntry) disk(idx MountIndex) (Disk, bool, string) {
	switch {
	case e.Mode == corev1.PersistentVolumeBlock:
		return Disk{
			Class: e.StorageClass, Name: baseName(e.Device), Path: e.Device,
			Mode: corev1.PersistentVolumeBlock, Device: e.Resolved, Source: SourceInventory,
		}, true, ""
	case e.Device != "":
		m, ok := idx[e.MountTarget]
		if !ok {
			return Disk{}, false, "not mounted yet at " + e.MountTarget
		}
		return Disk{
			Class: e.StorageClass, Name: baseName(e.MountTarget), Path: e.MountTarget,
			Mode: corev1.PersistentVolumeFilesystem, Device: e.Resolved, FSType: m.FSType,
			MountPoint: true, Source: SourceInventory,
		}, true, ""
	default:
		m, mounted := idx[e.Resolved]
		if !mounted && !e.AllowNonMountPoint {
			return Disk{}, false, "no longer a mount point"
		}
		d := Disk{
			Class: e.StorageClass, Name: baseName(e.Path), Path: e.Path,
			Mode: corev1.PersistentVolumeFilesystem, MountPoint: mounted, Source: SourceInventory,
		}
		if mounted {
			d.FSType = m.FSType
			if strings.HasPrefix(m.Source, "/dev/") {
				d.Device = m.Source
			}
		}
		return d, true, ""
	}
}

func baseName(p string) string {
	p = strings.TrimSuffix(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
