package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

const (
	// tikvReplicas is the TiKV count of the controller chapters: with PD's
	// max-replicas 3, PD accepts a store's removal only while 3 others stay
	// Up, so scale-in and a dead node's offline both need 4.
	tikvReplicas = 4
	// regionsPerStore gives each store data to move, so an offline takes
	// PD's drain time instead of ending at the next check.
	regionsPerStore = 64
	controllerName  = "controller-0"
	// controllerLease is the Lease of manifests/controller-deployment.yaml.
	controllerLease = "tidb-localpv-controller"
	deadNodeGrace   = 3 * time.Second
)

// pdOptions are PD's lifecycle at playground speed (the e2e suite's): an
// offlined store drains in about a second, a silent one is Disconnected
// after 2 s and Down after 4 s.
func pdOptions() pdsim.Options {
	return pdsim.Options{MaxReplicas: 3, DrainDelay: time.Second, DisconnectedAfter: 2 * time.Second, DownAfter: 4 * time.Second, CheckInterval: 200 * time.Millisecond}
}

// owned is a TiKV pod with the disk the controller recorded it owns.
type owned struct {
	pod   string
	node  string
	pv    corev1.PersistentVolume
	store uint64
}

// own starts PD and the volume-controller, scales TiKV to 4 and waits until
// every disk records its owner.
func (s *story) own(ctx context.Context) error {
	p, err := s.env.StartPD(ctx, pdOptions())
	if err != nil {
		return fmt.Errorf("start the PD simulator: %w", err)
	}
	s.pd = p
	if s.pdc, err = pd.New(p.URL, pd.Options{}); err != nil {
		return fmt.Errorf("PD client: %w", err)
	}
	s.say("PD simulator at %s: max-replicas 3; an offlined store drains in ~1 s; a silent", p.URL)
	s.say("store is Disconnected after 2 s and Down after 4 s. Its registrar plays TiKV: each Running TiKV")
	s.say("pod registers its advertised address and heartbeats; a pod or node that is gone falls silent.")
	for _, st := range p.Sim.Stores() {
		s.say("  store %d  %-44s %s", st.ID, st.Address, st.StateName)
	}
	args := []string{
		fmt.Sprintf("--pd-endpoint=%s/%s=%s", s.sts.Namespace, s.instance(), p.URL),
		"--pd-poll-interval=1s",
		"--dead-node-grace=" + deadNodeGrace.String(),
		"--stuck-pod-grace=10s",
	}
	s.say("\nThe volume-controller (%s) starts with the Deployment's arguments, as its ServiceAccount, plus", controllerName)
	s.say("  %s", strings.Join(args, " "))
	s.say("From here on, what happens is printed as it happens: ▶ the story's own steps, Events of the")
	s.say("controller and the agents, our PVs, the TiKV pods, and the stores as PD reports them.")
	if s.chron, err = startChronicle(s.env.Cluster.Client, p.Sim, s.instance(), s.env.WorkDir(), s.line); err != nil {
		return err
	}
	s.chron.mark()
	proc, err := s.env.StartController(ctx, controllerName, append(args, s.extraArgs...)...)
	if err != nil {
		return fmt.Errorf("start the controller: %w", err)
	}
	s.controller = proc
	if err := s.waitFor(ctx, "the controller to hold its Lease", func() (bool, error) {
		if proc.Exited() {
			return false, fmt.Errorf("controller exited: %w", proc.ExitError())
		}
		l, err := s.env.Cluster.Client.CoordinationV1().Leases(sim.Namespace).Get(ctx, controllerLease, metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && strings.HasPrefix(*l.Spec.HolderIdentity, controllerName), nil
	}); err != nil {
		return err
	}
	s.chron.say("%s holds the Lease %s/%s (log: %s)", controllerName, sim.Namespace, controllerLease, proc.LogPath())
	// The first chapters left replicas-1 pods: their disks get owners first.
	if _, err := s.waitOwners(ctx, replicas-1); err != nil {
		return err
	}
	s.chron.say("TiKV to %d (PD accepts a store's removal only while 3 others stay Up)", tikvReplicas)
	if err := s.scale(ctx, tikvReplicas); err != nil {
		return err
	}
	owners, err := s.waitOwners(ctx, tikvReplicas)
	if err != nil {
		return err
	}
	for _, o := range owners {
		if err := s.giveRegions(o.store); err != nil {
			return err
		}
	}
	s.say("\nEvery disk records its owner (%s, %s, %s);", provisioner.AnnOwnerPod, provisioner.AnnStoreID, provisioner.AnnOwnerState)
	s.say("the record outlives the pod: after a scale-in only the PV still knows whose data it holds.")
	for _, o := range owners {
		s.say("  %s on %s  →  store %d  →  PV %s", o.pod, o.node, o.store, o.pv.Name)
	}
	s.say("each store now holds %d regions", regionsPerStore)
	return s.table(ctx)
}

// waitOwners waits until the first n TiKV pods run, each on a Bound claim
// whose PV records the pod's store, Up, for that very claim.
func (s *story) waitOwners(ctx context.Context, n int) ([]owned, error) {
	var out []owned
	err := s.waitFor(ctx, fmt.Sprintf("%d TiKV pods Running with their owners recorded", n), func() (bool, error) {
		out = out[:0]
		for i := range n {
			o, ok := s.ownerOf(ctx, i)
			if !ok {
				return false, nil
			}
			out = append(out, o)
		}
		return true, nil
	})
	return out, err
}

// ownerOf reads pod i, its claim and its PV; ok only when the owner is
// recorded as the controller does it (provisioner.Owned) and Up.
func (s *story) ownerOf(ctx context.Context, i int) (owned, bool) {
	c := s.env.Cluster.Client.CoreV1()
	pod, err := c.Pods(s.sts.Namespace).Get(ctx, s.podName(i), metav1.GetOptions{})
	if err != nil || pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
		return owned{}, false
	}
	pvc, err := c.PersistentVolumeClaims(s.sts.Namespace).Get(ctx, sim.ClaimName("tikv", s.sts.Name, i), metav1.GetOptions{})
	if err != nil || pvc.Status.Phase != corev1.ClaimBound {
		return owned{}, false
	}
	pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || !provisioner.Owned(pv) || pv.Annotations[provisioner.AnnOwnerState] != "Up" {
		return owned{}, false
	}
	id, err := strconv.ParseUint(pv.Annotations[provisioner.AnnStoreID], 10, 64)
	if err != nil {
		return owned{}, false
	}
	return owned{pod: pod.Name, node: pod.Spec.NodeName, pv: *pv, store: id}, true
}

