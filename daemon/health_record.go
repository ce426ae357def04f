package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// The agent keeps what it learned of each disk's health in its state
// directory (health/<disk-id>.json), on the host and out of every pod's
// reach, so that neither a restart nor a pod can make a failed disk look
// healthy: faults that are over but still matter (kernel I/O errors, new
// filesystem errors), the ext4 error count last seen, the last reported
// state, and — once the disk failed — that it is out of service until an
// operator returns it.

const healthDir = "health"

// healthRecord is one disk's file.
type healthRecord struct {
	Version int `json:"version"`
	// OutOfService is set the first time the disk reads Failed; only the
	// operator's return-to-service annotation clears it.
	OutOfService *faultRecord `json:"outOfService,omitempty"`
	// Faults are past faults that stand until cleared (see clearFaults).
	Faults []faultRecord `json:"faults,omitempty"`
	// Ext4Errors is the ext4 errors_count last seen; Ext4Seen says it was.
	Ext4Errors int64 `json:"ext4Errors,omitempty"`
	Ext4Seen   bool  `json:"ext4Seen,omitempty"`
	// State, Reason and Since are the last reading reported.
	State  string    `json:"state,omitempty"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}

// faultRecord is one fault, by reason: the first time it was seen, the
// last message and how often it came.
type faultRecord struct {
	Reason  string    `json:"reason"`
	Message string    `json:"message"`
	First   time.Time `json:"first"`
	Last    time.Time `json:"last"`
	Count   int       `json:"count"`
	// Mount is the mount (boot ID and mount ID) the fault happened on:
	// filesystem errors clear once the filesystem is mounted anew and
	// stays free of new ones.
	Mount string `json:"mount,omitempty"`
}

// empty reports whether the record says nothing worth a file.
func (r *healthRecord) empty() bool {
	return r.OutOfService == nil && len(r.Faults) == 0 && r.Ext4Errors == 0 && (r.State == "" || r.State == string(provisioner.HealthHealthy))
}

func (a *Agent) healthPath(diskID string) string {
	return filepath.Join(a.cfg.StateDir, healthDir, diskID+".json")
}

// loadHealthRecord reads a disk's record; a missing file is an empty
// record. A file that cannot be read is an error: callers must not take
// it for a healthy disk.
func (a *Agent) loadHealthRecord(diskID string) (*healthRecord, error) {
	data, err := os.ReadFile(a.healthPath(diskID))
	if errors.Is(err, os.ErrNotExist) {
		return &healthRecord{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read health record of disk %s: %w", diskID, err)
	}
	var r healthRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("health record of disk %s: %w", diskID, err)
	}
	return &r, nil
}

// saveHealthRecord writes a record durably, or removes the file of an
// empty one.
func (a *Agent) saveHealthRecord(diskID string, r *healthRecord) error {
	path := a.healthPath(diskID)
	if r.empty() {
		err := os.Remove(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove health record of disk %s: %w", diskID, err)
		}
		return nil
	}
	r.Version = 1
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := writeFileDurably(path, data); err != nil {
		return fmt.Errorf("write health record of disk %s: %w", diskID, err)
	}
	return nil
}
