package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

func TestReconcile_ReportsEachBadInventoryEntryOnTheConfigMapAndAppliesTheRest(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "tikv")
	doc := fmt.Sprintf(`
disks:
- path: %[1]s/shared
  storageClass: tidb-localpv-tikv
  allowNonMountPoint: true
- path: /etc
  storageClass: tidb-localpv-tikv
- path: %[1]s/plain
  storageClass: tidb-localpv-tikv
- device: /dev/sdz
  storageClass: no-such-class
- path: %[1]s/typo
  storageClass: tidb-localpv-tikv
  mountOptions: [noatime]
- node: node-b
  path: /elsewhere
  storageClass: tidb-localpv-tikv
`, root)
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{inventory(doc)}})
	for _, d := range []string{"shared", "plain", "typo"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}

	h.mustReconcile()

	creates := h.createActions()
	require.Len(t, creates, 1, "the good entry applies")
	pv := creates[0].GetObject().(*corev1.PersistentVolume)
	requirePublished(t, pv, filepath.Join(root, "shared"), h.marker(filepath.Join(root, "shared")).ID)

	bad := h.events.withReason(ReasonInvalidEntry)
	want := map[string]string{
		"entry 2 (path /etc)":               "outside",
		"entry 3 (path " + root + "/plain)": "allowNonMountPoint",
		"entry 4 (device /dev/sdz)":         "no-such-class",
		"entry 5 (unreadable entry)":        "mountOptions",
	}
	require.Len(t, bad, len(want), "one event per bad entry; entries for other nodes are not this agent's to judge")
	for _, e := range bad {
		require.Equal(t, corev1.EventTypeWarning, e.Type)
		cm, ok := e.Object.(*corev1.ConfigMap)
		require.True(t, ok, "the event is on the inventory ConfigMap, not %T", e.Object)
		require.Equal(t, invName, cm.Name)
		require.Contains(t, e.Message, "the other entries still apply")
	}
	for entry, detail := range want {
		found := false
		for _, e := range bad {
			if strings.Contains(e.Message, entry) && strings.Contains(e.Message, detail) {
				found = true
			}
		}
		require.True(t, found, "no event names %q with %q: %v", entry, detail, bad)
	}
	require.Equal(t, float64(len(want)), h.gauge("tidb_localpv_inventory_invalid_entries"))

	h.mustReconcile()
	require.Len(t, h.events.withReason(ReasonInvalidEntry), len(want), "the same problems are not reported again for the same ConfigMap")
}

func TestReconcile_KeepsThePreviousInventoryInForceWhenTheDocumentIsBroken(t *testing.T) {
	base := t.TempDir()
	shared := filepath.Join(base, "tikv", "shared")
	good := inventory(fmt.Sprintf("disks:\n- path: %s\n  storageClass: tidb-localpv-tikv\n  allowNonMountPoint: true\n", shared))
	h := newHarness(t, harnessConfig{base: base, objects: []runtime.Object{good}})
	require.NoError(t, os.MkdirAll(shared, 0o755))
	h.mustReconcile()
	require.Len(t, h.createActions(), 1)
	pvName := h.createActions()[0].GetObject().(*corev1.PersistentVolume).Name
	h.client.ClearActions()

	broken := good.DeepCopy()
	broken.ResourceVersion = "2"
	broken.Data[discovery.InventoryKey] = "disks: [ {path: " + shared
	require.NoError(t, h.client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), broken, invNamespace))
	h.mustReconcile()

	require.Empty(t, h.writes(), "a typo must not unpublish the node's disks")
	require.Contains(t, h.apiPVs(), pvName)
	events := h.events.withReason(ReasonInventoryBroken)
	require.Len(t, events, 1)
	require.Equal(t, corev1.EventTypeWarning, events[0].Type)
	require.Equal(t, invName, events[0].Object.(*corev1.ConfigMap).Name)
	require.Contains(t, events[0].Message, "previous inventory stays in force")

	// The contrast: a valid inventory without the entry does take it away.
	emptied := good.DeepCopy()
	emptied.ResourceVersion = "3"
	emptied.Data[discovery.InventoryKey] = "disks: []\n"
	require.NoError(t, h.client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), emptied, invNamespace))
	h.mustReconcile()
	require.NotContains(t, h.apiPVs(), pvName)
}
