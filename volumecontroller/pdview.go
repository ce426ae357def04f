package volumecontroller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// PD is the part of PD's HTTP API the controller uses; *pd.Client has it.
type PD interface {
	Stores(ctx context.Context, states ...pd.StoreState) ([]pd.StoreInfo, error)
	Store(ctx context.Context, id uint64) (pd.StoreInfo, error)
	DeleteStore(ctx context.Context, id uint64) error
	Members(ctx context.Context) (pd.Members, error)
}

// PDDialer returns the PD client of one endpoint.
type PDDialer func(endpoint string) (PD, error)

// pdView caches PD answers per endpoint for a short time, so a resync over
// thousands of PVs asks each PD once; destructive actions never use it and
// ask afresh.
type pdView struct {
	dial  PDDialer
	ttl   time.Duration
	clock clock.PassiveClock

	mu        sync.Mutex
	endpoints map[string]*pdEndpoint
}

type pdEndpoint struct {
	client PD

	mu        sync.Mutex
	stores    storeIndex
	storesErr error
	storesAt  time.Time
	members   pd.Members
	memErr    error
	membersAt time.Time
}

func newPDView(dial PDDialer, ttl time.Duration, clk clock.PassiveClock) *pdView {
	return &pdView{dial: dial, ttl: ttl, clock: clk, endpoints: map[string]*pdEndpoint{}}
}

func (v *pdView) endpoint(url string) (*pdEndpoint, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.endpoints[url]; ok {
		return e, nil
	}
	c, err := v.dial(url)
	if err != nil {
		return nil, fmt.Errorf("PD client for %s: %w", url, err)
	}
	e := &pdEndpoint{client: c}
	v.endpoints[url] = e
	return e, nil
}

// client returns the endpoint's client for fresh calls.
func (v *pdView) client(url string) (PD, error) {
	e, err := v.endpoint(url)
	if err != nil {
		return nil, err
	}
	return e.client, nil
}

// allStores lists Up, Offline and Tombstone stores: Tombstones are what the
// controller looks for, and PD hides them by default.
var allStores = []pd.StoreState{pd.StoreUp, pd.StoreOffline, pd.StoreTombstone}

// storesCached returns the endpoint's stores, at most ttl old. Errors are
// cached as well, so an unreachable PD is not hammered by every PV.
func (v *pdView) storesCached(ctx context.Context, url string) (storeIndex, error) {
	e, err := v.endpoint(url)
	if err != nil {
		return storeIndex{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if now := v.clock.Now(); e.storesAt.IsZero() || now.Sub(e.storesAt) >= v.ttl {
		var list []pd.StoreInfo
		list, e.storesErr = e.client.Stores(ctx, allStores...)
		e.stores = indexStores(list)
		e.storesAt = now
	}
	return e.stores, e.storesErr
}

// storeIndex is a store list indexed for per-PV lookups, so a resync over
// thousands of PVs stays linear.
type storeIndex struct {
	byID  map[uint64]pd.StoreInfo
	byPod map[string][]pd.StoreInfo
}

func indexStores(list []pd.StoreInfo) storeIndex {
	idx := storeIndex{byID: make(map[uint64]pd.StoreInfo, len(list)), byPod: make(map[string][]pd.StoreInfo, len(list))}
	for _, s := range list {
		idx.byID[s.ID] = s
		idx.byPod[s.PodName()] = append(idx.byPod[s.PodName()], s)
	}
	return idx
}

func (v *pdView) membersCached(ctx context.Context, url string) (pd.Members, error) {
	e, err := v.endpoint(url)
	if err != nil {
		return pd.Members{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if now := v.clock.Now(); e.membersAt.IsZero() || now.Sub(e.membersAt) >= v.ttl {
		e.members, e.memErr = e.client.Members(ctx)
		e.membersAt = now
	}
	return e.members, e.memErr
}

// invalidate drops cached answers after the controller changed PD.
func (v *pdView) invalidate(url string) {
	v.mu.Lock()
	e := v.endpoints[url]
	v.mu.Unlock()
	if e != nil {
		e.mu.Lock()
		e.storesAt, e.membersAt = time.Time{}, time.Time{}
		e.mu.Unlock()
	}
}

// storeFacts reads a store's state from a store list. A store missing from
// a list that holds other stores was removed from PD; a missing store in an
// empty list tells nothing (a PD that lost its data, or the wrong PD).
func storeFacts(stores storeIndex, err error, id uint64) OwnerFacts {
	if err != nil {
		return OwnerFacts{Err: err}
	}
	if s, ok := stores.byID[id]; ok {
		ph := s.Phase()
		if ph == pd.PhaseUnknown {
			return OwnerFacts{Err: fmt.Errorf("store %d: PD reports state %q / %d / %d", id, s.StateName, s.State, s.NodeState)}
		}
		return OwnerFacts{Known: true, Phase: ph}
	}
	if len(stores.byID) == 0 {
		return OwnerFacts{Err: errors.New("PD lists no stores at all; refusing to conclude store " + fmt.Sprint(id) + " is gone")}
	}
	return OwnerFacts{Known: true, Removed: true, Phase: pd.PhaseTombstone}
}

// memberFacts reads whether a PD member is still in the member list.
func memberFacts(m pd.Members, err error, name string) OwnerFacts {
	if err != nil {
		return OwnerFacts{Err: err}
	}
	if len(m.Members) == 0 {
		return OwnerFacts{Err: errors.New("PD lists no members; refusing to conclude member " + name + " is gone")}
	}
	for _, mem := range m.Members {
		if mem.Name == name {
			return OwnerFacts{Known: true, Phase: pd.PhaseUp}
		}
	}
	return OwnerFacts{Known: true, Removed: true}
}

// freshStoreFacts asks PD directly, for the re-check right before an action.
func freshStoreFacts(ctx context.Context, c PD, id uint64) OwnerFacts {
	s, err := c.Store(ctx, id)
	if errors.Is(err, pd.ErrStoreNotFound) {
		// Only "gone" if PD still knows other stores.
		list, lerr := c.Stores(ctx, allStores...)
		return storeFacts(indexStores(list), lerr, id)
	}
	if err != nil {
		return OwnerFacts{Err: err}
	}
	return storeFacts(indexStores([]pd.StoreInfo{s}), nil, id)
}

func freshMemberFacts(ctx context.Context, c PD, name string) OwnerFacts {
	m, err := c.Members(ctx)
	return memberFacts(m, err, name)
}
