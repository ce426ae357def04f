package pdsim

import (
	"fmt"
	"net/http"
	"time"
)

// The store operations PD's API exposes. Each returns the HTTP status and
// the message PD would answer with; messages follow PD's errs texts.

// removeStoreLocked is PD's RemoveStore (DELETE /store/{id}).
func (s *Server) removeStoreLocked(id uint64, force bool, now time.Time) (int, string) {
	st, ok := s.stores[id]
	if !ok {
		return http.StatusNotFound, fmt.Sprintf("[PD:core:ErrStoreNotFound]store %d not found", id)
	}
	switch {
	case st.state == stateOffline && st.destroyed == force:
		// Deleting an Offline store again is fine: nothing to do.
		return http.StatusOK, "The store is set as Offline."
	case st.state == stateTombstone:
		return http.StatusGone, fmt.Sprintf("[PD:core:ErrStoreRemoved]store %d has been removed", id)
	case st.destroyed:
		return http.StatusBadRequest, fmt.Sprintf("[PD:core:ErrStoreDestroyed]store %d has been physically destroyed", id)
	}
	if st.state == stateUp && !force {
		// PD counts every store still in state Up: Preparing, Disconnected
		// and Down ones included.
		left := s.countLocked(stateUp) - 1
		if left < s.opts.MaxReplicas {
			return http.StatusBadRequest, fmt.Sprintf(
				"[PD:core:ErrStoresNotEnough]can not remove store %d since the number of up stores would be %d while need %d",
				id, left, s.opts.MaxReplicas)
		}
	}
	if st.state == stateUp {
		st.regions, st.regionsAt = s.regionsLocked(st, now), now
		st.state, st.nodeState = stateOffline, nodeRemoving
	}
	st.destroyed = st.destroyed || force
	s.drainsLocked(now)
	return http.StatusOK, "The store is set as Offline."
}

// upStoreLocked is PD's UpStore (POST /store/{id}/state?state=Up): it
// cancels an offline that has not finished.
func (s *Server) upStoreLocked(id uint64, now time.Time) (int, string) {
	st, ok := s.stores[id]
	switch {
	case !ok:
		return http.StatusNotFound, fmt.Sprintf("[PD:core:ErrStoreNotFound]store %d not found", id)
	case st.state == stateTombstone:
		return http.StatusGone, fmt.Sprintf("[PD:core:ErrStoreRemoved]store %d has been removed", id)
	case st.destroyed:
		return http.StatusBadRequest, fmt.Sprintf("[PD:core:ErrStoreDestroyed]store %d has been physically destroyed", id)
	}
	if st.state == stateOffline {
		// Draining stops where it is.
		st.regions, st.regionsAt, st.stuck = s.regionsLocked(st, now), now, false
		st.state, st.nodeState = stateUp, nodeServing
		s.drainsLocked(now)
	}
	return http.StatusOK, "The store's state is updated."
}

// removeTombstonesLocked drops Tombstone records that hold no regions.
func (s *Server) removeTombstonesLocked() {
	for id, st := range s.stores {
		if st.state == stateTombstone && st.regions == 0 {
			delete(s.stores, id)
		}
	}
}

func (s *Server) countLocked(state int32) int {
	n := 0
	for _, st := range s.stores {
		if st.state == state {
			n++
		}
	}
	return n
}
