package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// metrics are the agent's Prometheus series, registered on the registry the
// binary passes in (never the global one).
type metrics struct {
	disks           *prometheus.GaugeVec
	reconcileTime   prometheus.Histogram
	wipeTime        *prometheus.HistogramVec
	errors          *prometheus.CounterVec
	inventoryBad    prometheus.Gauge
	inventoryErrors prometheus.Counter
	statusWrites    prometheus.Counter
	diskHealth      *prometheus.GaugeVec
	capacity        *prometheus.GaugeVec
	phases          *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		disks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tidb_localpv_disks",
			Help: "Disks on this node by storage class and state (available, bound, released, wiping, missing, foreign, unpublished, stalled).",
		}, []string{"class", "state"}),
		reconcileTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tidb_localpv_discovery_duration_seconds",
			Help:    "Time of one discovery pass: inventory, scan, identify, publish.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		wipeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tidb_localpv_wipe_duration_seconds",
			Help:    "Time to wipe one disk, by method (contents, reformat, discard, zero-signatures, command).",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 12),
		}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidb_localpv_errors_total",
			Help: "Errors by operation (scan, publish, wipe, prepare, identify, identify-timeout, health-timeout, delete).",
		}, []string{"op"}),
		inventoryBad: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tidb_localpv_inventory_invalid_entries",
			Help: "Inventory entries for this node that cannot be applied.",
		}),
		inventoryErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tidb_localpv_inventory_errors_total",
			Help: "Inventory problems reported (each distinct problem once per ConfigMap version).",
		}),
		statusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tidb_localpv_localdisk_status_writes_total",
			Help: "LocalDisk status updates written by this agent (only on change: an idle node writes none).",
		}),
		diskHealth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tidb_localpv_disk_health",
			Help: "Disks on this node by storage class and health state (Healthy, Warning, Failed); a bound PV whose disk is missing counts as Failed.",
		}, []string{"class", "state"}),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tidb_localpv_capacity_bytes",
			Help: "Bytes of the disks on this node by storage class and state (as tidb_localpv_disks): free is state available, total the sum over states.",
		}, []string{"class", "state"}),
		phases: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tidb_localpv_disks_by_phase",
			Help: "Disks on this node by storage class and LocalDisk phase (Available, Bound, Released, Wiping, Unpublished, Foreign, Conflict, Missing, Failed).",
		}, []string{"class", "phase"}),
	}
	reg.MustRegister(m.diskHealth, m.disks, m.reconcileTime, m.wipeTime, m.errors, m.inventoryBad, m.inventoryErrors, m.statusWrites)
	reg.MustRegister(m.capacity, m.phases)
	return m
}

// tally is one pass's count of the node's disks, for the gauges.
type tally struct {
	disks, bytes, phases map[[2]string]float64
}

// newTally starts every class at zero available disks, so that "no free
// disk" is a 0 an alert rule can see rather than a series that vanished.
func newTally(classes []string) *tally {
	t := &tally{disks: map[[2]string]float64{}, bytes: map[[2]string]float64{}, phases: map[[2]string]float64{}}
	for _, c := range classes {
		t.disks[[2]string{c, stateAvailable}] = 0
		t.bytes[[2]string{c, stateAvailable}] = 0
		t.phases[[2]string{c, string(v1alpha1.PhaseAvailable)}] = 0
	}
	return t
}

func (t *tally) add(class, state string, phase v1alpha1.Phase, bytes int64) {
	if state == stateOrphan {
		state = stateUnpublished // an orphan waits out a resync, unpublished
	}
	t.disks[[2]string{class, state}]++
	t.bytes[[2]string{class, state}] += float64(bytes)
	t.phases[[2]string{class, string(phase)}]++
}

// publish replaces the gauges with one pass's tally: disks gone since the
// last pass leave no stale series behind.
func (m *metrics) publish(t *tally) {
	for _, g := range []struct {
		vec *prometheus.GaugeVec
		val map[[2]string]float64
	}{{m.disks, t.disks}, {m.capacity, t.bytes}, {m.phases, t.phases}} {
		g.vec.Reset()
		for k, v := range g.val {
			g.vec.WithLabelValues(k[0], k[1]).Set(v)
		}
	}
}

// pvBytes is the capacity a PV states, 0 without one.
func pvBytes(pv *corev1.PersistentVolume) int64 {
	if pv == nil {
		return 0
	}
	q, ok := pv.Spec.Capacity[corev1.ResourceStorage]
	if !ok {
		return 0
	}
	return q.Value()
}
