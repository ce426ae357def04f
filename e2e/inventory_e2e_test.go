//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/daemon"
	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// An operator lists a blank device in the inventory: the agent formats it
// (ext4, label tidb-localpv), mounts it under the class's discovery
// directory and publishes it. Bad entries beside it are reported as
// Warning events on the ConfigMap and do not hold the good one up.
func TestInventory_BlankLoopDeviceIsFormattedMountedAndPublished_BadEntryWarns(t *testing.T) {
	t.Parallel()
	env, nodes := startEnv(t, "node-a")
	ctx := t.Context()
	n := nodes["node-a"]
	require.NoError(t, n.StartAgent(ctx))
	require.NoError(t, n.WaitAgentReady(ctx, waitLong))

	dev, err := env.Host.AttachLoop(filepath.Join(env.WorkDir(), "node-a-nvme0.img"), 64)
	require.NoError(t, err)
	// The agent will mount the device there. Undos run newest first, so
	// this unmount comes before the loop device's detach.
	target := filepath.Join(n.ClassDir("tidb-localpv-tikv"), filepath.Base(dev))
	env.Host.Track("unmount "+target+" (mounted by the agent)", func() error { return hostdisk.Unmount(target) })
	require.Empty(t, blkid(t, dev), "a fresh loop device must be blank")

	inventory := fmt.Sprintf(`disks:
- node: node-a
  device: %s
  storageClass: tidb-localpv-tikv
  format: true
- node: node-a
  device: /etc/passwd
  storageClass: tidb-localpv-tikv
  format: true
- node: node-a
  path: /etc
  storageClass: tidb-localpv-tikv
  allowNonMountPoint: true
`, dev)
	edited := time.Now()
	cm, err := env.SetInventory(ctx, inventory)
	require.NoError(t, err)
	pv := waitPV(ctx, t, env, "node-a", target, corev1.VolumeAvailable)
	t.Logf("inventory ConfigMap edited → PV Available for %s: %s", dev, time.Since(edited).Round(time.Millisecond))

	// Formatted by the agent, with its label, and mounted where the class
	// finds it.
	sig := blkid(t, dev)
	require.Equal(t, "ext4", sig["TYPE"], "blkid of %s: %v", dev, sig)
	require.Equal(t, discovery.FilesystemLabel, sig["LABEL"], "blkid of %s: %v", dev, sig)
	require.Equal(t, dev, mountSource(t, target), "%s must be mounted from %s", target, dev)
	m := readMarker(t, target)
	require.Equal(t, dev, m.FormattedDevice, "the marker must record that the agent formatted the device")
	require.Equal(t, "ext4", m.FSType)
	require.Equal(t, m.ID, pv.Labels[provisioner.LabelDisk])
	require.Equal(t, "node-a", affinityNode(t, pv))
	capacity := pv.Spec.Capacity[corev1.ResourceStorage]
	require.Greater(t, capacity.Value(), int64(32<<20), "capacity of a 64 MiB ext4 filesystem")

	// Each bad entry is named in a Warning event on the ConfigMap.
	for _, bad := range []string{"device /etc/passwd on node node-a", "path /etc on node node-a"} {
		var ev corev1.Event
		require.Eventually(t, func() bool {
			evs, err := eventsFor(ctx, env, cm.Namespace, cm.UID, daemon.ReasonInvalidEntry)
			if err != nil {
				return false
			}
			for _, e := range evs {
				if strings.Contains(e.Message, bad) {
					ev = e
					return true
				}
			}
			return false
		}, waitLong, tick, "no %s event on the inventory ConfigMap names %q", daemon.ReasonInvalidEntry, bad)
		require.Equal(t, corev1.EventTypeWarning, ev.Type)
		require.Equal(t, "ConfigMap", ev.InvolvedObject.Kind)
		t.Logf("event: %s %s: %s", ev.Type, ev.Reason, ev.Message)
	}
	// The good entry is reported as prepared, and nothing else was published.
	require.Eventually(t, func() bool {
		evs, err := eventsFor(ctx, env, cm.Namespace, cm.UID, daemon.ReasonPrepared)
		return err == nil && len(evs) == 1 && strings.Contains(evs[0].Message, dev)
	}, waitLong, tick, "no %s event for %s", daemon.ReasonPrepared, dev)
	require.Len(t, pvsOf(ctx, t, env, "node-a"), 1, "only the good entry is a disk")
	bad, err := n.Metric(ctx, "tidb_localpv_inventory_invalid_entries")
	require.NoError(t, err)
	require.Equal(t, 2.0, bad, "invalid inventory entries the agent reports")
}

// blkid probes dev's signatures directly (not blkid's cache); an empty map
// means the device is blank.
func blkid(t *testing.T, dev string) map[string]string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
		return map[string]string{}
	}
	require.NoError(t, err, "blkid %s: %s", dev, out)
	sig := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			sig[k] = v
		}
	}
	return sig
}
