package cluster

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestClusterDNS_AnswersServicesOfTheClusterDomainOnly(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-pd", Namespace: "tidb"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.3.4"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-tikv-peer", Namespace: "tidb"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone}},
	)
	d := &clusterDNS{client: client}
	for _, tc := range []struct {
		name, qname, want string
		err               error
	}{
		{"a service", "demo-pd.tidb.svc.cluster.local.", "10.96.3.4", nil},
		{"case does not matter", "Demo-PD.TIDB.svc.Cluster.Local.", "10.96.3.4", nil},
		{"a service of another namespace", "demo-pd.other.svc.cluster.local.", "", errNoSuchName},
		{"a search-list miss", "demo-pd.tidb.tidb-localpv.svc.cluster.local.", "", errNoSuchName},
		{"a headless service", "demo-tikv-peer.tidb.svc.cluster.local.", "", errNoSuchName},
		{"outside the cluster domain", "example.com.", "", errNoSuchName},
		{"the bare domain", "svc.cluster.local.", "", errNoSuchName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip, err := d.lookup(t.Context(), tc.qname)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, ip.String())
		})
	}
}
