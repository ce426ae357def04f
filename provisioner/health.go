package provisioner

import (
	"fmt"
	"regexp"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Disk health, as the node agent reads it and the volume-controller acts on
// it. The agent writes the reading on the disk's PV (these annotations),
// on its LocalDisk (status.health) and as events on the PV; the
// controller reads the annotations and raises the same events on the claim
// and the pod. Nothing else is shared.
const (
	// AnnHealth is Healthy, Warning or Failed. A PV without it has never
	// been found unhealthy.
	AnnHealth = "tidb-localpv.io/health"
	// AnnHealthReason is a CamelCase word for the worst finding (ReadOnly,
	// IOErrors, …); absent when Healthy.
	AnnHealthReason = "tidb-localpv.io/health-reason"
	// AnnHealthSince is when the state (or reason) last changed, RFC 3339.
	AnnHealthSince = "tidb-localpv.io/health-since"
	// AnnHealthMessage says what was found and what to do; absent when
	// Healthy.
	AnnHealthMessage = "tidb-localpv.io/health-message"
	// AnnReturnToService, set to "true" on a LocalDisk by an operator, puts
	// a disk that failed back into the pool: the agent clears its record
	// and the annotation, and the disk is wiped and published as usual.
	AnnReturnToService = "tidb-localpv.io/return-to-service"
)

// Event reasons of volume health: Kubernetes' CSI volume-health reasons,
// so tools that watch for them see ours too.
const (
	// ReasonVolumeConditionAbnormal (Warning): the disk is Failed or Warning.
	ReasonVolumeConditionAbnormal = "VolumeConditionAbnormal"
	// ReasonVolumeConditionNormal (Normal): the disk recovered.
	ReasonVolumeConditionNormal = "VolumeConditionNormal"
)

// HealthState is the agent's verdict on a disk.
type HealthState string

// Health states, from best to worst.
const (
	// HealthHealthy: nothing wrong found.
	HealthHealthy HealthState = "Healthy"
	// HealthWarning: usable, but needs attention (nearly full, errors
	// recorded before the agent watched).
	HealthWarning HealthState = "Warning"
	// HealthFailed: the disk cannot be trusted with data (read-only, I/O
	// errors, shut down, gone, SMART failing).
	HealthFailed HealthState = "Failed"
)

// Worse reports whether s is worse than o.
func (s HealthState) Worse(o HealthState) bool { return s.rank() > o.rank() }

func (s HealthState) rank() int {
	switch s {
	case HealthWarning:
		return 1
	case HealthFailed:
		return 2
	}
	return 0
}

// Health is one reading of a disk's health.
type Health struct {
	State   HealthState
	Reason  string
	Message string
	// Since is when State or Reason last changed; zero when never read.
	Since time.Time
}

// Abnormal reports whether the reading is Warning or Failed.
func (h Health) Abnormal() bool { return h.State == HealthWarning || h.State == HealthFailed }

// Same reports whether two readings say the same (state and reason): a
// changed message alone is not a new condition.
func (h Health) Same(o Health) bool { return h.normal() == o.normal() && h.Reason == o.Reason }

func (h Health) normal() HealthState {
	if h.State == "" {
		return HealthHealthy
	}
	return h.State
}

var reasonRE = regexp.MustCompile(`^[A-Z][A-Za-z0-9]*$`)

// ParseHealth reads the health annotations. Absent annotations are a
// Healthy reading with a zero Since and ok=false.
func ParseHealth(ann map[string]string) (h Health, ok bool, err error) {
	state, ok := ann[AnnHealth]
	if !ok {
		return Health{State: HealthHealthy}, false, nil
	}
	h = Health{State: HealthState(state), Reason: ann[AnnHealthReason], Message: ann[AnnHealthMessage]}
	switch h.State {
	case HealthHealthy, HealthWarning, HealthFailed:
	default:
		return Health{State: HealthHealthy}, true, fmt.Errorf("annotation %s: %q is not Healthy, Warning or Failed", AnnHealth, state)
	}
	if h.Reason != "" && !reasonRE.MatchString(h.Reason) {
		return h, true, fmt.Errorf("annotation %s: %q is not a CamelCase word", AnnHealthReason, h.Reason)
	}
	if s := ann[AnnHealthSince]; s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return h, true, fmt.Errorf("annotation %s: %w", AnnHealthSince, err)
		}
		h.Since = t
	}
	return h, true, nil
}

// HealthOf reads a PV's health annotations.
func HealthOf(pv *corev1.PersistentVolume) (Health, bool, error) {
	return ParseHealth(pv.Annotations)
}

// Annotations renders the reading as annotation values; a nil value
// removes the key (for a merge patch), so a Healthy reading drops the
// reason and message of the fault it recovered from.
func (h Health) Annotations() map[string]*string {
	str := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	out := map[string]*string{
		AnnHealth:        str(string(h.normal())),
		AnnHealthReason:  str(h.Reason),
		AnnHealthMessage: str(h.Message),
		AnnHealthSince:   nil,
	}
	if !h.Since.IsZero() {
		out[AnnHealthSince] = str(h.Since.UTC().Format(time.RFC3339))
	}
	if h.normal() == HealthHealthy {
		out[AnnHealthReason], out[AnnHealthMessage] = nil, nil
	}
	return out
}
