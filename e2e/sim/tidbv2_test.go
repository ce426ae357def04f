package sim

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestV2Names_FollowTiDBOperatorV2(t *testing.T) {
	for _, tc := range []struct {
		instance, component, pod, claim, addr string
	}{
		{"basic-5gzwgj", "tikv", "basic-tikv-5gzwgj", "data-basic-tikv-5gzwgj", "basic-tikv-5gzwgj.basic-tikv-peer.db:20160"},
		{"my-kv-abc123", "tikv", "my-kv-tikv-abc123", "data-my-kv-tikv-abc123", "my-kv-tikv-abc123.basic-tikv-peer.db:20160"},
		{"basic-7axwci", "pd", "basic-pd-7axwci", "data-basic-pd-7axwci", "basic-pd-7axwci.basic-tikv-peer.db:20160"},
	} {
		t.Run(tc.instance, func(t *testing.T) {
			pod := V2PodName(tc.instance, tc.component)
			require.Equal(t, tc.pod, pod, "the instance name is split at its last '-'")
			require.Equal(t, tc.claim, V2ClaimName("data", pod))
			require.Equal(t, tc.addr, V2StoreAddress(pod, "basic", "db"))
		})
	}
}

func TestV2CRDs_HoldTheFiveKindsTheControllerAndRegistrarUse(t *testing.T) {
	for _, want := range []string{"clusters.core.pingcap.com", "pdgroups.core.pingcap.com", "pds.core.pingcap.com", "tikvgroups.core.pingcap.com", "tikvs.core.pingcap.com"} {
		require.Contains(t, string(v2CRDs), "name: "+want)
	}
}
