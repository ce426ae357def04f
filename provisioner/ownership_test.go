package provisioner

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestOwnership_RoundTripsThroughALocalDiskWithIDsBeyondInt64(t *testing.T) {
	rec := Ownership{Component: "pd", Cluster: "demo", Pod: "tidb/demo-pd-0", Claim: "uid", ClaimName: "tidb/pd-demo-pd-0",
		Member: "demo-pd-0", MemberID: 1<<63 + 5, ClusterID: 7714128303309438701, State: "Up",
		Seen: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Peers: []uint64{1<<63 + 5, 17}, V2: true}
	d := rec.DiskOwner()
	data, err := json.Marshal(d)
	require.NoError(t, err)
	// The CRD's integer type is int64: IDs that may not fit are strings.
	require.Contains(t, string(data), `"memberID":"9223372036854775813"`)
	require.Contains(t, string(data), `"pdClusterID":"7714128303309438701"`)
	require.Contains(t, string(data), `"peers":["9223372036854775813","17"]`)
	back, ok := OwnershipFromDisk(d)
	require.True(t, ok)
	require.Equal(t, rec, back)
}

func TestOwnership_AnnotationsRoundTrip(t *testing.T) {
	rec := Ownership{Component: "tikv", Cluster: "demo", Pod: "tidb/demo-tikv-0", Claim: "uid", StoreID: 7, ClusterID: 7714128303309438701, State: "Offline", V2: true}
	pv := renderedForTest(rec)
	got, ok := OwnershipOf(pv)
	require.True(t, ok)
	rec.ClaimName = "tidb/tikv-demo-tikv-0"
	require.Equal(t, rec, got)
}

// renderedForTest is a PV of claim tidb/tikv-demo-tikv-0 (UID "uid")
// carrying rec.
func renderedForTest(rec Ownership) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelComponent: rec.Component, LabelCluster: rec.Cluster}, Annotations: map[string]string{}}}
	pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "tidb", Name: "tikv-demo-tikv-0", UID: "uid"}
	for k, v := range rec.Annotations() {
		if v != "" {
			pv.Annotations[k] = v
		}
	}
	return pv
}