func (s *story) giveRegions(id uint64) error {
	if err := s.pd.Sim.SetRegions(id, regionsPerStore); err != nil {
		return fmt.Errorf("give store %d regions: %w", id, err)
	}
	return nil
}

// waitStoreState polls PD (the simulator's Go API, finely: the figures
// measured from it are printed) until the store is in state.
func (s *story) waitStoreState(ctx context.Context, id uint64, state string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if st, ok := s.pd.Sim.Store(id); ok && st.StateName == state {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("wait for store %d to be %s: %w", id, state, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitEvents waits until an Event of each reason was recorded on an object
// whose kind/name#uid has one of the prefixes (the chronicle saw it).
func (s *story) waitEvents(ctx context.Context, on []string, reasons ...string) error {
	return s.waitFor(ctx, "events "+strings.Join(reasons, ", "), func() (bool, error) {
		for _, r := range reasons {
			found := false
			for _, obj := range s.chron.seen(r) {
				for _, p := range on {
					found = found || strings.HasPrefix(obj, p)
				}
			}
			if !found {
				return false, nil
			}
		}
		return true, nil
	})
}

func (s *story) scale(ctx context.Context, n int) error {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := s.env.Cluster.Client.AppsV1().StatefulSets(s.sts.Namespace).Patch(ctx, s.sts.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("scale %s to %d: %w", s.sts.Name, n, err)
	}
	return nil
}

func (s *story) podName(i int) string { return fmt.Sprintf("%s-%d", s.sts.Name, i) }

// instance is the TiDB cluster's name (app.kubernetes.io/instance).
func (s *story) instance() string {
	return s.sts.Spec.Selector.MatchLabels["app.kubernetes.io/instance"]
}

// closeTiDB stops what the controller chapters started, in the order that
// lets each part stop quietly: the chronicle's watches, the controller,
// then PD and its registrar. Safe to call when they never started.
func (s *story) closeTiDB() {
	s.chron.close()
	s.chron = nil
	if s.controller != nil {
		s.controller.Stop()
	}
	if s.pd != nil && !s.pdClosed {
		s.pd.Close() // closes its stop channel: once only
		s.pdClosed = true
	}
}

// pdLeftover reports a PD simulator still listening after closeTiDB.
func (s *story) pdLeftover() []string {
	if s.pd == nil {
		return nil
	}
	u, err := url.Parse(s.pd.URL)
	if err != nil {
		return []string{fmt.Sprintf("PD simulator %s: %v", s.pd.URL, err)}
	}
	conn, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err == nil {
		_ = conn.Close()
		return []string{"PD simulator still listening on " + u.Host}
	}
	var op *net.OpError
	if !errors.As(err, &op) {
		return []string{fmt.Sprintf("PD simulator %s: %v", u.Host, err)}
	}
	return nil
}
