package pdsim

import (
	"fmt"
	"net"
	"sort"
	"time"
)

// PD's numbering of metapb.StoreState and metapb.NodeState.
const (
	stateUp        = 0
	stateOffline   = 1
	stateTombstone = 2

	nodePreparing = 0
	nodeServing   = 1
	nodeRemoving  = 2
	nodeRemoved   = 3
)

const (
	storeVersion  = "26.3.4" // TiKV reports its version without the "v"
	deployPath    = "/var/lib/tikv"
	storeCapacity = 1 << 40   // 1 TiB per simulated store
	regionBytes   = 96 << 20  // TiKV's default region size
	storeBaseUsed = 256 << 20 // RocksDB and raft logs of an empty store
)

// store is the simulator's record of one TiKV store.
type store struct {
	id            uint64
	address       string
	state         int32
	nodeState     int32
	destroyed     bool // DELETE ?force: physically destroyed
	heartbeating  bool // the store heartbeats continuously
	lastHeartbeat time.Time
	startedAt     time.Time
	servingAt     time.Time // when a Preparing store starts Serving
	// regions held at regionsAt; while Offline they drain linearly from
	// there over DrainDelay, unless stuck.
	regions   int
	regionsAt time.Time
	// stuck: Offline, but too few Up stores are left to take its regions,
	// so they stay where they are and the store stays Offline.
	stuck bool
}

// StoreSnapshot is a store as the simulator sees it at one instant.
type StoreSnapshot struct {
	ID                  uint64    `json:"id"`
	Address             string    `json:"address"`
	StatusAddress       string    `json:"status_address"`
	Version             string    `json:"version"`
	State               int       `json:"state"`
	NodeState           int       `json:"node_state"`
	StateName           string    `json:"state_name"`
	PhysicallyDestroyed bool      `json:"physically_destroyed"`
	Heartbeating        bool      `json:"heartbeating"`
	LastHeartbeat       time.Time `json:"last_heartbeat"`
	RegionCount         int       `json:"region_count"`
	LeaderCount         int       `json:"leader_count"`
}

// RegisterStore simulates a TiKV at address joining the cluster and
// heartbeating. A TiKV whose live (not Tombstone) store already has this
// address is the same TiKV restarting: it keeps its id and heartbeats again.
// After the old store is Tombstone the address belongs to a fresh TiKV,
// which gets a new id, as PD allocates. A new store is Preparing for
// ServingAfter, then Serving. The first store bootstraps the cluster.
func (s *Server) RegisterStore(address string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	for _, st := range s.stores {
		if st.address == address && st.state != stateTombstone {
			st.heartbeating, st.lastHeartbeat = true, now
			return st.id
		}
	}
	id := s.nextStoreID
	s.addStoreLocked(id, address, now)
	return id
}

// addStoreLocked puts a store PD has not seen before, heartbeating.
func (s *Server) addStoreLocked(id uint64, address string, now time.Time) {
	st := &store{
		id:            id,
		address:       address,
		nodeState:     nodePreparing,
		heartbeating:  true,
		lastHeartbeat: now,
		startedAt:     now,
		servingAt:     now.Add(s.opts.ServingAfter),
		regionsAt:     now,
	}
	if s.opts.ServingAfter < 0 {
		st.nodeState = nodeServing
	}
	s.stores[id] = st
	s.nextStoreID = max(s.nextStoreID, id+1)
	s.bootstrapped = true
	s.drainsLocked(now)
}

// Heartbeat records one heartbeat. PD refuses heartbeats of a Tombstone
// store (ErrTombstone).
func (s *Server) Heartbeat(id uint64) error {
	return s.withStore(id, func(st *store, now time.Time) error {
		if st.state == stateTombstone {
			return fmt.Errorf("store %d: %w", id, ErrTombstone)
		}
		st.lastHeartbeat = now
		return nil
	})
}

// StopHeartbeats makes the store fall silent: after DisconnectedAfter PD
// names it Disconnected, after DownAfter Down; its state stays Up (0).
func (s *Server) StopHeartbeats(id uint64) error {
	return s.withStore(id, func(st *store, now time.Time) error {
		if st.heartbeating {
			st.heartbeating, st.lastHeartbeat = false, now
		}
		return nil
	})
}

// ResumeHeartbeats makes a silent store heartbeat continuously again.
func (s *Server) ResumeHeartbeats(id uint64) error {
	return s.withStore(id, func(st *store, now time.Time) error {
		if st.state == stateTombstone {
			return fmt.Errorf("store %d: %w", id, ErrTombstone)
		}
		st.heartbeating, st.lastHeartbeat = true, now
		return nil
	})
}

// SetRegions sets how many regions the store holds now. On an Offline
// store draining restarts from n.
func (s *Server) SetRegions(id uint64, n int) error {
	if n < 0 {
		return fmt.Errorf("store %d: negative region count %d", id, n)
	}
	return s.withStore(id, func(st *store, now time.Time) error {
		st.regions, st.regionsAt, st.stuck = n, now, false
		s.drainsLocked(now)
		return nil
	})
}

// Store returns a snapshot of one store; false when PD has no record of it.
func (s *Server) Store(id uint64) (StoreSnapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	st, ok := s.stores[id]
	if !ok {
		return StoreSnapshot{}, false
	}
	return s.snapshotLocked(st, now), true
}

