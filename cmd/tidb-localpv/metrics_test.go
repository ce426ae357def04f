package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/tidb-localpv/tidb-localpv/daemon"
	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
)

// metricDoc is one tidb_localpv_* metric: as the binaries register it, or
// as the README's metric table states it.
type metricDoc struct {
	Name     string
	Labels   string // constant, then variable label names, comma-separated
	Type     string
	Binaries string // agent, controller or both
	Help     string
}

// row is the metric as a row of the README's table.
func (m metricDoc) row() string {
	name := m.Name
	if m.Labels != "" {
		name += "{" + m.Labels + "}"
	}
	return fmt.Sprintf("| `%s` | %s | %s | %s |", name, m.Type, m.Binaries, m.Help)
}

// recordingRegisterer keeps what is registered on it, so that the metrics
// can be read from their descriptions: a vector without children yet does
// not show in Gather.
type recordingRegisterer struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registerer.Register(c)
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// agentCollectors and controllerCollectors are what each binary registers:
// runAgent and runController register the process metrics, and the role's
// constructor registers its own.
func agentCollectors(t *testing.T) []prometheus.Collector {
	t.Helper()
	reg := &recordingRegisterer{Registerer: prometheus.NewRegistry()}
	registerProcessMetrics(reg)
	root := t.TempDir()
	_, err := daemon.New(daemon.Config{
		NodeName: "n1", Roots: discovery.Roots{{Class: "tidb-localpv-tikv", Dir: filepath.Join(root, "tidb-localpv-tikv")}},
		InventoryNamespace: "tidb-localpv", InventoryName: "inv", StateDir: filepath.Join(root, "state"), ResyncPeriod: time.Minute,
	}, daemon.Deps{Client: fake.NewClientset(), Registry: reg})
	require.NoError(t, err)
	return reg.collectors
}

func controllerCollectors(t *testing.T) []prometheus.Collector {
	t.Helper()
	reg := &recordingRegisterer{Registerer: prometheus.NewRegistry()}
	registerProcessMetrics(reg)
	_, err := volumecontroller.New(volumecontroller.Config{PollInterval: time.Second, PDCacheTTL: time.Second, Workers: 1},
		volumecontroller.Deps{Client: fake.NewClientset(), Recorder: record.NewFakeRecorder(1), Registry: reg})
	require.NoError(t, err)
	return reg.collectors
}

var (
	descRE       = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*"), help: ("(?:[^"\\]|\\.)*"), unit: "[^"]*", constLabels: \{(.*)\}, variableLabels: \{(.*)\}\}$`)
	constLabelRE = regexp.MustCompile(`(\w+)="(?:[^"\\]|\\.)*"`)
)

// describe reads the tidb_localpv_* metrics of a binary's collectors.
func describe(t *testing.T, binary string, cs []prometheus.Collector) map[string]metricDoc {
	t.Helper()
	out := map[string]metricDoc{}
	for _, c := range cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := descRE.FindStringSubmatch(d.String())
			require.NotNil(t, m, "unexpected description format: %s", d)
			name, err := strconv.Unquote(m[1])
			require.NoError(t, err)
			if !strings.HasPrefix(name, "tidb_localpv_") {
				continue // Go runtime and process metrics
			}
			help, err := strconv.Unquote(m[2])
			require.NoError(t, err)
			var labels []string
			for _, l := range constLabelRE.FindAllStringSubmatch(m[3], -1) {
				labels = append(labels, l[1])
			}
			if m[4] != "" {
				labels = append(labels, strings.Split(m[4], ",")...)
			}
			out[name] = metricDoc{Name: name, Labels: strings.Join(labels, ","), Type: metricType(t, c), Binaries: binary, Help: help}
		}
	}
	return out
}

func metricType(t *testing.T, c prometheus.Collector) string {
	switch c.(type) {
	case *prometheus.GaugeVec:
		return "gauge"
	case *prometheus.CounterVec:
		return "counter"
	case *prometheus.HistogramVec:
		return "histogram"
	}
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	kind := ""
	for m := range ch {
		var pb dto.Metric
		require.NoError(t, m.Write(&pb))
		switch {
		case pb.Gauge != nil:
			kind = "gauge"
		case pb.Counter != nil:
			kind = "counter"
		case pb.Histogram != nil:
			kind = "histogram"
		}
	}
	require.NotEmpty(t, kind, "cannot tell the type of %T", c)
	return kind
}

// registeredMetrics merges both binaries' metrics; one registered by both
// (build info) must be the same in both.
func registeredMetrics(t *testing.T) map[string]metricDoc {
	t.Helper()
	all := describe(t, "agent", agentCollectors(t))
	for name, m := range describe(t, "controller", controllerCollectors(t)) {
		if a, ok := all[name]; ok {
			a.Binaries = m.Binaries
			require.Equal(t, a, m, "%s differs between the binaries", name)
			m.Binaries = "both"
		}
		all[name] = m
	}
	return all
}

// readmeMetrics reads the README's metric table: rows whose first cell is
// `tidb_localpv_…` or `tidb_localpv_…{labels}`.
func readmeMetrics(t *testing.T) map[string]metricDoc {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	out := map[string]metricDoc{}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "| `tidb_localpv_") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		require.Len(t, cells, 4, "README metric row: | `name{labels}` | type | binary | help |: %s", line)
		name, labels, _ := strings.Cut(strings.Trim(cells[0], "`"), "{")
		m := metricDoc{Name: name, Labels: strings.TrimSuffix(labels, "}"), Type: cells[1], Binaries: cells[2], Help: cells[3]}
		_, dup := out[name]
		require.False(t, dup, "%s is in the README twice", name)
		out[name] = m
	}
	return out
}

func TestMetrics_READMETableIsWhatTheBinariesRegister(t *testing.T) {
	registered, documented := registeredMetrics(t), readmeMetrics(t)
	require.NotEmpty(t, documented)
	for _, name := range sortedKeys(registered) {
		m := registered[name]
		require.Contains(t, documented, name, "README lacks this row:\n%s", m.row())
		require.Equal(t, m, documented[name], "README row differs from the registry; it should read:\n%s", m.row())
	}
	for name := range documented {
		require.Contains(t, registered, name, "README documents a metric no binary registers")
	}
}

func TestMetrics_BuildInfoSaysWhichBuildRuns(t *testing.T) {
	reg := prometheus.NewRegistry()
	registerProcessMetrics(reg)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "tidb_localpv_build_info" {
			continue
		}
		require.Len(t, mf.GetMetric(), 1)
		m := mf.GetMetric()[0]
		require.Equal(t, 1.0, m.GetGauge().GetValue())
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		require.Equal(t, version, labels["version"])
		require.True(t, strings.HasPrefix(labels["goversion"], "go"), labels["goversion"])
		require.NotEmpty(t, labels["revision"])
		return
	}
	t.Fatal("no tidb_localpv_build_info")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
