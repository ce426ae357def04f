package daemon

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
)

// Event reasons the agent records.
const (
	ReasonPublished       = "Published"
	ReasonWiped           = "Wiped"
	ReasonWipeFailed      = "WipeFailed"
	ReasonDiskMissing     = "DiskMissing"
	ReasonDiskFound       = "DiskFound"
	ReasonPVRemoved       = "PVRemoved"
	ReasonDiskNotEmpty    = "DiskNotEmpty"
	ReasonDiskConflict    = "DiskConflict"
	ReasonBadDisk         = "BadDisk"
	ReasonInvalidEntry    = "InvalidInventoryEntry"
	ReasonPrepared        = "DiskPrepared"
	ReasonMissingClass    = "StorageClassMissing"
	ReasonInventoryBroken = "InvalidInventory"
	// ReasonOwnedDiskRepublished: an owned disk without a PV got one back, waiting for approval.
	ReasonOwnedDiskRepublished = "OwnedDiskRepublished"
	// ReasonOwnerRestored: a PV lost its ownership record and got it back from the node's copy.
	ReasonOwnerRestored = "OwnerRecordRestored"
	// ReasonWipeRefused: the node's ownership record forbids the wipe.
	ReasonWipeRefused = "WipeRefused"
)

// reporter records events for conditions a reconcile pass sees again and
// again: once per distinct (object, reason, message), and again every
// repeatStanding while the condition lasts — an Event expires after an
// hour, a standing problem must not vanish from `kubectl get events` while
// it stands (the recorder folds the repeats into one Event with a count).
type reporter struct {
	rec   record.EventRecorder
	clock clock.PassiveClock
	mu    sync.Mutex
	seen  map[string]time.Time
}

// repeatStanding is how often a standing condition is reported again.
const repeatStanding = 30 * time.Minute

func newReporter(rec record.EventRecorder) *reporter {
	return &reporter{rec: rec, clock: clock.RealClock{}, seen: map[string]time.Time{}}
}

// event always records.
func (r *reporter) event(obj runtime.Object, typ, reason, msg string) {
	r.rec.Event(obj, typ, reason, msg)
}

// once records a standing condition the first time it is seen, and again
// every repeatStanding while it is; key names the object and should change
// when the object does (e.g. include its version). It reports whether the
// event was recorded.
func (r *reporter) once(key string, obj runtime.Object, reason, msg string) bool {
	k := key + "\x00" + reason + "\x00" + msg
	now := r.clock.Now()
	r.mu.Lock()
	if len(r.seen) > maxRemembered {
		// Old versions' keys are dead weight; forgetting them at worst
		// repeats one event.
		clear(r.seen)
	}
	last, dup := r.seen[k]
	if dup && now.Sub(last) >= repeatStanding {
		dup = false
	}
	if !dup {
		r.seen[k] = now
	}
	r.mu.Unlock()
	if !dup {
		r.rec.Event(obj, corev1.EventTypeWarning, reason, msg)
	}
	return !dup
}

const maxRemembered = 4096

// forget lets a condition be reported again after it cleared.
func (r *reporter) forget(prefix string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.seen {
		if len(k) >= len(prefix) && k[:len(prefix)] == prefix {
			delete(r.seen, k)
		}
	}
}
