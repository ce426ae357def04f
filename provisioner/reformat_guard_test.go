package provisioner

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// mkfs destroys everything on a device, so reformatting is allowed only
// for the filesystem the agent made, mounted from that very device, with
// nothing mounted inside it. Each case tries to trick the guard.
func TestReformat_OnlyTheAgentsOwnFilesystemOnItsOwnDevice(t *testing.T) {
	dir := t.TempDir()
	devA, devB := filepath.Join(dir, "devA"), filepath.Join(dir, "devB")
	for _, d := range []string{devA, devB} {
		require.NoError(t, os.WriteFile(d, nil, 0o600))
	}
	require.NoError(t, os.Symlink(devA, filepath.Join(dir, "by-id-A")))
	disk := discovery.Disk{Path: "/mnt/tikv/d0"}
	ours := discovery.Marker{ID: "fs-000000000001", FormattedDevice: devA, FSType: "ext4"}
	mounted := func(src string, extra ...string) discovery.MountIndex {
		idx := discovery.MountIndex{disk.Path: {MountPoint: disk.Path, Source: src, FSType: "ext4"}}
		for _, e := range extra {
			idx[e] = discovery.Mount{MountPoint: e}
		}
		return idx
	}
	devAlsoAt := mounted(devA)
	devAlsoAt["/var/lib/kubelet/pods/x/volumes/d0"] = discovery.Mount{MountPoint: "/var/lib/kubelet/pods/x/volumes/d0", Source: filepath.Join(dir, "by-id-A")}
	asXFS := mounted(devA)
	asXFS[disk.Path] = discovery.Mount{MountPoint: disk.Path, Source: devA, FSType: "xfs"}
	// The marker lives on a disk whose root the consumer owns: it may
	// claim anything.
	forged := func(dev, fsType string) discovery.Marker {
		return discovery.Marker{ID: ours.ID, FormattedDevice: dev, FSType: fsType}
	}
	cases := []struct {
		name   string
		mode   FSWipeMode
		marker discovery.Marker
		idx    discovery.MountIndex
		want   bool
		found  string // the device the disk was found with, if any
	}{
		{"the agent's filesystem on its device", FSWipeAuto, ours, mounted(devA), true, ""},
		{"the same device through a link", FSWipeAuto, ours, mounted(filepath.Join(dir, "by-id-A")), true, ""},
		{"the marker names another device than the one mounted", FSWipeAuto, ours, mounted(devB), false, ""},
		{"a filesystem the agent did not make", FSWipeAuto, discovery.Marker{ID: ours.ID}, mounted(devA), false, ""},
		{"no filesystem type recorded", FSWipeAuto, discovery.Marker{ID: ours.ID, FormattedDevice: devA}, mounted(devA), false, ""},
		{"something mounted inside the disk", FSWipeAuto, ours, mounted(devA, disk.Path+"/nested"), false, ""},
		{"the disk is not mounted at all", FSWipeAuto, ours, discovery.MountIndex{}, false, ""},
		{"the recorded device no longer exists", FSWipeAuto, discovery.Marker{ID: ours.ID, FormattedDevice: filepath.Join(dir, "gone"), FSType: "ext4"}, mounted(devA), false, ""},
		{"contents mode never reformats", FSWipeContents, ours, mounted(devA), false, ""},
		{"the marker names a filesystem type the agent never makes", FSWipeAuto, forged(devA, "../../bin/sh"), mounted(devA), false, ""},
		{"the marker names another type than the one mounted", FSWipeAuto, forged(devA, "ext4"), asXFS, false, ""},
		{"the device is mounted elsewhere too, so unmounting would not free it", FSWipeAuto, ours, devAlsoAt, false, ""},
		{"the disk was found as another device than the one mounted", FSWipeAuto, ours, mounted(devA), false, devB},
		{"the disk was found as the mounted device", FSWipeAuto, ours, mounted(devA), true, filepath.Join(dir, "by-id-A")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &Wiper{FSMode: c.mode}
			d := disk
			d.Device = c.found
			why := w.whyNotReformat(d, c.marker, c.idx)
			require.Equal(t, c.want, why == "", "reason: %s", why)
		})
	}
}
