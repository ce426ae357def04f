package discovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

func TestParseInventory_ReadsEntriesAndKeepsGoodOnesPastABadOne(t *testing.T) {
	doc := `
disks:
- node: n1
  device: /dev/sdb
  storageClass: tidb-localpv-tikv
  format: true
- device: /dev/sdc
  storageClass: tidb-localpv-tikv
  format: maybe
- path: /mnt/pd/a
  storageClass: tidb-localpv-pd
  colour: blue
- path: /mnt/pd/b
  storageClass: tidb-localpv-pd
`
	entries, problems, err := ParseInventory(doc)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	require.Equal(t, 0, entries[0].Index)
	require.Equal(t, "/dev/sdb", entries[0].Device)
	require.True(t, entries[0].Format)
	require.Equal(t, 3, entries[1].Index)
	require.Len(t, problems, 2)
	require.Equal(t, 1, problems[0].Index)
	require.Equal(t, 2, problems[1].Index)
	require.Contains(t, problems[1].Message, "colour")
}

func TestParseInventory_RejectsADocumentThatIsNotAnInventory(t *testing.T) {
	for name, doc := range map[string]string{
		"not yaml":       "disks: [",
		"a bare list":    "- device: /dev/sdb",
		"unknown key":    "disk:\n- device: /dev/sdb",
		"disks not list": "disks: 3",
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := ParseInventory(doc)
			require.Error(t, err)
			require.Contains(t, err.Error(), InventoryKey)
		})
	}
}

func TestParseInventory_EmptyIsNoEntries(t *testing.T) {
	entries, problems, err := ParseInventory("  \n")
	require.NoError(t, err)
	require.Empty(t, entries)
	require.Empty(t, problems)
}

// validatorEnv builds a node with two discovery roots and a fake /dev.
type validatorEnv struct {
	v      Validator
	root   string
	tikv   string
	pd     string
	dev    string
	mounts MountIndex
}

func newValidatorEnv(t *testing.T) validatorEnv {
	t.Helper()
	root := t.TempDir()
	e := validatorEnv{root: root, tikv: filepath.Join(root, "mnt", "tikv"), pd: filepath.Join(root, "mnt", "pd"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{e.tikv, e.pd, e.dev, filepath.Join(e.pd, "mounted"), filepath.Join(e.pd, "plain"), filepath.Join(root, "outside")} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(e.dev, "notadevice"), []byte("x"), 0o600))
	require.NoError(t, os.Symlink(filepath.Join(root, "outside"), filepath.Join(e.pd, "escape")))
	require.NoError(t, os.Symlink("/dev/null", filepath.Join(e.dev, "null")))
	e.mounts = MountIndex{filepath.Join(e.pd, "mounted"): {MountPoint: filepath.Join(e.pd, "mounted"), Source: "/dev/sdz", FSType: "ext4"}}
	e.v = Validator{
		Node:   "n1",
		Roots:  Roots{{Class: "tidb-localpv-tikv", Dir: e.tikv}, {Class: "tidb-localpv-pd", Dir: e.pd}},
		DevDir: e.dev,
		Mounts: e.mounts,
	}
	return e
}

