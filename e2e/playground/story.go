package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

const (
	// nodeCount nodes of disksPerNode disks: room for 4 TiKV pods and for
	// one of them to move when its node dies.
	nodeCount    = 4
	disksPerNode = 2
	stsName      = "demo"
	replicas     = 3
	stepTimeout  = 90 * time.Second
)

// nodeName names the i-th node: node-a, node-b, …
func nodeName(i int) string { return fmt.Sprintf("node-%c", 'a'+i) }

// story is the narrated run: publish → bind → release → wipe → republish,
// then the volume-controller's chapters: own → scale-in → node death.
type story struct {
	env       *sim.Env
	out       io.Writer
	root      bool     // real tmpfs disks; otherwise plain directories
	extraArgs []string // for the controller (-v)
	nodes     []*sim.Node
	sts       *appsv1.StatefulSet

	// the controller chapters
	pd         *sim.PD
	pdClosed   bool
	pdc        *pd.Client
	controller *cluster.Process
	chron      *chronicle
	dead       string // the node that died
	v2         *sim.V2

	// the disk that goes round the cycle
	mounted  map[string]bool // tmpfs disks the harness made (and unmounts)
	victim   corev1.PersistentVolume
	claim    corev1.PersistentVolumeClaim
	dataFile string
	timeline *timeline
}

