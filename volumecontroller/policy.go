// Package volumecontroller is the central, leader-elected controller that
// tracks which TiKV store or PD member owns each tidb-localpv disk and
// releases the disk when its owner is gone: store Tombstone, member removed,
// or node dead and its store drained away.
package volumecontroller

import (
	"fmt"
	"time"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// TaintOutOfService is the taint of Kubernetes' non-graceful node shutdown.
const TaintOutOfService = "node.kubernetes.io/out-of-service"

// Components the controller knows the owners of.
const (
	ComponentTiKV = "tikv"
	ComponentPD   = "pd"
)

// Action is what the policy decided for one PV.
type Action int

// Actions, from harmless to destructive.
const (
	// ActNone: nothing to do; Warn may still ask for an event.
	ActNone Action = iota
	// ActWait: something is in progress (store draining, scale-in); look again soon.
	ActWait
	// ActOffline: ask PD to offline (DELETE) the store.
	ActOffline
	// ActRelease: delete the claim (no pod mounts it) so the disk is wiped.
	ActRelease
	// ActReleaseWithPod: delete the claim, then the pod stuck on it, so the
	// StatefulSet recreates both on a fresh disk.
	ActReleaseWithPod
	// ActDeletePV: delete the PV object of a dead node's free disk.
	ActDeletePV
	// ActApprove: stamp a Released PV so its agent may wipe it (and make
	// it reclaimable: Retain → Delete).
	ActApprove
	// ActDeleteInstance: delete the TiDB Operator v2 instance object of the
	// claim, as v2's documentation asks an operator to do (v2 has no
	// failover; it offlines the store and starts a replacement itself).
	ActDeleteInstance
	// ActReclaimDelete: set a PV's reclaimPolicy to Delete — a Released PV
	// already approved for its claim (TiDB Operator restored Retain while
	// the claim was being deleted), or the PV of a claim that no TiKV or
	// PD pod uses, which recycles like any local volume.
	ActReclaimDelete
)

func (a Action) String() string {
	return [...]string{"none", "wait", "offline-store", "release", "release-with-pod", "delete-pv", "approve", "delete-instance", "reclaim-delete"}[a]
}

// Decision is the policy's answer with the reason, which goes into events.
type Decision struct {
	Action Action
	Reason string
	// Warn asks for a Warning event even without an action (a refusal).
	Warn bool
	// Refusal classifies a Warn for the refusals metric.
	Refusal string
	// OwnerGone: the action rests on the owner's data being no longer
	// needed (the action re-checks that in PD), not on a dead node.
	OwnerGone bool
	// DiskFailed: "dead" in this decision is the disk, not its node; the
	// action re-checks the disk's health instead of the node.
	DiskFailed bool
	// Event is the Warning's reason for a refusal; ReleaseRefused if empty.
	Event string
}

// OwnerFacts is what PD says about the recorded owner of a disk.
type OwnerFacts struct {
	// Known is false when PD could not be asked or answered nonsense:
	// unknown means no destructive action.
	Known bool
	// Err explains why facts are unknown.
	Err error
	// Why classifies unknown facts for the refusals metric: pd-unknown,
	// pd-cluster-mismatch, owner-vanished.
	Why string
	// Phase of the TiKV store (PhaseTombstone also when PD no longer lists it).
	Phase pd.Phase
	// Removed: the store was last seen buried and is no longer in its own
	// cluster's PD, or the member is gone from a membership that carries on.
	Removed bool
	// ClusterID is the cluster of the PD that answered.
	ClusterID uint64
	// Undrainable is PD's reason an Offline store can never be buried
	// (its regions have nowhere to go), when the controller can tell.
	Undrainable string
	// Store, Member and Peers are what PD listed, to refresh the record.
	Store  pd.StoreInfo
	Member pd.Member
	Peers  []pd.Member
}

// NodeFacts is the controller's view of the disk's node.
type NodeFacts struct {
	Gone        bool
	GoneFor     time.Duration
	NotReady    bool
	NotReadyFor time.Duration
	// OutOfService: the node carries node.kubernetes.io/out-of-service
	// (non-graceful node shutdown): an operator's or cloud's explicit word
	// that it is gone, acted on without the deletion grace.
	OutOfService bool
	// DeadFor is how long the node has been dead by the rules (0 while it
	// is not): PD notices a store's silence only 20 s after its last
	// heartbeat, so an Up store on a node dead for less is not news.
	DeadFor time.Duration
}

// StoreSilenceGrace is how long a store may still show Up on a node dead
// by the rules before that means it heartbeats (PD marks a silent store
// Disconnected 20 s after its last heartbeat; TiKV heartbeats every 10 s).
const StoreSilenceGrace = 30 * time.Second

// PodFacts is the pod that mounts the claim, if any.
type PodFacts struct {
	Exists bool
	// OnStatefulSet: owned by a StatefulSet, which will recreate it.
	OnStatefulSet bool
	// OnInstance: the claim belongs to a TiDB Operator v2 instance object
	// (no StatefulSet: the instance is what is deleted to start over).
	OnInstance  bool
	Ready       bool
	NotReadyFor time.Duration
}

// Policy holds the thresholds operators tune.
type Policy struct {
	// DeadNodeGrace: how long a deleted Node stays deleted before its disks
	// are acted on (a node object recreated by a cloud controller comes
	// back within it).
	DeadNodeGrace time.Duration
	// NotReadyThreshold: a node NotReady this long counts as dead; 0 turns
	// the rule off (the default: NotReady is often a kubelet or network
	// problem, not a lost disk).
	NotReadyThreshold time.Duration
	// StuckPodGrace: a pod on a Tombstone store's disk that stays not Ready
	// this long is stuck, not just between TiDB Operator's store burial and
	// its scale-in.
	StuckPodGrace time.Duration
	// FailedDiskGrace: a disk its agent reports Failed this long is, for
	// its one TiKV store, what a dead node is for all of a node's stores;
	// 0 turns the rule off (the default: see docs/defaults.md).
	FailedDiskGrace time.Duration
	// UnresolvedGrace: a TiKV or PD claim whose owner is still not
	// confirmed in PD after this long is reported: its disk will not be
	// recycled until it is.
	UnresolvedGrace time.Duration
}

// Input is everything the policy looks at for a bound PV.
type Input struct {
	Component string
	// Owned: the store or member was recorded for the PV's current claim.
	Owned bool
	Owner string // "store 7" / "PD member pd-2", for messages
	// Unresolved says why no owner is confirmed (when !Owned), and
	// UnresolvedFor for how long the claim has existed without one.
	Unresolved    string
	UnresolvedFor time.Duration
	Facts         OwnerFacts
	Node          NodeFacts
	Pod           PodFacts
	// OfflinedByUs: the controller offlined the store for a dead node.
	OfflinedByUs bool
	// Disk is the health its agent reports for the disk.
	Disk DiskFacts
}

// DiskFacts is the disk's health as its agent reports it.
type DiskFacts struct {
	Failed    bool
	FailedFor time.Duration
	Reason    string
}

// diskDead: the disk is failed past the opt-in grace.
func (p Policy) diskDead(d DiskFacts) (bool, string) {
	if p.FailedDiskGrace > 0 && d.Failed && d.FailedFor >= p.FailedDiskGrace {
		return true, fmt.Sprintf("its disk has been failed (%s) for %s", d.Reason, d.FailedFor.Round(time.Second))
	}
	return false, ""
}

func (p Policy) nodeDead(n NodeFacts) (bool, string) {
	if n.OutOfService {
		return true, "node tainted " + TaintOutOfService
	}
	if n.Gone && n.GoneFor >= p.DeadNodeGrace {
		return true, fmt.Sprintf("node deleted %s ago", n.GoneFor.Round(time.Second))
	}
	if p.NotReadyThreshold > 0 && n.NotReady && n.NotReadyFor >= p.NotReadyThreshold {
		return true, fmt.Sprintf("node NotReady for %s", n.NotReadyFor.Round(time.Second))
	}
	return false, ""
}

// DecideBound is the policy for a Bound PV of a TiKV or PD pod (DESIGN rules
// 7 and 9 and the safety rules). It is pure: every input is explicit, so
// each rule is a table test.
func (p Policy) DecideBound(in Input) Decision {
	dead, why := p.nodeDead(in.Node)
	diskFailed := false
	if !dead && in.Component == ComponentTiKV {
		// A failed disk is a dead node for its one store: the store is
		// offlined, released once buried, and its pod starts over on a
		// healthy disk — every other rule unchanged.
		dead, why = p.diskDead(in.Disk)
		diskFailed = dead
	}
	d := p.decideBound(in, dead, why)
	d.DiskFailed = diskFailed && d.Action != ActNone && d.Action != ActWait
	return d
}

func (p Policy) decideBound(in Input, dead bool, why string) Decision {
	switch {
	case !in.Owned:
		if dead {
			return Decision{Action: ActNone, Warn: true, Refusal: "owner-unknown",
				Reason: fmt.Sprintf("%s, but no TiKV store or PD member was ever confirmed for this claim (%s); nothing is released without a known owner", why, in.Unresolved)}
		}
		if p.UnresolvedGrace > 0 && in.UnresolvedFor >= p.UnresolvedGrace {
			return Decision{Action: ActNone, Warn: true, Refusal: "owner-unresolved",
				Reason: fmt.Sprintf("no %s owner confirmed in PD after %s (%s); the disk will not be recycled until one is — check the PD endpoint and that the pod's store registered", in.Component, in.UnresolvedFor.Round(time.Second), in.Unresolved)}
		}
		return Decision{Action: ActNone}
	case !in.Facts.Known:
		return Decision{Action: ActNone, Warn: dead || in.Facts.Err != nil, Refusal: orDefault(in.Facts.Why, unknownPD),
			Reason: fmt.Sprintf("state of %s is unknown (%v); no destructive action while PD cannot tell", in.Owner, in.Facts.Err)}
	}
	if ownerGone(in.Component, in.Facts) {
		what := fmt.Sprintf("%s is %s", in.Owner, ownerGoneWord(in))
		stuck := !in.Pod.Ready && in.Pod.NotReadyFor >= p.StuckPodGrace
		switch {
		case !in.Pod.Exists:
			return Decision{Action: ActRelease, OwnerGone: true, Reason: what + " and no pod mounts its claim"}
		case in.Pod.OnInstance && (dead || stuck):
			return Decision{Action: ActDeleteInstance, OwnerGone: true, Reason: fmt.Sprintf("%s and its pod is stuck: %s", what, orDefault(why, fmt.Sprintf("not Ready for %s", in.Pod.NotReadyFor.Round(time.Second))))}
		case dead:
			return Decision{Action: ActReleaseWithPod, OwnerGone: true, Reason: fmt.Sprintf("%s and its pod is stuck: %s", what, why)}
		case in.Pod.OnStatefulSet && stuck:
			return Decision{Action: ActReleaseWithPod, OwnerGone: true, Reason: fmt.Sprintf("%s and its pod has not been Ready for %s", what, in.Pod.NotReadyFor.Round(time.Second))}
		default:
			// A Ready pod, or one not stuck long enough: TiDB Operator buries
			// the store before it scales the pod away; give it the time.
			return Decision{Action: ActWait, Reason: what + "; waiting for its pod to go"}
		}
	}
	if in.Component != ComponentTiKV {
		if dead {
			return Decision{Action: ActNone, Warn: true, Refusal: "member-listed",
				Reason: fmt.Sprintf("%s, but %s is still in PD's member list; remove the member (pd-ctl member delete name …) to release its disk", why, in.Owner)}
		}
		return Decision{Action: ActNone}
	}
	switch in.Facts.Phase {
	case pd.PhaseUp:
		if dead && in.Node.DeadFor < StoreSilenceGrace && !in.Disk.Failed {
			return Decision{Action: ActWait, Reason: fmt.Sprintf("%s; waiting for PD to notice that %s went silent", why, in.Owner)}
		}
		if dead {
			return Decision{Action: ActNone, Warn: true, Refusal: "store-up",
				Reason: fmt.Sprintf("%s, but %s is Up in PD: it still heartbeats, so the node object is wrong; doing nothing", why, in.Owner)}
		}
		return Decision{Action: ActNone}
	case pd.PhaseDisconnected, pd.PhaseDown:
		if dead && in.Pod.OnInstance {
			return Decision{Action: ActDeleteInstance, Reason: fmt.Sprintf("%s and %s is %s", why, in.Owner, in.Facts.Phase)}
		}
		if dead {
			return Decision{Action: ActOffline, Reason: fmt.Sprintf("%s and %s is %s", why, in.Owner, in.Facts.Phase)}
		}
		return Decision{Action: ActNone}
	case pd.PhaseOffline:
		switch {
		case dead && in.Facts.Undrainable != "":
			return Decision{Action: ActWait, Warn: true, Refusal: "store-undrainable", Reason: fmt.Sprintf(
				"%s and %s is Offline, but PD cannot bury it: %s. PD keeps it Offline until its regions can move, and tidb-localpv never forces it. Choices: add TiKV stores (scale out) so its regions have somewhere to go; or, if the data on the dead node is lost for good, remove the store yourself (pd-ctl unsafe remove-failed-stores %d) — its disk is released once PD shows it Tombstone",
				why, in.Owner, in.Facts.Undrainable, in.Facts.Store.ID)}
		case !dead && in.OfflinedByUs:
			return Decision{Action: ActWait, Warn: true, Refusal: "node-returned", Reason: fmt.Sprintf(
				"the node is back, but %s is Offline because tidb-localpv offlined it while the node was dead; PD is moving its data away. To keep the store, cancel: pd-ctl store cancel-delete %d (or POST /pd/api/v1/store/%d/state?state=Up)",
				in.Owner, in.Facts.Store.ID, in.Facts.Store.ID)}
		}
		return Decision{Action: ActWait, Reason: fmt.Sprintf("%s is Offline: PD is moving its data away", in.Owner)}
	default:
		return Decision{Action: ActNone, Warn: dead, Refusal: "pd-unknown",
			Reason: fmt.Sprintf("%s is in a state PD did not make clear (%s); no destructive action", in.Owner, in.Facts.Phase)}
	}
}

// ownerGone is the one rule for "the owner's data is no longer needed": PD
// answered, and the store is buried (or no longer listed) or the member was
// removed. The policy decides with it and the actions re-check with it.
func ownerGone(component string, f OwnerFacts) bool {
	return f.Known && (f.Removed || (component == ComponentTiKV && f.Phase == pd.PhaseTombstone))
}

func ownerGoneWord(in Input) string {
	switch {
	case in.Component == ComponentPD:
		return "no longer a PD member"
	case in.Facts.Removed:
		return "removed from PD"
	default:
		return "Tombstone"
	}
}

// ReleasedInput is everything the policy looks at for a Released PV.
type ReleasedInput struct {
	Component string
	// Owned: an owner was recorded for the claim the PV was released from;
	// Approved: the controller found it gone and approved the wipe.
	Owned, Approved bool
	// ReclaimDelete: the PV's reclaimPolicy is Delete.
	ReclaimDelete bool
	Owner         string
	Facts         OwnerFacts
	Node          NodeFacts
}

// DecideReleased is the policy for a Released PV: approve the wipe of an
// owned disk only when its owner is gone, put an approved PV back to
// Delete if someone restored Retain, and remove the PV object of a dead
// node when it is to be wiped (no agent is left to wipe it).
func (p Policy) DecideReleased(in ReleasedInput) Decision {
	dead, why := p.nodeDead(in.Node)
	switch {
	case in.Owned && !in.Approved:
		if !ownerGone(in.Component, in.Facts) {
			state := "unknown"
			refusal := "owner-alive"
			if in.Facts.Known {
				state = in.Facts.Phase.String()
			} else {
				refusal = orDefault(in.Facts.Why, unknownPD)
				if in.Facts.Err != nil {
					state = fmt.Sprintf("unknown (%v)", in.Facts.Err)
				}
			}
			return Decision{Action: ActNone, Warn: true, Refusal: refusal,
				Reason: fmt.Sprintf("the claim was deleted but %s is %s in PD; the disk keeps its data and is not wiped", in.Owner, state)}
		}
		return Decision{Action: ActApprove, Reason: fmt.Sprintf("%s is %s", in.Owner, ownerGoneWord(Input{Component: in.Component, Facts: in.Facts}))}
	case in.Owned && in.Approved && !in.ReclaimDelete:
		return Decision{Action: ActReclaimDelete, Reason: "the wipe was approved for this claim but the reclaim policy was set back to Retain (TiDB Operator restores its pvReclaimPolicy); a disk whose owner is gone is recycled"}
	case !in.Owned && !in.ReclaimDelete && (in.Component == ComponentTiKV || in.Component == ComponentPD):
		return Decision{Action: ActNone, Warn: true, Refusal: "owner-unknown",
			Reason: fmt.Sprintf("the claim of this %s disk was deleted, but no owner was ever confirmed in PD for it; the disk keeps its data (reclaimPolicy %s). If its data is no longer needed, delete the PV; the disk is wiped before it is published again", in.Component, "Retain")}
	case dead && in.Node.Gone && in.ReclaimDelete:
		// Only a PV that would be wiped anyway: a Retain PV keeps its
		// data, and without its PV the disk would be wiped as an orphan
		// when its node came back.
		return Decision{Action: ActDeletePV, Reason: why + "; no agent is left to wipe the disk, and a disk that comes back is wiped before reuse"}
	}
	return Decision{Action: ActNone}
}

// DecidePlain is the policy for a Bound PV whose claim no TiKV or PD pod
// uses: it recycles like any local volume once its claim goes.
func (p Policy) DecidePlain(reclaimDelete bool) Decision {
	if reclaimDelete {
		return Decision{Action: ActNone}
	}
	return Decision{Action: ActReclaimDelete, Reason: "the claim is not used by a TiKV or PD pod: its disk is recycled when the claim is deleted"}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// DecideFree is the policy for an Available PV.
func (p Policy) DecideFree(node NodeFacts) Decision {
	if dead, why := p.nodeDead(node); dead && node.Gone {
		return Decision{Action: ActDeletePV, Reason: why + "; its free disk cannot be used"}
	}
	return Decision{Action: ActNone}
}
