package discovery

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
)

type fakeMounts []Mount

func (f fakeMounts) Mounts() ([]Mount, error) { return f, nil }

type fakeSizer struct{}

func (fakeSizer) FilesystemSize(string) (int64, error)  { return 10 << 30, nil }
func (fakeSizer) BlockDeviceSize(string) (int64, error) { return 20 << 30, nil }

func TestScan_FindsOnlyMountPointsDirectlyUnderARoot(t *testing.T) {
	root := t.TempDir()
	tikv := filepath.Join(root, "tikv")
	for _, d := range []string{"disk0", "disk1", "plain", "disk0/nested"} {
		require.NoError(t, os.MkdirAll(filepath.Join(tikv, d), 0o755))
	}
	require.NoError(t, os.Symlink(filepath.Join(tikv, "disk1"), filepath.Join(tikv, "link")))
	require.NoError(t, os.WriteFile(filepath.Join(tikv, "file"), nil, 0o600))
	s := Scanner{
		Roots: Roots{{Class: "tidb-localpv-tikv", Dir: tikv}},
		Mounts: fakeMounts{
			{MountPoint: filepath.Join(tikv, "disk0"), Source: "/dev/sdb", FSType: "ext4"},
			{MountPoint: filepath.Join(tikv, "disk0", "nested"), Source: "tmpfs", FSType: "tmpfs"},
			{MountPoint: filepath.Join(tikv, "disk1"), Source: "tmpfs", FSType: "tmpfs"},
			{MountPoint: filepath.Join(tikv, "link"), Source: "tmpfs", FSType: "tmpfs"},
		},
		Sizer: fakeSizer{},
	}
	res, err := s.Scan(context.Background(), nil)
	require.NoError(t, err)
	require.Len(t, res.Disks, 2)
	require.Equal(t, Disk{Class: "tidb-localpv-tikv", Name: "disk0", Path: filepath.Join(tikv, "disk0"), Mode: corev1.PersistentVolumeFilesystem,
		Device: "/dev/sdb", FSType: "ext4", MountPoint: true, Source: SourceDiscovery, Capacity: 10 << 30}, res.Disks[0])
	require.Equal(t, "", res.Disks[1].Device, "tmpfs has no device")
	require.Equal(t, "not a mount point", res.Skipped[filepath.Join(tikv, "plain")])
	require.Contains(t, res.Skipped[filepath.Join(tikv, "link")], "symbolic link")
}

func TestScan_AddsInventoryDisksAndLetsThemWin(t *testing.T) {
	root := t.TempDir()
	pd := filepath.Join(root, "pd")
	require.NoError(t, os.MkdirAll(filepath.Join(pd, "shared"), 0o755))
	s := Scanner{Roots: Roots{{Class: "tidb-localpv-pd", Dir: pd}}, Mounts: fakeMounts{}, Sizer: fakeSizer{}}
	inv := []ValidEntry{
		{IndexedEntry: IndexedEntry{Entry: Entry{StorageClass: "tidb-localpv-pd", Path: filepath.Join(pd, "shared"), AllowNonMountPoint: true}}, Mode: corev1.PersistentVolumeFilesystem, Resolved: filepath.Join(pd, "shared")},
		{IndexedEntry: IndexedEntry{Entry: Entry{StorageClass: "tidb-localpv-pd", Device: "/dev/loop9", VolumeMode: "Block"}}, Mode: corev1.PersistentVolumeBlock, Resolved: "/dev/loop9"},
		{IndexedEntry: IndexedEntry{Entry: Entry{StorageClass: "tidb-localpv-pd", Device: "/dev/loop8"}}, Mode: corev1.PersistentVolumeFilesystem, Resolved: "/dev/loop8", MountTarget: filepath.Join(pd, "loop8")},
	}
	res, err := s.Scan(context.Background(), inv)
	require.NoError(t, err)
	require.Len(t, res.Disks, 2)
	require.Equal(t, "/dev/loop9", res.Disks[0].Path)
	require.Equal(t, corev1.PersistentVolumeBlock, res.Disks[0].Mode)
	require.Equal(t, int64(20<<30), res.Disks[0].Capacity)
	require.False(t, res.Disks[1].MountPoint)
	require.Contains(t, res.Skipped["device /dev/loop8"], "not mounted yet")
}