func TestValidate_RefusesEachKindOfBadEntryWithAFix(t *testing.T) {
	e := newValidatorEnv(t)
	cases := []struct {
		name  string
		entry Entry
		want  string
	}{
		{"no class", Entry{Path: e.pd + "/mounted"}, "storageClass is required"},
		{"unknown class", Entry{Path: e.pd + "/mounted", StorageClass: "gold"}, "has no discovery directory"},
		{"neither device nor path", Entry{StorageClass: "tidb-localpv-pd"}, "set device"},
		{"both device and path", Entry{StorageClass: "tidb-localpv-pd", Device: "/dev/x", Path: "/x"}, "not both"},
		{"bad volume mode", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/mounted", VolumeMode: "Raw"}, "use Filesystem or Block"},
		{"relative path", Entry{StorageClass: "tidb-localpv-pd", Path: "mnt/pd/mounted"}, "relative"},
		{"root", Entry{StorageClass: "tidb-localpv-pd", Path: "/"}, "root"},
		{"dot dot", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/../pd/mounted"}, "'..'"},
		{"outside the roots", Entry{StorageClass: "tidb-localpv-pd", Path: e.root + "/outside"}, "outside"},
		{"symlink escaping the root", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/escape"}, "symbolic link"},
		{"path in another class's root", Entry{StorageClass: "tidb-localpv-tikv", Path: e.pd + "/mounted"}, "class tidb-localpv-pd"},
		{"the root itself", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd}, "discovery directory itself"},
		{"not a mount point", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/plain"}, "not a mount point"},
		{"missing path", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/nope"}, "does not exist"},
		{"file where a device is expected", Entry{StorageClass: "tidb-localpv-tikv", Device: e.dev + "/notadevice", Format: true}, "regular file, not a block device"},
		{"character device", Entry{StorageClass: "tidb-localpv-tikv", Device: e.dev + "/null", Format: true}, "symbolic link to /dev/null"},
		{"device outside /dev", Entry{StorageClass: "tidb-localpv-tikv", Device: e.root + "/outside"}, "outside"},
		{"block with fsType", Entry{StorageClass: "tidb-localpv-tikv", Device: e.dev + "/notadevice", VolumeMode: "Block", FSType: "ext4"}, "regular file"},
		{"path with format", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/mounted", Format: true}, "apply to devices only"},
		{"block path", Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/mounted", VolumeMode: "Block"}, "needs a device"},
		{"non-mount-point opt-in on a device", Entry{StorageClass: "tidb-localpv-tikv", Device: e.dev + "/notadevice", AllowNonMountPoint: true}, "path entries only"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			valid, problems := e.v.Validate([]IndexedEntry{{Index: 4, Entry: c.entry}})
			require.Empty(t, valid)
			require.Len(t, problems, 1)
			require.Equal(t, 4, problems[0].Index)
			require.Contains(t, problems[0].Message, c.want)
			require.Contains(t, problems[0].String(), "entry 5")
		})
	}
}

func TestValidate_RefusesForceOnAnEntryForEveryNode(t *testing.T) {
	hostdisk.RequireRoot(t, "make a block device node")
	e := newValidatorEnv(t)
	// A block device node that is never opened: validation only stats it.
	dev := filepath.Join(e.dev, "nvme0n1")
	require.NoError(t, unix.Mknod(dev, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 250))))
	cases := []struct {
		name    string
		node    string
		refused bool
	}{
		{"node omitted", "", true},
		{"node is a wildcard", AllNodes, true},
		{"node named", "n1", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			entry := Entry{Node: c.node, StorageClass: "tidb-localpv-tikv", Device: dev, Format: true, Force: true}
			valid, problems := e.v.Validate([]IndexedEntry{{Index: 0, Entry: entry}})
			if !c.refused {
				require.Empty(t, problems)
				require.Len(t, valid, 1)
				return
			}
			require.Empty(t, valid, "force on every node would erase this device on each of them")
			require.Len(t, problems, 1)
			require.Contains(t, problems[0].Message, "every node")
			require.Contains(t, problems[0].Message, "set node", "the problem says how to fix it")
		})
	}
}

func TestValidate_AcceptsGoodEntriesAndFillsDefaults(t *testing.T) {
	e := newValidatorEnv(t)
	entries := []IndexedEntry{
		{Index: 0, Entry: Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/mounted"}},
		{Index: 1, Entry: Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/plain", AllowNonMountPoint: true}},
		{Index: 2, Entry: Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/mounted", Node: "other"}},
	}
	valid, problems := e.v.Validate(entries)
	require.Empty(t, problems)
	require.Len(t, valid, 2, "the entry for another node is left to that node")
	require.Equal(t, corev1.PersistentVolumeFilesystem, valid[0].Mode)
	require.Equal(t, e.pd+"/mounted", valid[0].Resolved)
}

func TestValidate_RefusesTheSecondOfTwoEntriesForOnePath(t *testing.T) {
	e := newValidatorEnv(t)
	require.NoError(t, os.Symlink(e.pd+"/mounted", e.pd+"/alias"))
	valid, problems := e.v.Validate([]IndexedEntry{
		{Index: 0, Entry: Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/mounted"}},
		{Index: 1, Entry: Entry{StorageClass: "tidb-localpv-pd", Path: e.pd + "/alias"}},
	})
	require.Len(t, valid, 1)
	require.Len(t, problems, 1)
	require.Contains(t, problems[0].Message, "duplicate")
	require.Contains(t, problems[0].Message, "entry 1")
}

func TestParseRoot_RejectsUnusableDirectories(t *testing.T) {
	for _, s := range []string{"tikv", "=/mnt/x", "tikv=", "tikv=mnt/x", "tikv=/"} {
		_, err := ParseRoot(s)
		require.Error(t, err, s)
	}
	r, err := ParseRoot("tidb-localpv-tikv=/mnt/x/")
	require.NoError(t, err)
	require.Equal(t, Root{Class: "tidb-localpv-tikv", Dir: "/mnt/x"}, r)
}

func TestRootsValidate_RejectsOverlapAndDuplicateClasses(t *testing.T) {
	require.ErrorContains(t, Roots{{"a", "/mnt/a"}, {"b", "/mnt/a/b"}}.Validate(), "overlap")
	require.ErrorContains(t, Roots{{"a", "/mnt/a"}, {"a", "/mnt/b"}}.Validate(), "two discovery")
	require.ErrorContains(t, Roots{}.Validate(), "no discovery")
	require.NoError(t, Roots{{"a", "/mnt/a"}, {"b", "/mnt/ab"}}.Validate())
}

func FuzzParseInventory(f *testing.F) {
	f.Add("disks:\n- device: /dev/sdb\n  storageClass: tidb-localpv-tikv\n  format: true\n")
	f.Add("disks:\n- path: /mnt/pd/a\n  storageClass: tidb-localpv-pd\n  allowNonMountPoint: true\n- {}\n")
	f.Add("disks: [{node: '*', device: /dev/../etc/passwd, storageClass: x, volumeMode: Block}]")
	f.Add("disks:\n- device: [1,2]\n")
	f.Add("{disks: null}")
	f.Fuzz(func(t *testing.T, doc string) {
		entries, problems, err := ParseInventory(doc)
		if err != nil {
			require.Empty(t, entries)
			require.Empty(t, problems)
			return
		}
		seen := map[int]bool{}
		for _, e := range entries {
			require.False(t, seen[e.Index], "index %d twice", e.Index)
			seen[e.Index] = true
		}
		for _, p := range problems {
			require.False(t, seen[p.Index], "index %d both entry and problem", p.Index)
			seen[p.Index] = true
			require.NotEmpty(t, p.Message)
		}
		// Validation must never panic and must keep problems and valid
		// entries disjoint, whatever the paths say.
		v := Validator{Node: "n1", Roots: Roots{{Class: "tidb-localpv-tikv", Dir: "/nonexistent/tikv"}}, DevDir: "/nonexistent/dev", Mounts: MountIndex{}}
		valid, bad := v.Validate(entries)
		require.Equal(t, len(entries), len(valid)+len(bad)+countOtherNodes(entries, "n1"))
		for _, ve := range valid {
			require.True(t, strings.HasPrefix(ve.Resolved, "/nonexistent/"))
		}
	})
}

func countOtherNodes(es []IndexedEntry, node string) int {
	n := 0
	for _, e := range es {
		if !e.AppliesTo(node) {
			n++
		}
	}
	return n
}

func TestParseInventory_FieldNamesAreCaseSensitive(t *testing.T) {
	entries, problems, err := ParseInventory("disks:\n- path: /mnt/pd/a\n  storageClass: tidb-localpv-pd\n  allowNonMountpoint: true\n")
	require.NoError(t, err)
	require.Empty(t, entries)
	require.Len(t, problems, 1)
	require.Contains(t, problems[0].Message, "allowNonMountpoint")
}
