package pd_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

func TestEndpointTemplate_Renders(t *testing.T) {
	labels := map[string]string{
		"app.kubernetes.io/instance": "demo",
		"tidb.pingcap.com/cluster":   "basic_1",
		"zone":                       "eu-1a",
	}
	for _, tc := range []struct{ tmpl, want string }{
		{pd.DefaultEndpointTemplate, "http://demo-pd.tidb:2379"},
		{"https://{instance}-pd.{namespace}.svc.cluster.local:2379/", "https://demo-pd.tidb.svc.cluster.local:2379/"},
		{"http://{label:tidb.pingcap.com/cluster}-pd-{label:zone}.{namespace}:2379", "http://basic_1-pd-eu-1a.tidb:2379"},
		{"http://pd.example.com:2379", "http://pd.example.com:2379"},
	} {
		t.Run(tc.tmpl, func(t *testing.T) {
			tmpl, err := pd.ParseEndpointTemplate(tc.tmpl)
			require.NoError(t, err)
			require.Equal(t, tc.tmpl, tmpl.String())
			got, err := tmpl.Render(labels, "tidb")
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestParseEndpointTemplate_Rejects(t *testing.T) {
	for _, tc := range []struct{ tmpl, wantErr string }{
		{"", "empty"},
		{"http://{cluster}-pd:2379", "unknown placeholder {cluster}"},
		{"http://{Instance}-pd:2379", "unknown placeholder {Instance}"},
		{"http://{instance-pd:2379", "unclosed '{'"},
		{"http://{instance{namespace}}:2379", "unclosed '{'"},
		{"http://instance}-pd:2379", "'}' without '{'"},
		{"http://{label:}-pd:2379", "invalid label key"},
		{"http://{label:a b}-pd:2379", "invalid label key"},
		{"http://{label:/x}-pd:2379", "invalid label key"},
		{"ftp://{instance}-pd:2379", "scheme must be http or https"},
		{"{instance}-pd.{namespace}:2379", "scheme must be http or https"},
		{"{label:url}", "scheme must be http or https"},
		{"http:///pd", "no host"},
	} {
		t.Run(tc.tmpl, func(t *testing.T) {
			_, err := pd.ParseEndpointTemplate(tc.tmpl)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestEndpointTemplate_RenderErrors(t *testing.T) {
	tmpl, err := pd.ParseEndpointTemplate("http://{instance}-pd.{namespace}:{label:port}")
	require.NoError(t, err)
	for _, tc := range []struct {
		name      string
		labels    map[string]string
		namespace string
		wantErr   string
	}{
		{"missing instance", map[string]string{"port": "2379"}, "tidb", `label "app.kubernetes.io/instance" is missing`},
		{"empty instance", map[string]string{"app.kubernetes.io/instance": "", "port": "2379"}, "tidb", `label "app.kubernetes.io/instance" is missing`},
		{"missing custom", map[string]string{"app.kubernetes.io/instance": "demo"}, "tidb", `label "port" is missing`},
		{"no namespace", map[string]string{"app.kubernetes.io/instance": "demo", "port": "2379"}, "", "namespace"},
		{"host injection", map[string]string{"app.kubernetes.io/instance": "evil.com/x#", "port": "2379"}, "tidb", "not a valid label value"},
		{"userinfo injection", map[string]string{"app.kubernetes.io/instance": "a@evil", "port": "2379"}, "tidb", "not a valid label value"},
		{"bad port", map[string]string{"app.kubernetes.io/instance": "demo", "port": "http"}, "tidb", "invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tmpl.Render(tc.labels, tc.namespace)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}

	var zero pd.EndpointTemplate
	_, err = zero.Render(nil, "tidb")
	require.ErrorContains(t, err, "empty")
}