func (s *story) tell(ctx context.Context) error {
	for _, step := range []struct {
		title string
		run   func(context.Context) error
	}{
		{"publish — every disk of every node appears as an Available PV", s.publish},
		{"bind — a TiKV StatefulSet of 3 gets a disk each, pods Running", s.bind},
		{"release — scale TiKV to 2 and delete the freed claim", s.release},
		{"wipe — the agent empties the released disk", s.wipe},
		{"republish — the same disk comes back as a new PV", s.republish},
		{"own — PD and the volume-controller join; every disk learns its TiKV store", s.own},
		{"scale-in — a store is buried in PD; its disk is released, wiped, Available", s.scaleIn},
		{"node death — a node with a TiKV pod is lost; the pod starts over elsewhere", s.nodeDeath},
		{"operator v2 — no StatefulSet: a dead node's TiKV instance is deleted, its replacement runs on a fresh disk", s.operatorV2},
	} {
		s.banner(step.title)
		if err := step.run(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (s *story) publish(ctx context.Context) error {
	for i := range nodeCount {
		n, err := s.env.AddNode(ctx, nodeName(i))
		if err != nil {
			return err
		}
		if err := n.StartAgent(ctx); err != nil {
			return err
		}
		s.nodes = append(s.nodes, n)
	}
	for _, n := range s.nodes {
		if err := n.WaitAgentReady(ctx, stepTimeout); err != nil {
			return err
		}
	}
	s.say("%d kwok nodes, each running the real agent binary with the DaemonSet's arguments (logs: %s)", nodeCount, filepath.Join(s.env.WorkDir(), "logs"))
	began := time.Now()
	var err error
	if s.root {
		err = s.mountDisks()
	} else {
		err = s.inventoryDirs(ctx)
	}
	if err != nil {
		return err
	}
	total := len(s.nodes) * disksPerNode
	if err := s.waitFor(ctx, fmt.Sprintf("%d Available PVs", total), func() (bool, error) {
		pvs, err := s.pvs(ctx, nil)
		if err != nil {
			return false, err
		}
		n := 0
		for _, pv := range pvs {
			if pv.Status.Phase == corev1.VolumeAvailable {
				n++
			}
		}
		return n == total, nil
	}); err != nil {
		return err
	}
	s.say("%d disks published in %s:", total, time.Since(began).Round(time.Millisecond))
	return s.table(ctx)
}

func (s *story) bind(ctx context.Context) error {
	s.sts = sim.TiKVStatefulSet(stsName, replicas)
	// One TiKV per node where possible, as TiDB deployments usually ask:
	// losing a node then loses one store, which is what the node-death
	// chapter shows.
	s.sts.Spec.Template.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
			Weight: 100,
			PodAffinityTerm: corev1.PodAffinityTerm{
				TopologyKey:   corev1.LabelHostname,
				LabelSelector: &metav1.LabelSelector{MatchLabels: s.sts.Spec.Selector.MatchLabels},
			},
		}},
	}}
	if _, err := s.env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, s.sts, metav1.CreateOptions{}); err != nil {
		return err
	}
	s.say("created StatefulSet %s (%d replicas, volumeClaimTemplate \"tikv\", StorageClass tidb-localpv-tikv, WaitForFirstConsumer,", s.sts.Name, replicas)
	s.say("preferably one pod per node)")
	began := time.Now()
	c := s.env.Cluster.Client.CoreV1()
	err := s.waitFor(ctx, "3 pods Running on Bound claims", func() (bool, error) {
		for i := range replicas {
			pod, err := c.Pods("default").Get(ctx, fmt.Sprintf("%s-%d", s.sts.Name, i), metav1.GetOptions{})
			if err != nil || pod.Status.Phase != corev1.PodRunning {
				return false, nil
			}
			pvc, err := c.PersistentVolumeClaims("default").Get(ctx, sim.ClaimName("tikv", s.sts.Name, i), metav1.GetOptions{})
			if err != nil || pvc.Status.Phase != corev1.ClaimBound {
				return false, nil
			}
			pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			if i == replicas-1 {
				s.victim, s.claim = *pv, *pvc
			}
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	s.say("pods Running with their claims Bound after %s; the scheduler put each pod where its disk is:", time.Since(began).Round(time.Millisecond))
	for i := range replicas {
		pod, err := c.Pods("default").Get(ctx, fmt.Sprintf("%s-%d", s.sts.Name, i), metav1.GetOptions{})
		if err != nil {
			return err
		}
		pvc, err := c.PersistentVolumeClaims("default").Get(ctx, sim.ClaimName("tikv", s.sts.Name, i), metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.say("  %s on %s  ←  claim %s  ←  PV %s", pod.Name, pod.Spec.NodeName, pvc.Name, pvc.Spec.VolumeName)
	}
	return s.table(ctx)
}

func (s *story) release(ctx context.Context) error {
	disk := s.victim.Spec.Local.Path
	// kwok runs no containers: "TiKV" writes straight into the disk.
	s.dataFile = filepath.Join(disk, "db", "000042.sst")
	if err := os.MkdirAll(filepath.Dir(s.dataFile), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(s.dataFile, []byte("region data of store 3\n"), 0o644); err != nil {
		return err
	}
	s.say("TiKV wrote %s", s.dataFile)
	s.say("  disk contents: %s", s.listing(disk))

	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas-1)
	if _, err := s.env.Cluster.Client.AppsV1().StatefulSets("default").Patch(ctx, s.sts.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	pod := fmt.Sprintf("%s-%d", s.sts.Name, replicas-1)
	s.say("scaled %s to %d; waiting for pod %s to go (its claim stays: StatefulSets keep claims)", s.sts.Name, replicas-1, pod)
	if err := s.waitFor(ctx, "pod "+pod+" to go", func() (bool, error) {
		_, err := s.env.Cluster.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
		return err != nil, nil
	}); err != nil {
		return err
	}
	tl, err := follow(ctx, s.env.Cluster.Client, s.victim.Labels[provisioner.LabelDisk], s.victim.UID)
	if err != nil {
		return err
	}
	s.timeline = tl
	uid := s.claim.UID
	if err := s.env.Cluster.Client.CoreV1().PersistentVolumeClaims("default").Delete(ctx, s.claim.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid},
	}); err != nil {
		return err
	}
	s.say("deleted claim %s by hand (the volume-controller, not running yet, does it once the store is Tombstone)", s.claim.Name)
	if err := s.waitFor(ctx, "PV "+s.victim.Name+" to be released", func() (bool, error) {
		return tl.seen(s.victim.UID, corev1.VolumeReleased), nil
	}); err != nil {
		return err
	}
	s.say("PV %s is Released, and nothing is wiped: the classes ship with reclaimPolicy Retain, and no", s.victim.Name)
	s.say("volume-controller has confirmed in PD whose data this is. A claim deleted on its own never wipes a disk.")
	s.say("Here you know the data is not needed, so you say so:")
	s.say("  kubectl patch pv %s -p '{\"spec\":{\"persistentVolumeReclaimPolicy\":\"Delete\"}}'", s.victim.Name)
	patchPV := []byte(`{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`)
	if _, err := s.env.Cluster.Client.CoreV1().PersistentVolumes().Patch(ctx, s.victim.Name, types.MergePatchType, patchPV, metav1.PatchOptions{}); err != nil {
		return err
	}
	s.say("PV %s is Released with reclaimPolicy Delete: the agent of %s takes over", s.victim.Name, s.victim.Labels[provisioner.LabelNode])
	s.say("(it works in milliseconds: by the time this table is printed the disk may be back already;")
	s.say(" the next steps show how it got there)")
	return s.table(ctx)
}

func (s *story) wipe(ctx context.Context) error {
	if err := s.waitFor(ctx, "the released disk to be published again", func() (bool, error) {
		return s.timeline.done(), nil
	}); err != nil {
		return err
	}
	s.say("what happened to the disk's PV, from the claim's deletion on:")
	for _, l := range s.timeline.lines() {
		s.say("  %s", l)
	}
	disk := s.victim.Spec.Local.Path
	if _, err := os.Stat(s.dataFile); !os.IsNotExist(err) {
		return fmt.Errorf("%s is still there after the wipe (stat: %v)", s.dataFile, err)
	}
	s.say("%s is gone; the disk holds: %s", s.dataFile, s.listing(disk))
	m, ok, err := discovery.ReadMarker(disk)
	if err != nil || !ok {
		return fmt.Errorf("identity marker of %s: ok=%v err=%v", disk, ok, err)
	}
	s.say("the identity marker %s stays: disk %s, state %s", discovery.MarkerName, m.ID, m.State)
	evs, err := s.env.Cluster.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, ev := range evs.Items {
		if ev.InvolvedObject.UID == s.victim.UID && ev.Reason == "Wiped" {
			s.say("agent event on the old PV: %s: %s", ev.Reason, ev.Message)
		}
	}
	return nil
}

func (s *story) republish(ctx context.Context) error {
	id := s.victim.Labels[provisioner.LabelDisk]
	pvs, err := s.pvs(ctx, map[string]string{provisioner.LabelDisk: id})
	if err != nil {
		return err
	}
	if len(pvs) != 1 || pvs[0].UID == s.victim.UID {
		return fmt.Errorf("want exactly one new PV for disk %s, have %d", id, len(pvs))
	}
	pv := pvs[0]
	s.say("disk %s (label %s) is PV %s again, %s:", id, provisioner.LabelDisk, pv.Name, pv.Status.Phase)
	s.say("  old UID %s", s.victim.UID)
	s.say("  new UID %s", pv.UID)
	return s.table(ctx)
}

func (s *story) instructions() {
	kc := s.env.Cluster.AdminKubeconfig
	live := s.nodes[0]
	for _, n := range s.nodes {
		if n.Name != s.dead {
			live = n
		}
	}
	s.say("")
	s.say("The cluster stays up. Point kubectl at it:")
	s.say("  export KUBECONFIG=%s", kc)
	s.say("  kubectl get nodes")
	s.say("  kubectl get pv -l tidb-localpv.io/node=%s", live.Name)
	s.say("  kubectl get pods,pvc -o wide")
	s.say("  kubectl get events --field-selector involvedObject.kind=PersistentVolume")
	s.say("  %s disks --kubeconfig %s", s.env.Binary, kc)
	s.say("Scale TiKV in as TiDB Operator does — offline the last store, then shrink the StatefulSet:")
	s.say("  curl -s %s/pd/api/v1/stores", s.pd.URL)
	s.say("  curl -X DELETE %s/pd/api/v1/store/<id of %s>", s.pd.URL, s.podName(tikvReplicas-1))
	s.say("  kubectl scale statefulset %s --replicas=%d", s.sts.Name, tikvReplicas-1)
	s.say("or shrink it without offlining and delete the claim by hand: the disk keeps its data")
	s.say("(ReleaseRefused) while PD still has the store:")
	s.say("  kubectl scale statefulset %s --replicas=%d", s.sts.Name, tikvReplicas-1)
	s.say("  kubectl delete pvc %s", sim.ClaimName("tikv", s.sts.Name, tikvReplicas-1))
	if s.root {
		dir := filepath.Join(live.ClassDir("tidb-localpv-tikv"), "disk9")
		s.say("Add a disk to %s and watch it appear:", live.Name)
		s.say("  mkdir -p %s && mount -t tmpfs -o size=64m tmpfs %s", dir, dir)
	}
	s.say("Logs: %s (agents, %s)", filepath.Join(s.env.WorkDir(), "logs"), controllerName)
	s.say("What happens keeps being printed below. Press Ctrl-C to tear everything down.")
}

func (s *story) banner(title string) {
	line := strings.Repeat("━", 78)
	fmt.Fprintf(s.out, "\n%s\n  %s\n%s\n", line, title, line)
}

func (s *story) say(format string, args ...any) {
	fmt.Fprintf(s.out, format+"\n", args...)
}

// table prints what an operator sees: `tidb-localpv disks`.
func (s *story) table(ctx context.Context) error {
	tbl, err := s.env.DisksTable(ctx)
	if err != nil {
		return err
	}
	// One write: the chronicle's lines may come between two, not inside.
	fmt.Fprintf(s.out, "\n$ tidb-localpv disks --kubeconfig %s\n%s", s.env.Cluster.AdminKubeconfig, tbl)
	return nil
}

// wideTables prints the disks as an operator digging deeper sees them:
// the LocalDisk objects through kubectl, and `tidb-localpv disks -o wide`.
func (s *story) wideTables(ctx context.Context) error {
	objs, err := s.env.Cluster.Kubectl(ctx, "get", "localdisks")
	if err != nil {
		return fmt.Errorf("kubectl get localdisks: %w: %s", err, objs)
	}
	wide, err := s.env.DisksTable(ctx, "-o", "wide")
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "\n$ kubectl get localdisks\n%s\n$ tidb-localpv disks -o wide --kubeconfig %s\n%s", objs, s.env.Cluster.AdminKubeconfig, wide)
	return nil
}

// line prints one whole line (the chronicle's).
func (s *story) line(l string) { fmt.Fprintln(s.out, l) }