func TestMarker_RoundTripsAndRefusesALinkPlantedInItsPlace(t *testing.T) {
	dir := t.TempDir()
	_, ok, err := ReadMarker(dir)
	require.NoError(t, err)
	require.False(t, ok)

	id, err := NewID()
	require.NoError(t, err)
	require.NoError(t, WriteMarker(dir, Marker{ID: id, State: StateWiping}))
	m, ok, err := ReadMarker(dir)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, id, m.ID)
	require.Equal(t, StateWiping, m.State)
	require.Equal(t, 1, m.Version)

	other := t.TempDir()
	require.NoError(t, os.Symlink(filepath.Join(dir, MarkerName), filepath.Join(other, MarkerName)))
	_, _, err = ReadMarker(other)
	require.Error(t, err, "a marker that is a symbolic link must not be trusted")
}

func TestMarker_RejectsCorruptContent(t *testing.T) {
	for name, content := range map[string]string{
		"not json":     "{",
		"bad id":       `{"id":"../../etc","state":"ready"}`,
		"bad state":    `{"id":"fs-0123456789ab","state":"gone"}`,
		"empty object": `{}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, MarkerName), []byte(content), 0o600))
			_, _, err := ReadMarker(dir)
			require.ErrorIs(t, err, ErrCorruptMarker)
		})
	}
}

func TestContents_IgnoresReservedNames(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{MarkerName, LostFound} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, n), 0o755))
	}
	left, err := Contents(dir)
	require.NoError(t, err)
	require.Empty(t, left)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data"), nil, 0o600))
	left, err = Contents(dir)
	require.NoError(t, err)
	require.Equal(t, []string{"data"}, left)
}

func TestBlockIdentity_PrefersWWNThenWWIDThenLoopBackingFile(t *testing.T) {
	root := t.TempDir()
	dev := filepath.Join(root, "dev")
	byID := filepath.Join(dev, "disk", "by-id")
	sys := filepath.Join(root, "sys")
	require.NoError(t, os.MkdirAll(byID, 0o755))
	for _, n := range []string{"sda", "sdb", "loop3"} {
		require.NoError(t, os.WriteFile(filepath.Join(dev, n), nil, 0o600))
		require.NoError(t, os.MkdirAll(filepath.Join(sys, n, "loop"), 0o755))
	}
	require.NoError(t, os.Symlink("../../sda", filepath.Join(byID, "ata-Samsung_123")))
	require.NoError(t, os.Symlink("../../sda", filepath.Join(byID, "wwn-0x5002")))
	require.NoError(t, os.Symlink("../../sda", filepath.Join(byID, "wwn-0x5002-part1")))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "sdb", "wwid"), []byte("naa.600\n"), 0o600))
	backing := filepath.Join(root, "disk.img")
	require.NoError(t, os.WriteFile(backing, nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "loop3", "loop", "backing_file"), []byte(backing+"\n"), 0o600))

	b := BlockIdentity{ByIDDir: byID, SysBlockDir: sys}
	id, src, err := b.Identify(filepath.Join(dev, "sda"))
	require.NoError(t, err)
	require.Equal(t, "by-id:wwn-0x5002", src)
	require.Regexp(t, `^blk-[0-9a-f]{24}$`, id)

	_, src, err = b.Identify(filepath.Join(dev, "sdb"))
	require.NoError(t, err)
	require.Equal(t, "wwid:naa.600", src)

	id1, _, err := b.Identify(filepath.Join(dev, "loop3"))
	require.NoError(t, err)
	// A new backing file at the same path is a new disk.
	require.NoError(t, os.Remove(backing))
	require.NoError(t, os.WriteFile(backing, []byte("new"), 0o600))
	id2, _, err := b.Identify(filepath.Join(dev, "loop3"))
	require.NoError(t, err)
	require.NotEqual(t, id1, id2)

	require.NoError(t, os.WriteFile(filepath.Join(dev, "sdc"), nil, 0o600))
	_, _, err = b.Identify(filepath.Join(dev, "sdc"))
	require.ErrorIs(t, err, ErrNoStableIdentity)
}
