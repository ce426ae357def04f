package daemon

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// diskHarness is the agent harness with LocalDisk objects on a fake
// dynamic client.
type diskHarness struct {
	*harness
	dyn   *dynamicfake.FakeDynamicClient
	clock *clocktesting.FakeClock
}

func newDiskHarness(t *testing.T, hc harnessConfig) *diskHarness {
	h := newHarness(t, hc)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1alpha1.Resource: v1alpha1.ListKind})
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	h.agent.deps.Dynamic, h.agent.deps.Clock = dyn, clk
	h.agent.cfg.MissingDiskRetention = time.Hour
	return &diskHarness{harness: h, dyn: dyn, clock: clk}
}

// pass runs one reconcile once the LocalDisk cache shows the API.
func (h *diskHarness) pass() {
	h.t.Helper()
	list, err := h.dyn.Tracker().List(v1alpha1.Resource, v1alpha1.GroupVersion.WithKind(v1alpha1.Kind), "")
	require.NoError(h.t, err)
	items, err := meta.ExtractList(list)
	require.NoError(h.t, err)
	var objs []any
	for _, o := range items {
		objs = append(objs, o)
	}
	require.NoError(h.t, h.agent.diskIdx.Replace(objs, ""))
	h.mustReconcile()
}

func (h *diskHarness) disks() map[string]v1alpha1.LocalDisk {
	h.t.Helper()
	list, err := h.dyn.Tracker().List(v1alpha1.Resource, v1alpha1.GroupVersion.WithKind(v1alpha1.Kind), "")
	require.NoError(h.t, err)
	items, err := meta.ExtractList(list)
	require.NoError(h.t, err)
	out := map[string]v1alpha1.LocalDisk{}
	for _, o := range items {
		var ld v1alpha1.LocalDisk
		require.NoError(h.t, runtime.DefaultUnstructuredConverter.FromUnstructured(o.(*unstructured.Unstructured).Object, &ld))
		out[ld.Spec.Path] = ld
	}
	return out
}

func (h *diskHarness) statusWrites() int {
	n := 0
	for _, a := range h.dyn.Actions() {
		if a.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

func TestLocalDisks_EveryDiskIsVisibleWithItsPhaseAndReason(t *testing.T) {
	h := newDiskHarness(t, harnessConfig{})
	fresh := h.newDisk("disk0")
	foreign := h.newDisk("disk1")
	writeFile(t, filepath.Join(foreign, "someones-data"))
	orphan := h.newDisk("disk2")
	writeMarker(t, orphan, idA, discovery.StateReady)
	writeFile(t, filepath.Join(orphan, "db", "000001.sst"))
	h.agent.cfg.ResyncPeriod = time.Minute

	h.pass()
	h.pass()
	got := h.disks()
	require.Len(t, got, 3)
	require.Equal(t, v1alpha1.PhaseAvailable, got[fresh].Status.Phase)
	require.Equal(t, testClass, got[fresh].Spec.StorageClassName)
	require.Equal(t, testNode, got[fresh].Spec.NodeName)
	require.NotEmpty(t, got[fresh].Spec.DiskID)
	require.Equal(t, provisioner.PVName(testNode, "disk0", got[fresh].Spec.DiskID), got[fresh].Status.PersistentVolume)
	require.Equal(t, testCapacity, got[fresh].Status.CapacityBytes)
	require.Equal(t, "10Gi", got[fresh].Status.Capacity)

	require.Equal(t, v1alpha1.PhaseForeign, got[foreign].Status.Phase)
	require.Equal(t, "HoldsDataWithoutIdentity", got[foreign].Status.Reason)
	require.Contains(t, got[foreign].Status.Message, "someones-data")

	require.Equal(t, v1alpha1.PhaseUnpublished, got[orphan].Status.Phase)
	require.Equal(t, "HoldsDataWithoutPV", got[orphan].Status.Reason)
}

func TestLocalDisks_AnIdleNodeWritesNoStatus(t *testing.T) {
	h := newDiskHarness(t, harnessConfig{})
	for _, n := range []string{"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"} {
		h.newDisk(n)
	}
	h.pass()
	h.pass()
	before := h.statusWrites()
	for range 10 {
		h.clock.Step(time.Minute)
		h.pass()
	}
	require.Equal(t, before, h.statusWrites(), "status is written only on change")
}

func TestLocalDisks_AMissingDisksObjectStaysWhileItsPVDoesThenGoesAfterTheRetention(t *testing.T) {
	h := newDiskHarness(t, harnessConfig{})
	disk := h.newDisk("disk0")
	h.pass()
	h.pass()
	require.Equal(t, v1alpha1.PhaseAvailable, h.disks()[disk].Status.Phase)

	// The disk is unmounted: its Available PV goes at once, its LocalDisk
	// is marked Missing and kept for the retention period.
	h.mounts.remove(disk)
	h.pass()
	h.pass()
	ld, ok := h.disks()[disk]
	require.True(t, ok)
	require.Equal(t, v1alpha1.PhaseMissing, ld.Status.Phase)
	h.clock.Step(59 * time.Minute)
	h.pass()
	require.Contains(t, h.disks(), disk)
	h.clock.Step(2 * time.Minute)
	h.pass()
	require.NotContains(t, h.disks(), disk, "gone for good: no PV, not seen for the retention period")
}

func TestLocalDisks_ABoundDisksClaimIsShown(t *testing.T) {
	base := t.TempDir()
	disk := filepath.Join(base, "tikv", "disk0")
	pv := ourPV(t, disk, idA, corev1.VolumeBound)
	h := newDiskHarness(t, harnessConfig{base: base, objects: []runtime.Object{pv}})
	h.newDisk("disk0")
	writeMarker(t, disk, idA, discovery.StateReady)
	h.pass()
	h.pass()
	ld := h.disks()[disk]
	require.Equal(t, v1alpha1.PhaseBound, ld.Status.Phase)
	require.Equal(t, "db/tikv-db-tikv-0", ld.Status.Claim)
}

// BenchmarkLocalDisks_IdleNodeStatusWrites prints the LocalDisk status
// writes an idle node with 8 disks makes per minute: one reconcile pass a
// minute (the resync) plus one every 5 s (the health poll's cadence), on
// a fake clock; the first passes (publishing) are not counted.
func BenchmarkLocalDisks_IdleNodeStatusWrites(b *testing.B) {
	t := &testing.T{}
	h := newDiskHarness(t, harnessConfig{base: b.TempDir()})
	for i := range 8 {
		h.newDisk(fmt.Sprintf("d%d", i))
	}
	h.pass()
	h.pass()
	before := h.statusWrites()
	b.ResetTimer()
	minutes := 0
	for range b.N {
		for range 12 {
			h.clock.Step(5 * time.Second)
			h.pass()
		}
		minutes++
	}
	b.StopTimer()
	b.ReportMetric(float64(h.statusWrites()-before)/float64(minutes), "status-writes/min")
}
