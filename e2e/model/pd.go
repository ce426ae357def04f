package model

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"k8s.io/utils/clock"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// PD's timings and limits (pd-api.md, checked against PD v26.3.4).
const (
	disconnectedAfter = 20 * time.Second
	maxStoreDownTime  = 30 * time.Minute
	maxReplicas       = 3
	// preparingFor is how long a new store stays Preparing in a small cluster.
	preparingFor = 30 * time.Second
)

// pdFault is how the PD endpoint misbehaves at the moment.
type pdFault int

const (
	faultNone pdFault = iota
	// faultUnreachable: every call fails as a refused connection would.
	faultUnreachable
	// faultGarbage: answers with a success status and a body the client
	// cannot decode.
	faultGarbage
	// faultGarbled: stores with even IDs come with state fields that
	// contradict each other (a Tombstone name on a store PD counts as Up).
	faultGarbled
	// faultEmpty: a 200 store list with no stores, and no members.
	faultEmpty
	// faultOtherCluster: the endpoint reaches another cluster's PD (a
	// template resolving elsewhere).
	faultOtherCluster
)

func (f pdFault) String() string {
	return [...]string{"none", "unreachable", "garbage", "garbled", "empty", "other-cluster"}[f]
}

// pdStore is one store as PD keeps it.
type pdStore struct {
	id        uint64
	address   string
	state     pd.StoreState
	nodeState pd.NodeState
	lastHB    time.Time
	start     time.Time
	joined    time.Time
	offlineAt time.Time
}

// storeKey names a store across PD's lives: a rebuilt PD is a new cluster,
// and pd-recover brings stores back under their old IDs.
type storeKey struct {
	cluster, id uint64
}

// modelPD is the PD of the simulated cluster: what the real PD does that
// the controller depends on (pd-api.md), with the clock as its only time.
type modelPD struct {
	clock     clock.PassiveClock
	clusterID uint64
	// epoch counts pd-recovers and rebuilds: an offline after one is a
	// new request, not a repeat.
	epoch   int
	nextID  uint64
	stores  map[uint64]*pdStore
	members []pd.Member
	fault   pdFault
	// bootstrapped: a store has joined; before that, store endpoints
	// answer 500.
	bootstrapped bool
	// lost are stores dropped by pd-recover that may come back under
	// their old IDs when their TiKV heartbeats again.
	lost map[uint64]*pdStore
	// other is the PD that faultOtherCluster reaches.
	other *modelPD

	// Ground truth kept across PD's lives.
	buried  map[storeKey]bool
	removed map[storeKey]bool // PD members deleted
}

func newModelPD(clk clock.PassiveClock, clusterID uint64) *modelPD {
	return &modelPD{
		clock: clk, clusterID: clusterID, nextID: 1,
		stores: map[uint64]*pdStore{}, lost: map[uint64]*pdStore{},
		buried: map[storeKey]bool{}, removed: map[storeKey]bool{},
	}
}

func (p *modelPD) allocID() uint64 {
	id := p.nextID
	p.nextID++
	return id
}

// phase is the store's lifecycle as PD would report it now.
func (p *modelPD) phase(s *pdStore) pd.Phase {
	switch s.state {
	case pd.StoreTombstone:
		return pd.PhaseTombstone
	case pd.StoreOffline:
		return pd.PhaseOffline
	}
	since := p.clock.Since(s.lastHB)
	switch {
	case since > maxStoreDownTime:
		return pd.PhaseDown
	case since > disconnectedAfter:
		return pd.PhaseDisconnected
	}
	return pd.PhaseUp
}

// healthy: Up and heartbeating, a store regions can move to.
func (p *modelPD) healthy(s *pdStore) bool { return p.phase(s) == pd.PhaseUp }

