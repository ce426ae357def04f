package daemon

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

// blkid returns what a low-level probe finds on dev (TYPE, LABEL, UUID, …);
// an empty map for a blank device.
func blkid(t *testing.T, dev string) map[string]string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return map[string]string{}
	}
	require.NoError(t, err, "blkid: %s", out)
	tags := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			tags[k] = v
		}
	}
	return tags
}

// mountedFrom returns the source mounted at dir, "" if nothing is.
func mountedFrom(t *testing.T, dir string) string {
	t.Helper()
	ms, err := discovery.ProcMountTable{}.Mounts()
	require.NoError(t, err)
	return discovery.IndexMounts(ms)[dir].Source
}

func deviceEntry(dev string, extra string) *corev1.ConfigMap {
	return inventory(fmt.Sprintf("disks:\n- device: %s\n  storageClass: tidb-localpv-tikv\n  name: d0\n%s", dev, extra))
}

func TestReconcile_FormatsABlankInventoryDeviceAndWipesItByReformatting(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	hostdisk.LockMountNamespaces(t) // another package's mount namespace would hold the device
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 256)
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{deviceEntry(dev, "  format: true\n")}})
	target := filepath.Join(h.root, "d0")
	hd.Track("unmount "+target, func() error { return hostdisk.Unmount(target) })

	h.mustReconcile()

	sig := blkid(t, dev)
	require.Equal(t, "ext4", sig["TYPE"])
	require.Equal(t, discovery.FilesystemLabel, sig["LABEL"])
	require.Equal(t, dev, mountedFrom(t, target), "mounted under the class's discovery directory")
	m := h.marker(target)
	require.Equal(t, dev, m.FormattedDevice)
	require.Equal(t, "ext4", m.FSType)
	require.Equal(t, discovery.StateReady, m.State)
	prepared := h.events.withReason(ReasonPrepared)
	require.Len(t, prepared, 1)
	require.Contains(t, prepared[0].Message, "formatted "+dev)
	require.Len(t, h.createActions(), 1)
	pv := h.createActions()[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv, target, m.ID)

	for d := range 20 {
		for f := range 100 {
			writeFile(t, filepath.Join(target, fmt.Sprintf("db-%02d", d), fmt.Sprintf("%04d.sst", f)))
		}
	}
	released := h.release(pv.Name)

	require.NoError(t, h.agent.Recycle(h.ctx, released))

	wiped := h.events.withReason(ReasonWiped)
	require.Len(t, wiped, 1)
	require.Contains(t, wiped[0].Message, "wiped by reformat")
	left, err := discovery.Contents(target)
	require.NoError(t, err)
	require.Empty(t, left)
	after := h.marker(target)
	require.Equal(t, m.ID, after.ID, "the same disk, with the same identity")
	require.Equal(t, discovery.StateReady, after.State)
	require.Equal(t, dev, after.FormattedDevice, "still the agent's own filesystem, so the next wipe may reformat too")
	newSig := blkid(t, dev)
	require.NotEqual(t, sig["UUID"], newSig["UUID"], "a new filesystem")
	require.Equal(t, discovery.FilesystemLabel, newSig["LABEL"])
	require.Equal(t, dev, mountedFrom(t, target))
}

func TestReconcile_RefusesAnInventoryDeviceThatCarriesAFilesystemUnlessForced(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 64)
	require.NoError(t, hostdisk.Mkfs(dev, "ext4"))
	scratch := filepath.Join(base, "scratch")
	require.NoError(t, hd.Mount(dev, scratch, "ext4"))
	writeFile(t, filepath.Join(scratch, "someones", "data"))
	require.NoError(t, hostdisk.Unmount(scratch))
	before := blkid(t, dev)
	require.Equal(t, "ext4", before["TYPE"])
	require.Empty(t, before["LABEL"])

	cm := deviceEntry(dev, "  format: true\n")
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{cm}})
	target := filepath.Join(h.root, "d0")
	hd.Track("unmount "+target, func() error { return hostdisk.Unmount(target) })

	h.mustReconcile()

	refused := h.events.withReason(ReasonInvalidEntry)
	require.Len(t, refused, 1)
	require.Equal(t, invName, refused[0].Object.(*corev1.ConfigMap).Name)
	for _, says := range []string{"entry 1 (device " + dev + ")", "ext4 filesystem", "wipefs -a", "force: true"} {
		require.Contains(t, refused[0].Message, says, "the refusal says what to do")
	}
	require.Empty(t, mountedFrom(t, target))
	require.NoDirExists(t, target)
	require.Empty(t, h.createActions())
	require.Equal(t, before, blkid(t, dev), "nothing on the device changed")
	require.NoError(t, hd.Mount(dev, scratch, "ext4"))
	require.FileExists(t, filepath.Join(scratch, "someones", "data"))
	require.NoError(t, hostdisk.Unmount(scratch))

	forced := deviceEntry(dev, "  format: true\n  force: true\n  node: "+testNode+"\n")
	forced.ResourceVersion = "2"
	require.NoError(t, h.client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), forced, invNamespace))
	h.mustReconcile()

	after := blkid(t, dev)
	require.Equal(t, discovery.FilesystemLabel, after["LABEL"])
	require.NotEqual(t, before["UUID"], after["UUID"])
	require.Equal(t, dev, mountedFrom(t, target))
	left, err := discovery.Contents(target)
	require.NoError(t, err)
	require.Empty(t, left, "force erased what was there")
	require.Equal(t, dev, h.marker(target).FormattedDevice)
	require.Len(t, h.createActions(), 1)
}

func TestReconcile_RemountsTheAgentsOwnFilesystemAfterARebootWithoutFormatting(t *testing.T) {
	hostdisk.RequireRoot(t, "format and mount a loop device")
	base := t.TempDir()
	hd := hostdisk.ForTest(t)
	dev := hostdisk.Loop(t, hd, 64)
	h := newHarness(t, harnessConfig{base: base, realMounts: true, objects: []runtime.Object{deviceEntry(dev, "  format: true\n")}})
	target := filepath.Join(h.root, "d0")
	hd.Track("unmount "+target, func() error { return hostdisk.Unmount(target) })
	h.mustReconcile()
	id := h.marker(target).ID
	uuid := blkid(t, dev)["UUID"]
	writeFile(t, filepath.Join(target, "db", "000001.sst"))
	require.NoError(t, hostdisk.Unmount(target)) // the reboot
	h.client.ClearActions()

	h.mustReconcile()

	require.Equal(t, dev, mountedFrom(t, target))
	require.Equal(t, uuid, blkid(t, dev)["UUID"], "not reformatted")
	require.Equal(t, id, h.marker(target).ID)
	require.FileExists(t, filepath.Join(target, "db", "000001.sst"))
	require.Empty(t, h.writes(), "its PV is adopted")
}
