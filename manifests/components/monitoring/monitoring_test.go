// Package monitoring_test checks the monitoring component: the alert rules
// load in Prometheus's own rules parser, the dashboard's queries parse, and
// both use only metrics and labels the binaries serve (as the README's
// metric table states them, which a test of the main module keeps equal to
// the binaries' registries).
package monitoring_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

// targetLabels are the labels a scrape adds to every series: the Prometheus
// Operator's for a PodMonitor, and component and node from podmonitor.yaml.
var targetLabels = []string{"job", "instance", "namespace", "pod", "container", "endpoint", "component", "node"}

// pending are metrics the rules use that another change adds to the
// binaries; each leaves this list once the README documents it.
var pending = map[string][]string{}

// external are series that are not ours but that every scrape has.
var external = map[string][]string{"up": nil}

// metric is one documented metric: its type and labels.
type metric struct {
	kind   string
	labels []string
}

// documented reads the README's metric table.
func documented(t *testing.T) map[string]metric {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "README.md"))
	require.NoError(t, err)
	out := map[string]metric{}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "| `tidb_localpv_") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		require.GreaterOrEqual(t, len(cells), 2, line)
		name, ls, _ := strings.Cut(strings.Trim(cells[0], "`"), "{")
		m := metric{kind: cells[1]}
		if ls = strings.TrimSuffix(ls, "}"); ls != "" {
			m.labels = strings.Split(ls, ",")
		}
		out[name] = m
	}
	require.NotEmpty(t, out, "no metric table in README.md")
	for name := range pending {
		_, done := out[name]
		require.False(t, done, "%s is documented now: remove it from pending", name)
	}
	return out
}

// known resolves a series name (histogram series included) to its labels.
func known(docs map[string]metric, name string) ([]string, bool) {
	if m, ok := docs[name]; ok {
		return m.labels, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if m, found := docs[base]; ok && found && m.kind == "histogram" {
			if suffix == "_bucket" {
				return append(slices.Clone(m.labels), "le"), true
			}
			return m.labels, true
		}
	}
	if ls, ok := pending[name]; ok {
		return ls, true
	}
	ls, ok := external[name]
	return ls, ok
}

var promql = parser.NewParser(parser.Options{})

// checkExpr parses a query and checks every metric, label matcher and
// grouping label it uses against what the binaries serve.
func checkExpr(t *testing.T, docs map[string]metric, where, query string) {
	t.Helper()
	expr, err := promql.ParseExpr(query)
	require.NoError(t, err, "%s: %s", where, query)
	require.NoError(t, usesServedSeries(docs, expr), "%s: %s", where, query)
}

func usesServedSeries(docs map[string]metric, node parser.Node) error {
	var errs []error
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			ls, ok := known(docs, n.Name)
			if !ok {
				errs = append(errs, fmt.Errorf("metric %q is not served by tidb-localpv (not in README.md's table)", n.Name))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != labels.MetricName && !slices.Contains(ls, m.Name) && !slices.Contains(targetLabels, m.Name) {
					errs = append(errs, fmt.Errorf("%s has no label %q (labels: %v, and the target's %v)", n.Name, m.Name, ls, targetLabels))
				}
			}
		case *parser.AggregateExpr:
			have := labelsUnder(docs, n.Expr)
			for _, g := range n.Grouping {
				if !slices.Contains(have, g) {
					errs = append(errs, fmt.Errorf("grouping by %q, which %s does not carry", g, n.Expr))
				}
			}
		}
		return nil
	})
	if len(errs) > 0 {
		return fmt.Errorf("%v", errs)
	}
	return nil
}

// labelsUnder lists the labels the series selected under node may carry.
func labelsUnder(docs map[string]metric, node parser.Node) []string {
	out := slices.Clone(targetLabels)
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			ls, _ := known(docs, vs.Name)
			out = append(out, ls...)
		}
		return nil
	})
	return out
}

// prometheusRule is the part of the PrometheusRule object the Prometheus
// Operator turns into a rules file.
type prometheusRule struct {
	Spec json.RawMessage `json:"spec"`
}

