package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
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
	}
	reg.MustRegister(m.diskHealth, m.disks, m.reconcileTime, m.wipeTime, m.errors, m.inventoryBad, m.inventoryErrors, m.statusWrites)
	return m
}
