package pdsim

import (
	"errors"
	"fmt"
)

// RebuildOptions describe the PD that Rebuild puts in place of the old one.
type RebuildOptions struct {
	// ClusterID is the rebuilt cluster's ID; it must not be zero. A PD
	// rebuilt from scratch picks a new one; pd-recover is told the old one.
	ClusterID uint64
	// Members are the rebuilt PD's member names, the first one leading;
	// they join with new member IDs. Nil means the names the PD had.
	Members []string
	// NextStoreID is the ID the next new store gets. Zero means 1: a PD
	// built from scratch hands out the old cluster's store IDs again, to
	// other TiKVs. pd-recover's -alloc-id sets it above every old ID.
	NextStoreID uint64
}

// ClusterID returns the ID PD reports in GET /cluster and the members
// header.
func (s *Server) ClusterID() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clusterID
}

// Rebuild replaces the PD with one rebuilt from scratch, as after every PD
// member lost its data: every store, Tombstones included, and every member
// is forgotten, and store requests answer "not bootstrapped" until a store
// registers (RegisterStore) or is brought back (RecoverStore).
// DeleteRequests starts counting afresh, since store IDs may now name other
// stores; faults and options are kept.
func (s *Server) Rebuild(o RebuildOptions) error {
	if o.ClusterID == 0 {
		return errors.New("rebuild: cluster id must not be zero")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	names := o.Members
	if names == nil {
		for _, m := range s.members {
			names = append(names, m.name)
		}
	}
	s.clusterID = o.ClusterID
	s.bootstrapped = false
	s.stores = map[uint64]*store{}
	s.deletes = nil
	s.nextStoreID = max(o.NextStoreID, 1)
	s.members, s.leader = nil, ""
	for _, name := range names {
		if _, err := s.addMemberLocked(name, ""); err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
	}
	return nil
}

// RecoverStore brings back a store with its old ID and address, as a TiKV
// does when it rejoins a PD restored with pd-recover: it heartbeats and,
// like every store PD meets for the first time, is Preparing for
// ServingAfter. It bootstraps the cluster. An ID or address a live store
// already has is ErrExists.
func (s *Server) RecoverStore(id uint64, address string) error {
	if id == 0 || address == "" {
		return errors.New("recover store: id and address are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	if _, ok := s.stores[id]; ok {
		return fmt.Errorf("store %d: %w", id, ErrExists)
	}
	for _, st := range s.stores {
		if st.address == address && st.state != stateTombstone {
			return fmt.Errorf("store %d already has address %s: %w", st.id, address, ErrExists)
		}
	}
	s.addStoreLocked(id, address, now)
	return nil
}
