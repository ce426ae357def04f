package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
)

// The TiDB Operator v2 chapter's cluster: "basic" in namespace "db", as in
// v2's documentation, with 4 TiKV instances (PD offlines a store only
// while 3 others stay Up) and nodes of its own.
const (
	v2Namespace = "db"
	v2Cluster   = "basic"
	v2Replicas  = 4
	v2NewNodes  = 3
)

// v2Owner is a v2 TiKV instance with the disk the controller recorded.
type v2Owner struct {
	instance, pod, node string
	pv                  corev1.PersistentVolume
	store               uint64
}

// operatorV2 tells the TiDB Operator v2 story: no StatefulSet, one
// instance object per TiKV, and no failover — v2's documentation asks an
// operator to delete the TiKV instance of a dead node by hand. The
// controller, already running, finds this cluster's PD through the
// Cluster object's status.pd (no flag) and does that step; the "operator"
// offlines the store, removes pod and claim, and its group starts a
// replacement on a fresh disk.
func (s *story) operatorV2(ctx context.Context) error {
	s.say("TiDB Operator v2 (core.pingcap.com/v1alpha1) manages pods directly: one TiKV instance object")
	s.say("per store, its pod <group>-tikv-<suffix> and claim data-<pod> owned by the instance, labelled")
	s.say("with both pingcap.com/* and app.kubernetes.io/*. It has NO failover for a dead node: its docs")
	s.say("say to `kubectl delete tikv <instance>` by hand. A registrar plays v2 here (test CRDs holding")
	s.say("the fields tidb-localpv reads, v2's finalizer behaviour) and TiKV against the cluster's own PD.")
	if err := s.addV2Nodes(ctx); err != nil {
		return err
	}
	v, err := s.env.StartV2(ctx, sim.V2Options{Namespace: v2Namespace, Cluster: v2Cluster, Replicas: v2Replicas, PD: pdOptions()})
	if err != nil {
		return fmt.Errorf("start the v2 cluster: %w", err)
	}
	s.v2 = v
	s.chron.mark()
	s.chron.say("Cluster %s/%s (status.pd %s), TiKVGroup %s with %d replicas", v2Namespace, v2Cluster, v.URL, v2Cluster, v2Replicas)
	s.say("The controller has no --pd-endpoint for this cluster: it reads the Cluster's status.pd.")
	owners, err := s.waitV2Owners(ctx, nil)
	if err != nil {
		return err
	}
	for _, o := range owners {
		if err := v.Sim.SetRegions(o.store, regionsPerStore); err != nil {
			return err
		}
		s.say("  instance %s  →  pod %s on %s  →  store %d  →  PV %s", o.instance, o.pod, o.node, o.store, o.pv.Name)
	}

	victim, err := v2Victim(owners)
	if err != nil {
		return err
	}
	s.say("\n%s runs instance %s (store %d). It dies: agent stopped, Node deleted. Expect: the store", victim.node, victim.instance, victim.store)
	s.say("silent, Disconnected in PD; after the %s grace tidb-localpv deletes the TiKV instance (UID", deadNodeGrace)
	s.say("precondition, PD re-checked); v2 sets spec.offline and deletes the store in PD; PD buries it;")
	s.say("v2 deletes pod and claim (the pod goes once Kubernetes garbage-collects the dead node's pods,")
	s.say("~40-60 s); the finalizer goes; the group creates a NEW instance, whose pod runs on a fresh disk.")
	n := s.node(victim.node)
	if n == nil {
		return fmt.Errorf("node %s is not one of the playground's", victim.node)
	}
	n.StopAgent()
	deleted := s.chron.mark()
	if err := s.env.Cluster.Client.CoreV1().Nodes().Delete(ctx, victim.node, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete node %s: %w", victim.node, err)
	}
	s.chron.say("deleted Node %s (its agent stopped just before)", victim.node)
	if err := s.v2Milestones(ctx, victim); err != nil {
		return err
	}
	var repl []v2Owner
	if repl, err = s.waitV2Owners(ctx, owners); err != nil {
		return err
	}
	fresh := repl[0]
	s.chron.say("replacement instance %s: pod %s Running on %s, store %d recorded on PV %s", fresh.instance, fresh.pod, fresh.node, fresh.store, fresh.pv.Name)
	if got := v.Sim.DeleteRequests(victim.store); got != 1 {
		return fmt.Errorf("store %d: want exactly one offline (by v2), have %d", victim.store, got)
	}
	s.say("\nNo StatefulSet anywhere: tidb-localpv deleted one instance object, v2 did the rest.")
	s.say("  node deleted → replacement %s Running on a fresh disk:   %s", fresh.pod, time.Since(deleted).Round(time.Millisecond))
	s.say("  kubectl get tikv -n %s   (the instances; StoreID and StoreState columns)", v2Namespace)
	return s.table(ctx)
}