func TestRules_LoadInPrometheusRulesParser(t *testing.T) {
	data, err := os.ReadFile("prometheusrule.yaml")
	require.NoError(t, err)
	var pr prometheusRule
	require.NoError(t, yaml.Unmarshal(data, &pr))
	groups, err := yaml.JSONToYAML(pr.Spec)
	require.NoError(t, err)

	rgs, errs := rulefmt.Parse(groups, false, model.UTF8Validation, promql, nil)
	require.Empty(t, errs, "the rules must load in Prometheus")
	require.NotEmpty(t, rgs.Groups)

	docs := documented(t)
	anchors := docAnchors(t)
	var alerts []string
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Alert, "every rule is an alert")
			alerts = append(alerts, r.Alert)
			checkExpr(t, docs, r.Alert, r.Expr)
			require.Contains(t, []string{"critical", "warning", "info"}, r.Labels["severity"], r.Alert)
			for _, a := range []string{"summary", "description", "runbook_url"} {
				require.NotEmpty(t, r.Annotations[a], "%s: annotation %s", r.Alert, a)
			}
			_, anchor, ok := strings.Cut(r.Annotations["runbook_url"], "docs/operations.md#")
			require.True(t, ok, "%s: the runbook is docs/operations.md", r.Alert)
			require.Contains(t, anchors, anchor, "%s: docs/operations.md has no section #%s", r.Alert, anchor)
		}
	}
	// The alerts the install promises (README, docs/operations.md).
	for _, want := range []string{"TidbLocalPVWipeFailing", "TidbLocalPVRefusalsPilingUp", "TidbLocalPVNoLeader", "TidbLocalPVNoFreeDisk", "TidbLocalPVInvalidInventory", "TidbLocalPVDiskFailed", "TidbLocalPVDiskNotPublished"} {
		require.Contains(t, alerts, want)
	}
}

func TestRules_RefuseAMetricTheBinariesDoNotServe(t *testing.T) {
	docs := documented(t)
	for _, q := range []string{
		`tidb_localpv_no_such_metric > 0`,
		`tidb_localpv_disks{phase="Failed"} > 0`,
		`sum by (reason) (tidb_localpv_disks)`,
		`tidb_localpv_controller_leader_bucket`,
	} {
		expr, err := promql.ParseExpr(q)
		require.NoError(t, err)
		require.Error(t, usesServedSeries(docs, expr), q)
	}
}

// grafanaVar is a dashboard variable in a query: $name, ${name} or
// [[name]]; $__rate_interval and friends are Grafana's own.
var grafanaVar = regexp.MustCompile(`\$__\w+|\$\{\w+\}|\$\w+`)

// labelValues is Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`)

func TestDashboard_QueriesParseAndUseServedMetrics(t *testing.T) {
	data, err := os.ReadFile("dashboard.json")
	require.NoError(t, err)
	var dash struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(data, &dash))
	require.NotEmpty(t, dash.UID, "a stable uid, so links survive re-imports")
	docs := documented(t)

	// Grafana substitutes its variables before Prometheus sees a query.
	substitute := func(q string) string {
		return grafanaVar.ReplaceAllStringFunc(q, func(v string) string {
			if strings.HasPrefix(v, "$__") {
				return "5m"
			}
			return ".*"
		})
	}
	queries := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, target := range p.Targets {
			checkExpr(t, docs, "panel "+p.Title, substitute(target.Expr))
			queries++
		}
	}
	for _, v := range dash.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil || q.Query == "" {
			continue // a datasource variable
		}
		m := labelValues.FindStringSubmatch(q.Query)
		require.NotNil(t, m, "variable %s: %s", v.Name, q.Query)
		checkExpr(t, docs, "variable "+v.Name, substitute(m[1]))
		sel, err := promql.ParseExpr(substitute(m[1]))
		require.NoError(t, err)
		require.Contains(t, labelsUnder(docs, sel), m[2], "variable %s reads label %s", v.Name, m[2])
	}
	require.Greater(t, queries, 10)
}

// docAnchors are the GitHub anchors of docs/operations.md's headings.
func docAnchors(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "operations.md"))
	require.NoError(t, err, "the alerts' runbooks are in docs/operations.md")
	var out []string
	keep := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(data), "\n") {
		h := strings.TrimLeft(line, "#")
		if h == line || !strings.HasPrefix(h, " ") {
			continue
		}
		a := keep.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), "")
		out = append(out, strings.ReplaceAll(a, " ", "-"))
	}
	return out
}
