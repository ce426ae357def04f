package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// mountDisks gives every node real disks: tmpfs mounts under the tidb-localpv-tikv
// discovery directory, found by the agents through mount-table events.
func (s *story) mountDisks() error {
	s.say("running as root: mounting %d tmpfs disks (64 MiB) per node under its tidb-localpv-tikv discovery directory", disksPerNode)
	s.mounted = map[string]bool{}
	for _, n := range s.nodes {
		for i := range disksPerNode {
			dir, err := n.MountDisk("tidb-localpv-tikv", fmt.Sprintf("disk%d", i), "64m")
			if err != nil {
				return err
			}
			s.mounted[dir] = true
		}
	}
	return nil
}

// inventoryDirs is the way without root: plain directories, which the
// agents would never publish on their own (a directory that is not a mount
// point is the node's root disk), listed in the inventory with the explicit
// opt-in.
func (s *story) inventoryDirs(ctx context.Context) error {
	s.say("NOT running as root (or -plain-dirs): no tmpfs mounts. Each node gets %d plain directories,", disksPerNode)
	s.say("published through inventory path entries with allowNonMountPoint: true — the explicit")
	s.say("opt-in for a directory that is not a mount point (it shares the capacity of the")
	s.say("filesystem that holds it, so capacities below are that filesystem's).")
	var doc strings.Builder
	doc.WriteString("disks:\n")
	for _, n := range s.nodes {
		for i := range disksPerNode {
			dir := filepath.Join(n.ClassDir("tidb-localpv-tikv"), fmt.Sprintf("disk%d", i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			fmt.Fprintf(&doc, "- node: %s\n  path: %s\n  storageClass: tidb-localpv-tikv\n  allowNonMountPoint: true\n", n.Name, dir)
		}
	}
	if _, err := s.env.SetInventory(ctx, doc.String()); err != nil {
		return err
	}
	s.say("inventory ConfigMap %s/%s now lists them", "tidb-localpv", "tidb-localpv-inventory")
	return nil
}

// waitFor polls cond until it holds, ctx ends or the step times out.
func (s *story) waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// A dead controller would only show as a timeout: say so at once.
		if s.controller != nil && s.controller.Exited() {
			return fmt.Errorf("wait for %s: the controller exited: %w", what, s.controller.ExitError())
		}
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// pvs lists our PVs with the given labels.
func (s *story) pvs(ctx context.Context, sel map[string]string) ([]corev1.PersistentVolume, error) {
	list, err := s.env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: labels.Set(sel).String()})
	if err != nil {
		return nil, err
	}
	var out []corev1.PersistentVolume
	for _, pv := range list.Items {
		if provisioner.IsOurs(&pv) && pv.DeletionTimestamp == nil {
			out = append(out, pv)
		}
	}
	return out, nil
}

// listing names what a disk's root holds, hidden names included.
func (s *story) listing(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() {
			n += "/"
		}
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return "(nothing)"
	}
	return strings.Join(names, "  ")
}

// timeline records, from a watch, what happens to the PVs of one disk until
// a PV other than the old one is Available.
type timeline struct {
	start time.Time
	old   types.UID

	mu       sync.Mutex
	entries  []string
	phases   map[types.UID][]corev1.PersistentVolumePhase
	finished bool
}

// follow starts watching the PVs of disk id. The watch starts at the list's
// resourceVersion, so no change after this call is missed.
func follow(ctx context.Context, c kubernetes.Interface, id string, old types.UID) (*timeline, error) {
	sel := labels.Set{provisioner.LabelDisk: id}.String()
	list, err := c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, err
	}
	w, err := c.CoreV1().PersistentVolumes().Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, err
	}
	t := &timeline{start: time.Now(), old: old, phases: map[types.UID][]corev1.PersistentVolumePhase{}}
	for _, pv := range list.Items {
		t.phases[pv.UID] = []corev1.PersistentVolumePhase{pv.Status.Phase}
	}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			pv, ok := ev.Object.(*corev1.PersistentVolume)
			if !ok {
				continue
			}
			if t.record(ev.Type, pv) {
				return
			}
		}
	}()
	return t, nil
}

// record notes a phase change or deletion and reports whether the story of
// the disk is complete.
func (t *timeline) record(typ watch.EventType, pv *corev1.PersistentVolume) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	at := time.Since(t.start).Round(time.Millisecond)
	which := "old PV"
	if pv.UID != t.old {
		which = "NEW PV"
	}
	tag := fmt.Sprintf("+%-6s %s %s (UID %s…)", at, which, pv.Name, string(pv.UID)[:8])
	switch {
	case typ == watch.Deleted:
		t.entries = append(t.entries, tag+" deleted")
	case pv.DeletionTimestamp != nil:
		// The library deletes right after the wipe; the object lingers
		// only for its finalizers.
	default:
		ph := t.phases[pv.UID]
		if len(ph) == 0 || ph[len(ph)-1] != pv.Status.Phase {
			t.phases[pv.UID] = append(ph, pv.Status.Phase)
			verb := "is"
			if typ == watch.Added {
				verb = "created,"
			}
			t.entries = append(t.entries, fmt.Sprintf("%s %s %s", tag, verb, pv.Status.Phase))
		}
	}
	if pv.UID != t.old && typ != watch.Deleted && pv.Status.Phase == corev1.VolumeAvailable {
		t.finished = true
	}
	return t.finished
}

func (t *timeline) seen(uid types.UID, phase corev1.PersistentVolumePhase) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Contains(t.phases[uid], phase) || t.finished
}

func (t *timeline) done() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.finished
}

func (t *timeline) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.entries)
}