// addV2Nodes adds the chapter's nodes, each with disksPerNode disks.
func (s *story) addV2Nodes(ctx context.Context) error {
	var added []*sim.Node
	for i := range v2NewNodes {
		n, err := s.env.AddNode(ctx, nodeName(nodeCount+i))
		if err != nil {
			return err
		}
		if err := n.StartAgent(ctx); err != nil {
			return err
		}
		s.nodes = append(s.nodes, n)
		added = append(added, n)
	}
	if s.root {
		for _, n := range added {
			for i := range disksPerNode {
				dir, err := n.MountDisk("tidb-localpv-tikv", fmt.Sprintf("disk%d", i), "64m")
				if err != nil {
					return err
				}
				s.mounted[dir] = true
			}
		}
	} else if err := s.inventoryDirs(ctx); err != nil {
		return err
	}
	names := make([]string, len(added))
	for i, n := range added {
		names[i] = n.Name
	}
	return s.waitFor(ctx, "the new nodes' disks Available", func() (bool, error) {
		free := 0
		for _, name := range names {
			pvs, err := s.pvs(ctx, map[string]string{provisioner.LabelNode: name})
			if err != nil {
				return false, err
			}
			for _, pv := range pvs {
				if pv.Status.Phase == corev1.VolumeAvailable {
					free++
				}
			}
		}
		return free == len(names)*disksPerNode, nil
	})
}

// waitV2Owners waits until v2Replicas instances run with their stores
// recorded, none of them in old, and returns them by instance name.
func (s *story) waitV2Owners(ctx context.Context, old []v2Owner) ([]v2Owner, error) {
	var out []v2Owner
	err := s.waitFor(ctx, fmt.Sprintf("%d v2 TiKV instances Running with their owners recorded", v2Replicas), func() (bool, error) {
		insts, err := s.v2.Instances(ctx)
		if err != nil {
			return false, err
		}
		out = out[:0]
		for _, inst := range insts {
			if inst.GetDeletionTimestamp() != nil {
				continue
			}
			o, ok := s.v2OwnerOf(ctx, inst)
			if !ok {
				return false, nil
			}
			out = append(out, o)
		}
		if len(out) != v2Replicas {
			return false, nil
		}
		if old == nil {
			return true, nil
		}
		// The new one first.
		slices.SortFunc(out, func(a, b v2Owner) int {
			return boolInt(isOld(old, a.instance)) - boolInt(isOld(old, b.instance))
		})
		return !isOld(old, out[0].instance), nil
	})
	return out, err
}

func isOld(old []v2Owner, instance string) bool {
	return slices.ContainsFunc(old, func(o v2Owner) bool { return o.instance == instance })
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *story) v2OwnerOf(ctx context.Context, inst unstructured.Unstructured) (v2Owner, bool) {
	c := s.env.Cluster.Client.CoreV1()
	pod, err := c.Pods(v2Namespace).Get(ctx, sim.V2PodName(inst.GetName(), "tikv"), metav1.GetOptions{})
	if err != nil || pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
		return v2Owner{}, false
	}
	pvc, err := c.PersistentVolumeClaims(v2Namespace).Get(ctx, sim.V2ClaimName("data", pod.Name), metav1.GetOptions{})
	if err != nil || pvc.Status.Phase != corev1.ClaimBound {
		return v2Owner{}, false
	}
	pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || !provisioner.Owned(pv) || pv.Annotations[provisioner.AnnOwnerState] != "Up" {
		return v2Owner{}, false
	}
	id, err := strconv.ParseUint(pv.Annotations[provisioner.AnnStoreID], 10, 64)
	if err != nil {
		return v2Owner{}, false
	}
	return v2Owner{instance: inst.GetName(), pod: pod.Name, node: pod.Spec.NodeName, pv: *pv, store: id}, true
}

// v2Victim picks a node that runs exactly one v2 TiKV pod and no v1 one
// (the chapter's new nodes run none): losing it loses one v2 store.
func v2Victim(owners []v2Owner) (v2Owner, error) {
	count := map[string]int{}
	for _, o := range owners {
		count[o.node]++
	}
	for i := range v2NewNodes {
		for _, o := range owners {
			if o.node == nodeName(nodeCount+i) && count[o.node] == 1 {
				return o, nil
			}
		}
	}
	return v2Owner{}, fmt.Errorf("no new node runs exactly one v2 TiKV pod (placement %v); run the playground again", count)
}

// v2Milestones prints, as they happen, the steps between the node's
// deletion and the old instance being gone.
func (s *story) v2Milestones(ctx context.Context, victim v2Owner) error {
	told := map[string]bool{}
	tell := func(key, format string, args ...any) {
		if !told[key] {
			told[key] = true
			s.chron.say(format, args...)
		}
	}
	return s.waitFor(ctx, "instance "+victim.instance+" gone", func() (bool, error) {
		if st, ok := s.v2.Sim.Store(victim.store); ok {
			tell("store-"+st.StateName, "PD: store %d is %s", victim.store, st.StateName)
		}
		evs, err := s.env.Cluster.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + victim.pv.Name})
		if err != nil {
			return false, err
		}
		for _, ev := range evs.Items {
			if ev.Reason == volumecontroller.ReasonInstanceDeleted {
				tell("deleted", "tidb-localpv %s: %s", ev.Reason, ev.Message)
			}
		}
		inst, err := s.v2.InstanceGet(ctx, victim.instance)
		if err != nil {
			tell("gone", "instance %s is gone (v2's finalizer let it go)", victim.instance)
			return true, nil
		}
		if off, _, _ := unstructured.NestedBool(inst.Object, "spec", "offline"); off {
			tell("offline", "v2: instance %s spec.offline=true", victim.instance)
		}
		if _, err := s.env.Cluster.Client.CoreV1().Pods(v2Namespace).Get(ctx, victim.pod, metav1.GetOptions{}); err != nil {
			tell("pod", "pod %s is gone", victim.pod)
		}
		return false, nil
	})
}

// closeV2 stops the v2 chapter's operator and PD; safe when it never ran.
func (s *story) closeV2() {
	if s.v2 != nil {
		s.v2.Close()
		s.v2 = nil
	}
}
