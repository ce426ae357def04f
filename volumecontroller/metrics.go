package volumecontroller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	owners    *prometheus.GaugeVec
	releases  *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	actions   *prometheus.CounterVec
	pdErrors  *prometheus.CounterVec
	pdLatency *prometheus.HistogramVec
	syncTime  prometheus.Histogram
	leader    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		owners: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tidb_localpv_controller_owners",
			Help: "Disks with a recorded owner, by component and the owner's state in PD (stores by state for tikv).",
		}, []string{"component", "state"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidb_localpv_controller_releases_total",
			Help: "Disks released, by reason (tombstone, member-removed, dead-node, stuck-pod, approved).",
		}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidb_localpv_controller_refusals_total",
			Help: "Destructive actions not taken, by reason (pd-unknown, pd-cluster-mismatch, owner-vanished, owner-unknown, owner-unresolved, owner-alive, store-up, store-undrainable, node-returned, member-listed, live-store-at-address, pd-refused, recheck); each standing refusal counts once per PV.",
		}, []string{"reason"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidb_localpv_controller_actions_total",
			Help: "Actions carried out, by kind (offline-store, release, delete-pod, approve, reclaim-delete, delete-pv, delete-instance).",
		}, []string{"action"}),
		pdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidb_localpv_controller_pd_errors_total",
			Help: "Failed PD API calls, by operation (stores, store, delete_store, cluster_id, members, health, ping, config_replicate).",
		}, []string{"op"}),
		pdLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tidb_localpv_controller_pd_request_duration_seconds",
			Help:    "PD API call latency including retries, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.001, 3, 10),
		}, []string{"op"}),
		syncTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tidb_localpv_controller_reconcile_duration_seconds",
			Help:    "Time to reconcile one PV.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 3, 12),
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tidb_localpv_controller_leader",
			Help: "1 while this replica holds the lease and acts.",
		}),
	}
	reg.MustRegister(m.owners, m.releases, m.refusals, m.actions, m.pdErrors, m.pdLatency, m.syncTime, m.leader)
	return m
}

// ObservePD is the pd.Options.Observer for clients the binary builds.
func (m *metrics) ObservePD(op string, d time.Duration, err error) {
	m.pdLatency.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.pdErrors.WithLabelValues(op).Inc()
	}
}

// ObservePD records a PD call's latency and error; the binary passes it as
// pd.Options.Observer to the clients it dials.
func (c *Controller) ObservePD(op string, d time.Duration, err error) {
	c.metrics.ObservePD(op, d, err)
}
