package provisioner

// Disk health, written on a disk's PV by its node agent and read by the
// volume-controller (which tells the claim and the pod using the disk).
const (
	// AnnHealth is Healthy, Warning or Failed.
	AnnHealth = "tidb-localpv.io/health"
	// AnnHealthReason is a CamelCase word (ReadOnlyFilesystem, IOErrors, …).
	AnnHealthReason = "tidb-localpv.io/health-reason"
	// AnnHealthSince is when the state began (RFC 3339).
	AnnHealthSince = "tidb-localpv.io/health-since"
	// AnnHealthMessage says what was seen and what to do.
	AnnHealthMessage = "tidb-localpv.io/health-message"
)

// Health states.
const (
	HealthHealthy = "Healthy"
	HealthWarning = "Warning"
	HealthFailed  = "Failed"
)