// Stores returns snapshots of every store PD has a record of, by id.
func (s *Server) Stores() []StoreSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	out := make([]StoreSnapshot, 0, len(s.stores))
	for _, st := range s.sortedStoresLocked() {
		out = append(out, s.snapshotLocked(st, now))
	}
	return out
}

func (s *Server) withStore(id uint64, f func(*store, time.Time) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	st, ok := s.stores[id]
	if !ok {
		return fmt.Errorf("store %d: %w", id, ErrNotFound)
	}
	return f(st, now)
}

func (s *Server) sortedStoresLocked() []*store {
	out := make([]*store, 0, len(s.stores))
	for _, st := range s.stores {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// advanceLocked brings Preparing stores to Serving and buries every Offline
// store whose burial time has come. Both times are pure functions of state
// that only changes on a request or control call, so doing this lazily
// gives the same history as a PD checking on a ticker.
func (s *Server) advanceLocked(now time.Time) {
	for _, st := range s.stores {
		if st.state == stateUp && st.nodeState == nodePreparing && !now.Before(st.servingAt) {
			st.nodeState = nodeServing
		}
		if st.state != stateOffline || st.stuck {
			continue
		}
		at := s.tombstoneAt(st)
		if now.Before(at) {
			continue
		}
		if st.heartbeating {
			// PD rejects a buried store's heartbeats; its last accepted one
			// was at burial.
			st.heartbeating, st.lastHeartbeat = false, at
		}
		st.state, st.nodeState = stateTombstone, nodeRemoved
		st.regions, st.regionsAt = 0, at
	}
}

// drainsLocked decides, after the set of Up stores or a store's regions
// changed, which Offline stores can move their regions away. Each region
// needs max-replicas Up stores to hold its replicas; with fewer (counted as
// in PD's removal check, Disconnected and Down stores included) its
// replicas have nowhere to go, and a store holding any stays Offline until
// that changes: for ever, if nothing does. Draining resumes from where it
// stopped.
func (s *Server) drainsLocked(now time.Time) {
	up := s.countLocked(stateUp)
	for _, st := range s.stores {
		if st.state != stateOffline {
			continue
		}
		left := s.regionsLocked(st, now)
		stuck := left > 0 && up < s.opts.MaxReplicas
		if stuck != st.stuck {
			st.regions, st.regionsAt, st.stuck = left, now, stuck
		}
	}
}

func (s *Server) drainedAt(st *store) time.Time {
	if st.regions == 0 {
		return st.regionsAt
	}
	return st.regionsAt.Add(s.opts.DrainDelay)
}

// tombstoneAt is the first check tick strictly after the store drained:
// like PD, a store just deleted is always seen Offline for a while, even
// when it holds no regions.
func (s *Server) tombstoneAt(st *store) time.Time {
	since := s.drainedAt(st).Sub(s.epoch)
	if since < 0 {
		return s.epoch
	}
	every := s.opts.CheckInterval
	return s.epoch.Add((since/every + 1) * every)
}

func (s *Server) regionsLocked(st *store, now time.Time) int {
	if st.state != stateOffline || st.regions == 0 || st.stuck {
		return st.regions
	}
	left := s.drainedAt(st).Sub(now)
	if left <= 0 {
		return 0
	}
	// Round up: a store is not empty until its last region moved.
	n := (int64(st.regions)*int64(left) + int64(s.opts.DrainDelay) - 1) / int64(s.opts.DrainDelay)
	return int(min(n, int64(st.regions)))
}

func (s *Server) lastHeartbeatLocked(st *store, now time.Time) time.Time {
	if st.heartbeating {
		return now
	}
	return st.lastHeartbeat
}

// stateNameLocked follows PD: Up stores are renamed by heartbeat silence
// (strictly longer than the threshold); Offline and Tombstone never are.
func (s *Server) stateNameLocked(st *store, now time.Time) string {
	switch st.state {
	case stateOffline:
		return "Offline"
	case stateTombstone:
		return "Tombstone"
	}
	silent := now.Sub(s.lastHeartbeatLocked(st, now))
	switch {
	case silent > s.opts.DownAfter:
		return "Down"
	case silent > s.opts.DisconnectedAfter:
		return "Disconnected"
	}
	return "Up"
}

func (s *Server) snapshotLocked(st *store, now time.Time) StoreSnapshot {
	regions := s.regionsLocked(st, now)
	return StoreSnapshot{
		ID:                  st.id,
		Address:             st.address,
		StatusAddress:       statusAddress(st.address),
		Version:             storeVersion,
		State:               int(st.state),
		NodeState:           int(st.nodeState),
		StateName:           s.stateNameLocked(st, now),
		PhysicallyDestroyed: st.destroyed,
		Heartbeating:        st.heartbeating,
		LastHeartbeat:       s.lastHeartbeatLocked(st, now),
		RegionCount:         regions,
		LeaderCount:         regions / 3,
	}
}

// statusAddress is TiKV's status port next to its advertised address.
func statusAddress(address string) string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	return net.JoinHostPort(host, "20180")
}

// DeleteRequests is how many times DELETE /store/{id} was requested.
func (s *Server) DeleteRequests(id uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deletes[id]
}
