package daemon

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
)

// series reads a labelled gauge from the agent's registry: label values
// joined by "/" → value.
func (h *harness) series(name string) map[string]float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(h.t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := ""
			for i, l := range m.GetLabel() {
				if i > 0 {
					key += "/"
				}
				key += l.GetValue()
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

func TestMetrics_AClassWithoutDisksShowsZeroFreeRatherThanNothing(t *testing.T) {
	h := newHarness(t, harnessConfig{})

	h.mustReconcile()

	require.Equal(t, map[string]float64{"tidb-localpv-tikv/available": 0}, h.series("tidb_localpv_disks"))
	require.Equal(t, map[string]float64{"tidb-localpv-tikv/available": 0}, h.series("tidb_localpv_capacity_bytes"))
	require.Equal(t, map[string]float64{"tidb-localpv-tikv/Available": 0}, h.series("tidb_localpv_disks_by_phase"))
}

func TestMetrics_CountDisksAndBytesByStateAndPhase(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.newDisk("free")
	bound := h.newDisk("bound")
	h.mustReconcile()
	for _, pv := range h.apiPVs() {
		if pv.Spec.Local.Path == bound {
			pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "tidb", Name: "tikv-0", UID: "claim-uid"}
			pv.Status.Phase = corev1.VolumeBound
			h.updatePV(pv)
		}
	}
	h.newDisk("gone")
	h.mustReconcile()
	h.mounts.remove(h.root + "/gone")

	h.mustReconcile()

	require.Equal(t, map[string]float64{"tidb-localpv-tikv/available": 1, "tidb-localpv-tikv/bound": 1, "tidb-localpv-tikv/missing": 1},
		h.series("tidb_localpv_disks"), "free, bound, and the available PV of a vanished disk")
	bytes := h.series("tidb_localpv_capacity_bytes")
	require.Equal(t, float64(testCapacity), bytes["tidb-localpv-tikv/available"], "free bytes")
	require.Equal(t, float64(testCapacity), bytes["tidb-localpv-tikv/bound"])
	require.Equal(t, float64(testCapacity), bytes["tidb-localpv-tikv/missing"], "a missing disk's size comes from its PV")
	phases := h.series("tidb_localpv_disks_by_phase")
	require.Equal(t, 1.0, phases["tidb-localpv-tikv/Available"])
	require.Equal(t, 1.0, phases["tidb-localpv-tikv/Bound"])
	require.Equal(t, 1.0, phases["tidb-localpv-tikv/Missing"])
}
