package volumecontroller

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// PD is the part of PD's HTTP API the controller uses; *pd.Client has it.
type PD interface {
	ClusterID(ctx context.Context) (uint64, error)
	Stores(ctx context.Context, states ...pd.StoreState) ([]pd.StoreInfo, error)
	Store(ctx context.Context, id uint64) (pd.StoreInfo, error)
	DeleteStore(ctx context.Context, id uint64) error
	Members(ctx context.Context) (pd.Members, error)
	MaxReplicas(ctx context.Context) (int, error)
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
	replicas  int
	replErr   error
	replAt    time.Time
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

// storesCached returns the endpoint's stores with its cluster ID, at most
// ttl old. Errors are cached as well, so an unreachable PD is not hammered
// by every PV.
func (v *pdView) storesCached(ctx context.Context, url string) (storeIndex, error) {
	return v.storesSince(ctx, url, time.Time{})
}

// storesSince is storesCached, asked afresh unless the cached answer is
// younger than since (whole seconds, as Kubernetes stamps times).
func (v *pdView) storesSince(ctx context.Context, url string, since time.Time) (storeIndex, error) {
	e, err := v.endpoint(url)
	if err != nil {
		return storeIndex{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	stale := !since.IsZero() && e.storesAt.Before(since.Add(time.Second))
	if now := v.clock.Now(); stale || e.storesAt.IsZero() || now.Sub(e.storesAt) >= v.ttl {
		e.stores, e.storesErr = listStores(ctx, e.client)
		e.storesAt = now
	}
	return e.stores, e.storesErr
}

// listStores asks PD for its cluster ID and every store. The ID is asked
// first: a PD replaced between the two answers can only make the list look
// like the new cluster's, which the ID then does not vouch for.
func listStores(ctx context.Context, c PD) (storeIndex, error) {
	id, err := c.ClusterID(ctx)
	if err != nil {
		return storeIndex{}, err
	}
	list, err := c.Stores(ctx, allStores...)
	if err != nil {
		return storeIndex{}, err
	}
	idx := indexStores(list)
	idx.clusterID = id
	return idx, nil
}

// storeIndex is a store list indexed for per-PV lookups, so a resync over
// thousands of PVs stays linear.
type storeIndex struct {
	clusterID uint64
	byID      map[uint64]pd.StoreInfo
	byPod     map[string][]pd.StoreInfo
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
	return v.membersSince(ctx, url, time.Time{})
}

// membersSince is membersCached, asked afresh unless the cached answer is
// younger than since. Kubernetes stamps conditions in whole seconds, so an
// answer from the second of since counts as older.
func (v *pdView) membersSince(ctx context.Context, url string, since time.Time) (pd.Members, error) {
	e, err := v.endpoint(url)
	if err != nil {
		return pd.Members{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	stale := !since.IsZero() && e.membersAt.Before(since.Add(time.Second))
	if now := v.clock.Now(); stale || e.membersAt.IsZero() || now.Sub(e.membersAt) >= v.ttl {
		e.members, e.memErr = e.client.Members(ctx)
		e.membersAt = now
	}
	return e.members, e.memErr
}

// maxReplicasCached returns PD's max-replicas, at most ttl old.
func (v *pdView) maxReplicasCached(ctx context.Context, url string) (int, error) {
	e, err := v.endpoint(url)
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if now := v.clock.Now(); e.replAt.IsZero() || now.Sub(e.replAt) >= v.ttl {
		e.replicas, e.replErr = e.client.MaxReplicas(ctx)
		e.replAt = now
	}
	return e.replicas, e.replErr
}

// undrainable says why PD can never bury an Offline store (its regions
// have nowhere to go), or "" when it can, or cannot tell.
func undrainable(stores storeIndex, maxReplicas int, id uint64) string {
	if maxReplicas <= 0 {
		return ""
	}
	up, serving := 0, 0
	for _, s := range stores.byID {
		if s.ID == id || s.State != pd.StoreUp {
			continue
		}
		up++ // PD counts Disconnected and Down stores as up here
		if s.Phase() == pd.PhaseUp {
			serving++
		}
	}
	switch {
	case up < maxReplicas:
		return fmt.Sprintf("the number of up stores is %d while max-replicas is %d", up, maxReplicas)
	case serving < maxReplicas:
		return fmt.Sprintf("only %d stores are Up and heartbeating while max-replicas is %d", serving, maxReplicas)
	}
	return ""
}

// invalidate drops cached answers after the controller changed PD.
func (v *pdView) invalidate(url string) {
	v.mu.Lock()
	e := v.endpoints[url]
	v.mu.Unlock()
	if e != nil {
		e.mu.Lock()
		e.storesAt, e.membersAt, e.replAt = time.Time{}, time.Time{}, time.Time{}
		e.mu.Unlock()
	}
}

// Why facts are unknown, as the refusals metric counts them.
const (
	unknownPD       = "pd-unknown"
	unknownCluster  = "pd-cluster-mismatch"
	unknownVanished = "owner-vanished"
)

// clusterMismatch is the facts of an answer from another PD cluster than
// the one the owner was confirmed in: they tell nothing about the owner.
func clusterMismatch(rec provisioner.Ownership, got uint64) (OwnerFacts, bool) {
	if rec.ClusterID == 0 || rec.ClusterID == got {
		return OwnerFacts{}, false
	}
	return OwnerFacts{Why: unknownCluster, Err: fmt.Errorf(
		"PD answers for cluster ID %d, but %s was recorded in PD cluster %d: PD was rebuilt or the endpoint names another cluster's PD; check the PD endpoint (--pd-endpoint-template, --pd-endpoint) and PD's cluster ID with `pd-ctl cluster`",
		got, rec.Owner(), rec.ClusterID)}, true
}

// storeFacts reads the recorded store's state from a store list (safety
// rule "another cluster's PD, or a store that vanished without having been
// seen buried, means unknown").
func storeFacts(stores storeIndex, err error, rec provisioner.Ownership) OwnerFacts {
	if err != nil {
		return OwnerFacts{Err: err, Why: unknownPD}
	}
	if f, bad := clusterMismatch(rec, stores.clusterID); bad {
		return f
	}
	id := rec.StoreID
	if s, ok := stores.byID[id]; ok {
		ph := s.Phase()
		if ph == pd.PhaseUnknown {
			return OwnerFacts{Why: unknownPD, Err: fmt.Errorf("store %d: PD reports state %q / %d / %d", id, s.StateName, s.State, s.NodeState)}
		}
		return OwnerFacts{Known: true, Phase: ph, Store: s}
	}
	if len(stores.byID) == 0 {
		return OwnerFacts{Why: unknownPD, Err: fmt.Errorf("PD lists no stores at all; refusing to conclude store %d is gone", id)}
	}
	if rec.ClusterID == 0 {
		return OwnerFacts{Why: unknownPD, Err: fmt.Errorf("store %d is not in PD, and the PD cluster it was recorded in is not known (recorded by an older version); nothing is released", id)}
	}
	switch rec.State {
	case "Tombstone":
		// Buried, then its record dropped (remove-tombstone, PD's GC).
		return OwnerFacts{Known: true, Removed: true, Phase: pd.PhaseTombstone}
	case "Offline":
		// Still draining when last seen: buried and dropped since — or
		// lost by pd-recover with regions PD never moved. Only the first
		// frees the disk, and PD no longer tells which.
		return OwnerFacts{Why: unknownVanished, Err: fmt.Errorf(
			"store %d is no longer in PD; it was last seen Offline%s, still draining: either PD buried it and its record was removed since (remove-tombstone), or PD lost it (pd-recover) with data it still needed; if `pd-ctl store %d` and PD's logs show it was buried, delete the PV and the disk is wiped — until then it keeps its data",
			id, seenAt(rec.Seen), id)}
	}
	return OwnerFacts{Why: unknownVanished, Err: fmt.Errorf(
		"store %d is no longer in PD, but it was last seen %s%s, not leaving: PD may have been restored (pd-recover) or rebuilt; check `pd-ctl store %d` and PD's logs — the disk keeps its data until PD shows the store Tombstone or an operator deletes the PV",
		id, orUnknown(rec.State), seenAt(rec.Seen), id)}
}

// memberFacts reads whether the recorded PD member is still a member. PD
// members have no leaving state: one gone from a membership that carries
// on (a peer seen beside it is still listed) was removed; one gone with all
// of its peers vanished with its PD, which tells nothing.
func memberFacts(m pd.Members, err error, rec provisioner.Ownership) OwnerFacts {
	if err != nil {
		return OwnerFacts{Err: err, Why: unknownPD}
	}
	if f, bad := clusterMismatch(rec, m.ClusterID); bad {
		return f
	}
	if len(m.Members) == 0 {
		return OwnerFacts{Why: unknownPD, Err: fmt.Errorf("PD lists no members; refusing to conclude member %s is gone", rec.Member)}
	}
	listed := map[uint64]bool{}
	for _, mem := range m.Members {
		listed[mem.MemberID] = true
		if (rec.MemberID != 0 && mem.MemberID == rec.MemberID) || (rec.MemberID == 0 && mem.Name == rec.Member) {
			return OwnerFacts{Known: true, Phase: pd.PhaseUp, Member: mem, Peers: m.Members}
		}
	}
	if rec.ClusterID == 0 {
		return OwnerFacts{Why: unknownPD, Err: fmt.Errorf("PD member %s is not listed, and the PD cluster it was recorded in is not known (recorded by an older version); nothing is released", rec.Member)}
	}
	for _, p := range rec.Peers {
		if p != rec.MemberID && listed[p] {
			return OwnerFacts{Known: true, Removed: true}
		}
	}
	return OwnerFacts{Why: unknownVanished, Err: fmt.Errorf(
		"PD member %s is gone together with every member listed beside it%s: PD may have been rebuilt or recovered; check `pd-ctl member` — the disk keeps its data until an operator deletes the PV",
		rec.Member, seenAt(rec.Seen))}
}

func orUnknown(s string) string {
	if s == "" {
		return "in an unrecorded state"
	}
	return s
}

func seenAt(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return " at " + t.UTC().Format(time.RFC3339)
}

// freshStoreFacts asks PD directly, for the re-check right before an
// action; it also returns the fresh store list for the address check.
func freshStoreFacts(ctx context.Context, c PD, rec provisioner.Ownership) (OwnerFacts, storeIndex) {
	stores, err := listStores(ctx, c)
	return storeFacts(stores, err, rec), stores
}

func freshMemberFacts(ctx context.Context, c PD, rec provisioner.Ownership) OwnerFacts {
	m, err := c.Members(ctx)
	return memberFacts(m, err, rec)
}
