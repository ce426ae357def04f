package pd

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// StoreState is PD's metapb.StoreState, the `state` field of a store.
type StoreState int32

// Store states as PD numbers them.
const (
	StoreUp        StoreState = 0
	StoreOffline   StoreState = 1
	StoreTombstone StoreState = 2
)

// String returns PD's name for the state.
func (s StoreState) String() string {
	switch s {
	case StoreUp:
		return "Up"
	case StoreOffline:
		return "Offline"
	case StoreTombstone:
		return "Tombstone"
	}
	return fmt.Sprintf("StoreState(%d)", int32(s))
}

// NodeState is PD's metapb.NodeState, the `node_state` field of a store.
type NodeState int32

// Node states as PD numbers them.
const (
	NodePreparing NodeState = 0
	NodeServing   NodeState = 1
	NodeRemoving  NodeState = 2
	NodeRemoved   NodeState = 3
)

// String returns PD's name for the node state.
func (s NodeState) String() string {
	switch s {
	case NodePreparing:
		return "Preparing"
	case NodeServing:
		return "Serving"
	case NodeRemoving:
		return "Removing"
	case NodeRemoved:
		return "Removed"
	}
	return fmt.Sprintf("NodeState(%d)", int32(s))
}

// Phase is the controller's reading of a store's lifecycle, derived from
// state, node_state and state_name together.
type Phase int

// Phases. The zero value is PhaseUnknown so that a Phase nobody computed
// never looks like permission to act.
const (
	PhaseUnknown Phase = iota
	PhaseUp
	PhaseDisconnected
	PhaseDown
	PhaseOffline
	PhaseTombstone
)

// String returns the phase's name as PD spells the matching state_name.
func (p Phase) String() string {
	switch p {
	case PhaseUp:
		return "Up"
	case PhaseDisconnected:
		return "Disconnected"
	case PhaseDown:
		return "Down"
	case PhaseOffline:
		return "Offline"
	case PhaseTombstone:
		return "Tombstone"
	}
	return "Unknown"
}

// phaseByName maps the state_name values PD documents, case-insensitively.
func phaseByName(name string) (Phase, bool) {
	for _, p := range []Phase{PhaseUp, PhaseDisconnected, PhaseDown, PhaseOffline, PhaseTombstone} {
		if strings.EqualFold(name, p.String()) {
			return p, true
		}
	}
	return PhaseUnknown, false
}

// StoreInfo is one TiKV (or TiFlash) store as PD reports it.
type StoreInfo struct {
	ID            uint64
	Address       string
	StatusAddress string
	Version       string
	State         StoreState
	NodeState     NodeState
	// StateName is PD's display state; it is the only field that tells
	// Disconnected and Down apart from Up (all three keep state 0).
	StateName     string
	LastHeartbeat time.Time
	// StartTime is when the TiKV process started (zero when PD omits it).
	StartTime   time.Time
	RegionCount int
}

// PodName returns the first DNS label of the store's advertised address,
// which is the pod name for stores deployed by TiDB Operator
// (`<pod>.<cluster>-tikv-peer.<ns>.svc:20160`). It returns "" when the address
// is an IP literal or empty: no pod can be derived from those.
func (s StoreInfo) PodName() string {
	host := s.Address
	if strings.HasPrefix(host, "[") {
		return "" // bracketed IPv6 literal
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if net.ParseIP(host) != nil {
		return ""
	}
	if i := strings.IndexAny(host, ".:"); i >= 0 {
		host = host[:i]
	}
	return host
}

// IsTombstone reports whether any of the three fields says Tombstone. It is
// deliberately liberal (older PDs omit node_state, some omit state_name);
// decisions that destroy data should use Phase, which also requires the
// fields to agree.
func (s StoreInfo) IsTombstone() bool {
	return s.State == StoreTombstone || s.NodeState == NodeRemoved ||
		strings.EqualFold(strings.TrimSpace(s.StateName), "Tombstone")
}

// Phase derives the store's lifecycle phase. A known state_name wins, but
// only if state/node_state agree with it; without a state_name the numbers
// decide. Anything inconsistent or unrecognised is PhaseUnknown, which the
// controller treats as "do nothing destructive".
func (s StoreInfo) Phase() Phase {
	numeric := phaseFromNumbers(s.State, s.NodeState)
	name := strings.TrimSpace(s.StateName)
	if name == "" {
		return numeric
	}
	named, ok := phaseByName(name)
	if !ok {
		return PhaseUnknown
	}
	switch named {
	case PhaseUp, PhaseDisconnected, PhaseDown:
		// PD only renames Up stores to Disconnected/Down; state stays 0.
		if numeric == PhaseUp {
			return named
		}
	case PhaseOffline, PhaseTombstone:
		if numeric == named {
			return named
		}
	}
	return PhaseUnknown
}

// phaseFromNumbers maps state and node_state. node_state 0 is accepted with
// any state because PDs older than node_state omit the field (decoded as 0).
func phaseFromNumbers(state StoreState, node NodeState) Phase {
	switch {
	case state == StoreUp && (node == NodePreparing || node == NodeServing):
		return PhaseUp
	case state == StoreOffline && (node == NodePreparing || node == NodeRemoving):
		return PhaseOffline
	case state == StoreTombstone && (node == NodePreparing || node == NodeRemoved):
		return PhaseTombstone
	}
	return PhaseUnknown
}

// Member is one PD member.
type Member struct {
	Name       string
	MemberID   uint64
	PeerURLs   []string
	ClientURLs []string
}

// Members is PD's member list and its current leader.
type Members struct {
	ClusterID uint64
	Members   []Member
	// Leader is nil while PD has no leader (e.g. during an election).
	Leader *Member
}

// MemberHealth is one entry of PD's health report.
type MemberHealth struct {
	Name       string
	MemberID   uint64
	ClientURLs []string
	Health     bool
}
