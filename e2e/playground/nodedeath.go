package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
)

// nodeDeath loses a node with a TiKV pod on it. Nobody acts by hand after
// the node is deleted: the controller offlines the silent store, waits for
// PD to bury it, releases the claim and the stuck pod, and the StatefulSet
// starts the pod over on a fresh disk elsewhere.
func (s *story) nodeDeath(ctx context.Context) error {
	s.say("TiKV back to %d first (PD accepts a store's removal only while 3 others stay Up):", tikvReplicas)
	s.chron.mark()
	if err := s.scale(ctx, tikvReplicas); err != nil {
		return err
	}
	owners, err := s.waitOwners(ctx, tikvReplicas)
	if err != nil {
		return err
	}
	last := owners[tikvReplicas-1]
	if err := s.giveRegions(last.store); err != nil {
		return err
	}
	s.chron.say("%s runs on %s with store %d: a NEW ID, PD never reuses a buried store's", last.pod, last.node, last.store)

	v := victim(owners)
	var free []string
	pvs, err := s.pvs(ctx, map[string]string{provisioner.LabelNode: v.node})
	if err != nil {
		return err
	}
	for _, pv := range pvs {
		if pv.Status.Phase == corev1.VolumeAvailable {
			free = append(free, pv.Name)
		}
	}
	node := s.node(v.node)
	if node == nil {
		return fmt.Errorf("node %s is not one of the playground's", v.node)
	}
	s.say("\n%s runs %s (store %d, PV %s) and has %d free disk(s) %v.", v.node, v.pod, v.store, v.pv.Name, len(free), free)
	s.say("It dies: its agent stops first (nothing on a dead node answers), then its Node object is")
	s.say("deleted. From then on nobody acts by hand. Expect: the %s grace period; the store, silent,", deadNodeGrace)
	s.say("Disconnected in PD; the controller offlining it; PD burying it; the claim and the stuck pod")
	s.say("released; the pod Running on another node's free disk with a new store; the dead node's PVs gone.")
	data, err := writeTiKVData(v.pv.Spec.Local.Path, v.store)
	if err != nil {
		return err
	}
	node.StopAgent()
	s.dead = v.node
	deleted := s.chron.mark()
	if err := s.env.Cluster.Client.CoreV1().Nodes().Delete(ctx, v.node, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete node %s: %w", v.node, err)
	}
	s.chron.say("deleted Node %s (its agent stopped just before)", v.node)

	var moved owned
	if err := s.waitFor(ctx, v.pod+" Running on another node", func() (bool, error) {
		p, err := s.env.Cluster.Client.CoreV1().Pods(s.sts.Namespace).Get(ctx, v.pod, metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || p.Spec.NodeName == v.node || p.Spec.NodeName == "" {
			return false, nil
		}
		pvc, err := s.env.Cluster.Client.CoreV1().PersistentVolumeClaims(s.sts.Namespace).Get(ctx, sim.ClaimName("tikv", s.sts.Name, podIndex(owners, v.pod)), metav1.GetOptions{})
		if err != nil || pvc.Spec.VolumeName == "" || pvc.Spec.VolumeName == v.pv.Name {
			return false, nil
		}
		moved = owned{pod: p.Name, node: p.Spec.NodeName}
		return true, nil
	}); err != nil {
		return err
	}
	running := time.Now()
	s.chron.say("%s Running on %s", v.pod, moved.node)

	if err := s.waitFor(ctx, "the new store of "+v.pod+" recorded", func() (bool, error) {
		o, ok := s.ownerOf(ctx, podIndex(owners, v.pod))
		if ok && o.store != v.store {
			moved = o
			return true, nil
		}
		return false, nil
	}); err != nil {
		return err
	}
	if err := s.waitFor(ctx, "the PVs of "+v.node+" removed", func() (bool, error) {
		left, err := s.pvs(ctx, map[string]string{provisioner.LabelNode: v.node})
		return len(left) == 0, err
	}); err != nil {
		return err
	}
	if err := s.waitEvents(ctx, []string{"PersistentVolume/" + v.pv.Name + "#" + string(v.pv.UID), "Node/" + v.node + "#", "Pod/" + v.pod + "#"},
		volumecontroller.ReasonStoreOfflined, volumecontroller.ReasonReleased, volumecontroller.ReasonPodDeleted, volumecontroller.ReasonPVDeleted); err != nil {
		return err
	}
	st, _ := s.pd.Sim.Store(v.store)
	if st.StateName != "Tombstone" || s.pd.Sim.DeleteRequests(v.store) != 1 {
		return fmt.Errorf("store %d: want Tombstone after exactly one offline, have %s after %d", v.store, st.StateName, s.pd.Sim.DeleteRequests(v.store))
	}
	s.say("\n%s runs on %s with claim on PV %s and store %d (was store %d on %s).", v.pod, moved.node, moved.pv.Name, moved.store, v.store, v.node)
	if _, err := os.Stat(data); err != nil {
		return fmt.Errorf("nothing may touch the dead node's disk: %w", err)
	}
	s.say("The disk of %s still holds store %d's data (%s): nobody wiped it. If the node", v.node, v.store, s.chron.short(data))
	s.say("comes back, its agent finds the disk without a PV and wipes it before publishing it again.")
	s.say("  node deleted → %s Running elsewhere:   %s", v.pod, running.Sub(deleted).Round(time.Millisecond))
	return s.wideTables(ctx)
}

// victim picks the TiKV pod to lose with its node: one alone on its node
// (losing a node then loses one store), preferring the lowest ordinal
// after 0.
func victim(owners []owned) owned {
	count := map[string]int{}
	for _, o := range owners {
		count[o.node]++
	}
	order := slices.Clone(owners)
	if len(order) > 1 {
		order = append(order[1:], order[0])
	}
	for _, o := range order {
		if count[o.node] == 1 {
			return o
		}
	}
	return order[0]
}

func podIndex(owners []owned, pod string) int {
	return slices.IndexFunc(owners, func(o owned) bool { return o.pod == pod })
}

func (s *story) node(name string) *sim.Node {
	for _, n := range s.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}