// sortedStores lists the stores by ID.
func (p *modelPD) sortedStores() []*pdStore {
	out := make([]*pdStore, 0, len(p.stores))
	for _, s := range p.stores {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// tick moves PD's own lifecycle on: Preparing stores start serving, and
// an Offline store becomes Tombstone once its regions have moved — which
// needs max-replicas healthy stores besides it; without them it stays
// Offline for good. It returns what changed, for the history.
func (p *modelPD) tick() []string {
	var changed []string
	now := p.clock.Now()
	healthy := 0
	for _, s := range p.sortedStores() {
		if s.state == pd.StoreUp && p.healthy(s) {
			healthy++
		}
	}
	for _, s := range p.sortedStores() {
		switch {
		case s.state == pd.StoreUp && s.nodeState == pd.NodePreparing && p.healthy(s) && now.Sub(s.joined) >= preparingFor:
			s.nodeState = pd.NodeServing
		case s.state == pd.StoreOffline && healthy >= maxReplicas && now.Sub(s.offlineAt) >= drainTime(s.id):
			s.state, s.nodeState = pd.StoreTombstone, pd.NodeRemoved
			p.buried[storeKey{p.clusterID, s.id}] = true
			changed = append(changed, fmt.Sprintf("PD: store %d is Tombstone", s.id))
		}
	}
	return changed
}

// summary lists the stores and members, for a failure's history.
func (p *modelPD) summary() string {
	var parts []string
	for _, s := range p.sortedStores() {
		parts = append(parts, fmt.Sprintf("store %d %s at %s", s.id, p.phase(s), s.address))
	}
	lost := make([]uint64, 0, len(p.lost))
	for id := range p.lost {
		lost = append(lost, id)
	}
	slices.Sort(lost)
	for _, id := range lost {
		parts = append(parts, fmt.Sprintf("store %d lost by pd-recover", id))
	}
	for _, m := range p.members {
		parts = append(parts, fmt.Sprintf("member %s (%d)", m.Name, m.MemberID))
	}
	return strings.Join(parts, "; ")
}

// drainTime is how long a store's regions take to move: an empty store
// goes in seconds, a full one in about a minute (measured on PD v26.3.4).
func drainTime(id uint64) time.Duration {
	return time.Duration(5+id*37%70) * time.Second
}

// register is a TiKV joining PD (PutStore): refused while a store that is
// not Tombstone holds the address.
func (p *modelPD) register(address string, start time.Time) (uint64, error) {
	for _, s := range p.sortedStores() {
		if s.address == address && s.state != pd.StoreTombstone {
			return 0, fmt.Errorf("duplicated store address %s, already registered by store %d", address, s.id)
		}
	}
	now := p.clock.Now()
	s := &pdStore{id: p.allocID(), address: address, state: pd.StoreUp, nodeState: pd.NodePreparing, lastHB: now, start: start, joined: now}
	p.stores[s.id] = s
	p.bootstrapped = true
	return s.id, nil
}

// remove is PD's RemoveStore (DELETE /store/{id}) without force.
func (p *modelPD) remove(id uint64) error {
	s, ok := p.stores[id]
	switch {
	case !ok:
		return fmt.Errorf("%w: [PD:core:ErrStoreNotFound]store %d not found", pd.ErrStoreNotFound, id)
	case s.state == pd.StoreTombstone:
		return fmt.Errorf("%w: [PD:core:ErrStoreRemoved]store %d has been removed", pd.ErrStoreRemoved, id)
	case s.state == pd.StoreOffline:
		return nil
	}
	// Disconnected and Down stores keep state Up and count as up here.
	up := 0
	for _, o := range p.stores {
		if o.state == pd.StoreUp {
			up++
		}
	}
	if up-1 < maxReplicas {
		return &pd.RefusedError{Status: 400, Message: fmt.Sprintf(
			"[PD:core:ErrStoresNotEnough]can not remove store %d since the number of up stores would be %d while need %d", id, up-1, maxReplicas)}
	}
	s.state, s.nodeState, s.offlineAt = pd.StoreOffline, pd.NodeRemoving, p.clock.Now()
	return nil
}

// removeTombstones is DELETE /stores/remove-tombstone (or PD's GC).
func (p *modelPD) removeTombstones() int {
	n := 0
	for id, s := range p.stores {
		if s.state == pd.StoreTombstone {
			delete(p.stores, id)
			n++
		}
	}
	return n
}

// heartbeat is a running TiKV's store heartbeat. A buried store's is
// refused; a store lost by pd-recover comes back under its old ID.
func (p *modelPD) heartbeat(id uint64) bool {
	if s, ok := p.stores[id]; ok {
		if s.state == pd.StoreTombstone {
			return false
		}
		s.lastHB = p.clock.Now()
		return true
	}
	return false
}

// recoverStore brings one store lost by pd-recover back, Up, under its old ID.
func (p *modelPD) recoverStore(id uint64) bool {
	s, ok := p.lost[id]
	if !ok {
		return false
	}
	delete(p.lost, id)
	s.state, s.nodeState, s.lastHB = pd.StoreUp, pd.NodeServing, p.clock.Now()
	p.stores[id] = s
	return true
}

// pdRecover is the documented disaster recovery: PD comes back with the
// same cluster ID and knows no store until TiKVs report again, one by one.
// Offline states are PD's own metadata and do not come back.
func (p *modelPD) pdRecover() {
	for id, s := range p.stores {
		if s.state != pd.StoreTombstone {
			p.lost[id] = s
		}
	}
	p.stores = map[uint64]*pdStore{}
	p.epoch++
}

// rebuild replaces PD with a new cluster: new ID, no stores, new members.
func (p *modelPD) rebuild(newID uint64, members []pd.Member) {
	p.clusterID = newID
	p.stores = map[uint64]*pdStore{}
	p.lost = map[uint64]*pdStore{}
	p.members = members
	p.bootstrapped = false
	p.epoch++
}

func (p *modelPD) member(name string) (pd.Member, bool) {
	for _, m := range p.members {
		if m.Name == name {
			return m, true
		}
	}
	return pd.Member{}, false
}

// addMember is a PD joining; ns is its namespace (TiDB Operator v1 names
// its URLs after the pod, the peer service and the namespace).
func (p *modelPD) addMember(name, ns string) pd.Member {
	host := fmt.Sprintf("%s.%s-pd-peer.%s.svc", name, cluster, ns)
	m := pd.Member{Name: name, MemberID: 1000 + p.allocID(), PeerURLs: []string{"http://" + host + ":2380"}, ClientURLs: []string{"http://" + host + ":2379"}}
	p.members = append(p.members, m)
	return m
}

// deleteMember is `pd-ctl member delete name …`.
func (p *modelPD) deleteMember(name string) bool {
	for i, m := range p.members {
		if m.Name == name {
			p.members = slices.Delete(p.members, i, i+1)
			p.removed[storeKey{p.clusterID, m.MemberID}] = true
			return true
		}
	}
	return false
}

// info renders a store as the PD client decodes it.
func (p *modelPD) info(s *pdStore) pd.StoreInfo {
	name := p.phase(s).String()
	info := pd.StoreInfo{
		ID: s.id, Address: s.address, StatusAddress: s.address[:len(s.address)-len("20160")] + "20180",
		Version: "8.5.0", State: s.state, NodeState: s.nodeState, StateName: name,
		LastHeartbeat: s.lastHB, StartTime: s.start.Truncate(time.Second),
	}
	return info
}

// pdCall is one request the controller made, for the history.
type pdCall struct {
	caller string
	op     string
	err    error
}

// pdClient is one controller instance's PD client: it answers for the
// model's PD, through the fault of the moment, and fails like an HTTP
// client once the caller's context is done.
type pdClient struct {
	pd     *modelPD
	caller string
	// check sees every DeleteStore that reaches PD, before PD acts;
	// offlined each one PD accepted.
	check    func(caller string, target *modelPD, id uint64)
	offlined func(caller string, target *modelPD, id uint64)
	log      func(pdCall)
}

var _ volumecontroller.PD = (*pdClient)(nil)

var errRefused = errors.New("dial tcp 10.0.0.2:2379: connect: connection refused")

// target is the PD the request reaches, or an error before it gets there.
func (c *pdClient) target(ctx context.Context, op string) (*modelPD, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch c.pd.fault {
	case faultUnreachable:
		return nil, fmt.Errorf("pd: %s: %w", op, errRefused)
	case faultGarbage:
		return nil, fmt.Errorf("pd: %s: %w: body is not JSON: \"<html>\"", op, pd.ErrInvalidResponse)
	case faultOtherCluster:
		return c.pd.other, nil
	}
	return c.pd, nil
}

func (c *pdClient) done(op string, err error) error {
	c.log(pdCall{caller: c.caller, op: op, err: err})
	return err
}

func (c *pdClient) ClusterID(ctx context.Context) (uint64, error) {
	p, err := c.target(ctx, "get cluster")
	if err != nil {
		return 0, c.done("cluster", err)
	}
	return p.clusterID, nil
}

func (c *pdClient) Stores(ctx context.Context, _ ...pd.StoreState) ([]pd.StoreInfo, error) {
	p, err := c.target(ctx, "list stores")
	if err != nil {
		return nil, c.done("stores", err)
	}
	if !p.bootstrapped {
		return nil, c.done("stores", fmt.Errorf("pd: list stores: %w", &pd.StatusError{Status: 500, Message: "TiKV cluster not bootstrapped, please start TiKV first"}))
	}
	if c.pd.fault == faultEmpty {
		return nil, nil
	}
	out := make([]pd.StoreInfo, 0, len(p.stores))
	for _, s := range p.sortedStores() {
		info := p.info(s)
		if c.pd.fault == faultGarbled && s.id%2 == 0 {
			info.StateName, info.State = "Tombstone", pd.StoreUp
		}
		out = append(out, info)
	}
	return out, nil
}

func (c *pdClient) Store(ctx context.Context, id uint64) (pd.StoreInfo, error) {
	p, err := c.target(ctx, "get store")
	if err != nil {
		return pd.StoreInfo{}, c.done("store", err)
	}
	if !p.bootstrapped {
		return pd.StoreInfo{}, c.done("store", fmt.Errorf("pd: get store %d: %w", id, &pd.StatusError{Status: 500, Message: "TiKV cluster not bootstrapped, please start TiKV first"}))
	}
	s, ok := p.stores[id]
	if !ok || c.pd.fault == faultEmpty {
		return pd.StoreInfo{}, c.done("store", fmt.Errorf("pd: get store %d: %w: [PD:core:ErrStoreNotFound]store %d not found", id, pd.ErrStoreNotFound, id))
	}
	info := p.info(s)
	if c.pd.fault == faultGarbled && s.id%2 == 0 {
		info.StateName, info.State = "Tombstone", pd.StoreUp
	}
	return info, nil
}

func (c *pdClient) DeleteStore(ctx context.Context, id uint64) error {
	p, err := c.target(ctx, "delete store")
	if err != nil {
		return c.done(fmt.Sprintf("DELETE store %d", id), err)
	}
	c.check(c.caller, p, id)
	before := p.stores[id]
	wasUp := before != nil && before.state == pd.StoreUp
	err = p.remove(id)
	if err != nil {
		err = fmt.Errorf("pd: delete store %d: %w", id, err)
	} else if wasUp {
		c.offlined(c.caller, p, id)
	}
	return c.done(fmt.Sprintf("DELETE store %d (cluster %d)", id, p.clusterID), err)
}

func (c *pdClient) Members(ctx context.Context) (pd.Members, error) {
	p, err := c.target(ctx, "list members")
	if err != nil {
		return pd.Members{}, c.done("members", err)
	}
	if c.pd.fault == faultEmpty {
		return pd.Members{ClusterID: p.clusterID}, nil
	}
	ms := pd.Members{ClusterID: p.clusterID, Members: slices.Clone(p.members)}
	if len(ms.Members) > 0 {
		leader := ms.Members[0]
		ms.Leader = &leader
	}
	return ms, nil
}

func (c *pdClient) MaxReplicas(ctx context.Context) (int, error) {
	if _, err := c.target(ctx, "get replication config"); err != nil {
		return 0, c.done("config/replicate", err)
	}
	return maxReplicas, nil
}
