package provisioner

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseHealth_ReadsWhatTheAgentWritesAndRefusesWhatItNeverWould(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		ann     map[string]string
		want    Health
		present bool
		err     string
	}{
		{"absent is healthy", nil, Health{State: HealthHealthy}, false, ""},
		{"failed", map[string]string{AnnHealth: "Failed", AnnHealthReason: "ReadOnly", AnnHealthSince: "2026-12-01T10:00:00Z", AnnHealthMessage: "m"},
			Health{State: HealthFailed, Reason: "ReadOnly", Message: "m", Since: since}, true, ""},
		{"recovered", map[string]string{AnnHealth: "Healthy", AnnHealthSince: "2026-12-01T10:00:00Z"},
			Health{State: HealthHealthy, Since: since}, true, ""},
		{"unknown state", map[string]string{AnnHealth: "Sick"}, Health{State: HealthHealthy}, true, "not Healthy, Warning or Failed"},
		{"reason not a word", map[string]string{AnnHealth: "Failed", AnnHealthReason: "read only"}, Health{State: HealthFailed, Reason: "read only"}, true, "CamelCase"},
		{"bad time", map[string]string{AnnHealth: "Warning", AnnHealthSince: "yesterday"}, Health{State: HealthWarning}, true, AnnHealthSince},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, present, err := ParseHealth(tt.ann)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tt.present, present)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestHealthAnnotations_RoundTripAndARecoveryDropsTheFaultsWords(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.FixedZone("x", 3600))
	failed := Health{State: HealthFailed, Reason: "IOErrors", Message: "I/O error, dev loop3", Since: since}
	ann := map[string]string{}
	for k, v := range failed.Annotations() {
		require.NotNil(t, v, k)
		ann[k] = *v
	}
	got, _, err := ParseHealth(ann)
	require.NoError(t, err)
	require.True(t, got.Same(failed))
	require.True(t, got.Since.Equal(since))
	require.Equal(t, "2026-12-01T09:00:00Z", ann[AnnHealthSince], "written in UTC")

	healthy := Health{State: HealthHealthy, Reason: "ignored", Message: "ignored", Since: since}.Annotations()
	require.Equal(t, "Healthy", *healthy[AnnHealth])
	require.Nil(t, healthy[AnnHealthReason], "removed by the merge patch")
	require.Nil(t, healthy[AnnHealthMessage])
	require.NotNil(t, healthy[AnnHealthSince])
}

func TestHealthState_FailedIsWorseThanWarningIsWorseThanHealthy(t *testing.T) {
	require.True(t, HealthFailed.Worse(HealthWarning))
	require.True(t, HealthWarning.Worse(HealthHealthy))
	require.True(t, HealthWarning.Worse(""))
	require.False(t, HealthHealthy.Worse(HealthFailed))
	require.True(t, Health{}.Same(Health{State: HealthHealthy}), "an unset state is Healthy")
	require.False(t, Health{State: HealthFailed, Reason: "A"}.Same(Health{State: HealthFailed, Reason: "B"}))
	require.True(t, Health{State: HealthWarning}.Abnormal())
}
