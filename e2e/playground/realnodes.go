package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/image"
	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// realStory is the playground on real nodes (-real-nodes): two kubelets
// with containerd, the manifests running as written in the image built from
// the work tree, and a TiKV-like pod writing real files — then the disk's
// whole life: formatted and mounted by the agent's container, written by
// the pod, wiped after scale-in, published again.
type realStory struct {
	env   *sim.Env
	out   io.Writer
	nodes []*sim.Node
	pd    *sim.PD
	dev   string // the inventory loop device
	disk  string // its mount point on the host
	pod   string
}

// realPD: one replica (two nodes hold few stores), PD's lifecycle at demo
// speed.
var realPD = pdsim.Options{MaxReplicas: 1, DrainDelay: time.Second, DisconnectedAfter: 2 * time.Second, DownAfter: 4 * time.Second, CheckInterval: 200 * time.Millisecond}

// runReal is run for -real-nodes: the same frame (signals, work dir,
// teardown check), the real-node story.
func runReal(o options) int {
	started := time.Now()
	out := &cluster.SyncWriter{W: os.Stdout}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopSignals := onSignal(cancel, out)
	defer stopSignals()
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "playground -real-nodes: run it as root (kubelet, containerd, mounts, cgroups)")
		return 2
	}
	if err := cluster.InstallHostPackages(ctx, out); err != nil {
		fmt.Fprintf(out, "playground: %v\n", err)
		return 1
	}
	if missing := cluster.Preflight(); len(missing) > 0 {
		fmt.Fprintf(out, "playground -real-nodes: this host lacks %s\n", strings.Join(missing, "; "))
		return 1
	}
	root, err := sim.FindRepoRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "playground: run it from the repository: %v\n", err)
		return 2
	}
	work, owned, err := prepareWorkDir(o.workDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "playground: %v\n", err)
		return 2
	}
	fmt.Fprintf(out, "tidb-localpv playground on real nodes — work dir %s\n", work)
	fmt.Fprintln(out, "building the image from the work tree, starting the control plane with kube-proxy and cluster DNS, applying manifests/ with that image …")
	env, err := sim.Start(ctx, sim.Options{RepoRoot: root, WorkDir: work, Progress: prefixWriter{w: out, prefix: "    | "}, RealNodes: true})
	if err != nil {
		fmt.Fprintf(out, "start failed: %v\n", err)
		if verify(out, work, nil) && owned {
			_ = os.RemoveAll(work)
		}
		return 1
	}
	fmt.Fprintf(out, "control plane up and manifests applied after %s\n", since(started))
	s := &realStory{env: env, out: out}
	code := 0
	if err := s.tell(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(out, "\ninterrupted")
		} else {
			fmt.Fprintf(out, "\nthe story failed: %v\nlogs: %s\n", err, filepath.Join(work, "logs"))
			code = 1
		}
	} else {
		fmt.Fprintf(out, "\nready after %s\n", since(started))
		if !o.exit {
			s.instructions()
			<-ctx.Done()
			fmt.Fprintln(out)
		}
	}
	fmt.Fprintln(out, "tearing down (pods, kubelets, containerds, shims, cgroups, bridges, kube-proxy's rules) …")
	if s.pd != nil {
		s.pd.Close()
	}
	// No adoptStrayMounts: the real nodes' teardown unmounts everything
	// below their directories, the agent's mounts and yours alike.
	if !verify(out, work, env.Close) {
		code = 1
	}
	if owned && code == 0 {
		_ = os.RemoveAll(work)
	} else if owned {
		fmt.Fprintf(out, "keeping %s for its logs\n", work)
	}
	return code
}

func (s *realStory) tell(ctx context.Context) error {
	for _, step := range []struct {
		title string
		run   func(context.Context) error
	}{
		{"real nodes — two kubelets with containerd; the agent DaemonSet and the controller run as containers", s.start},
		{"inventory — a blank device is formatted and mounted by the agent inside its container", s.inventory},
		{"bind — a TiKV-like pod mounts the PV and writes 1000 files", s.bind},
		{"scale-in — the store is buried; the agent container wipes what the pod wrote; the disk comes back", s.scaleIn},
	} {
		s.banner(step.title)
		if err := step.run(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (s *realStory) start(ctx context.Context) error {
	for _, name := range []string{"node-a", "node-b"} {
		n, err := s.env.AddRealNode(ctx, name)
		if err != nil {
			return err
		}
		s.say("%s Ready %s after its containerd started (kubelet → Ready %s); its own mount namespace, cgroup root, bridge",
			name, n.Real.Ready.Sub(n.Real.Started).Round(time.Millisecond), n.Real.Ready.Sub(n.Real.KubeletStarted).Round(time.Millisecond))
		s.nodes = append(s.nodes, n)
	}
	for _, n := range s.nodes {
		pod, err := n.WaitAgentPodReady(ctx, 3*time.Minute)
		if err != nil {
			return err
		}
		s.say("agent pod %s Ready on %s (image %s, privileged, Bidirectional /mnt/tidb-localpv)", pod.Name, n.Name, pod.Spec.Containers[0].Image)
	}
	if err := s.waitFor(ctx, "2 controller replicas Ready", 3*time.Minute, func() (bool, error) {
		d, err := s.env.Cluster.Client.AppsV1().Deployments(sim.Namespace).Get(ctx, sim.ControllerDeployment, metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas == 2, nil
	}); err != nil {
		return err
	}
	s.say("controller Deployment: 2 replicas Ready, talking to the API through the kubernetes Service (kube-proxy) with their ServiceAccount tokens")
	p, err := s.env.StartPD(ctx, realPD)
	if err != nil {
		return err
	}
	s.pd = p
	// The rest of the TiKV cluster, elsewhere: PD never removes its last
	// Up store, so the demo's own store can go.
	p.Sim.RegisterStore(fmt.Sprintf("tikv-elsewhere.%s-tikv-peer.default.svc:%d", stsName, sim.TiKVPort))
	if err := s.env.ExposePD(ctx, p, "default", stsName); err != nil {
		return err
	}
	s.say("PD simulator at %s, Service %s-pd.default:2379 in front of it (cluster DNS + kube-proxy)", p.URL, stsName)
	return nil
}

func (s *realStory) inventory(ctx context.Context) error {
	a := s.nodes[0]
	dev, err := s.env.Host.AttachLoop(filepath.Join(s.env.WorkDir(), "node-a-nvme0.img"), 128)
	if err != nil {
		return err
	}
	s.dev = dev
	if _, err := s.env.SetInventory(ctx, fmt.Sprintf("disks:\n- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  format: true\n", dev)); err != nil {
		return err
	}
	s.say("inventory: %s on node-a, tidb-localpv-tikv, format: true", dev)
	began := time.Now()
	path := "/mnt/tidb-localpv/tikv/" + filepath.Base(dev)
	if err := s.waitFor(ctx, "its PV", 2*time.Minute, func() (bool, error) {
		pvs, err := s.env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: labels.Set{provisioner.LabelNode: "node-a"}.String()})
		if err != nil {
			return false, err
		}
		for _, pv := range pvs.Items {
			if pv.Spec.Local != nil && pv.Spec.Local.Path == path {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return err
	}
	s.disk = a.Path(path)
	s.say("PV published %s after the inventory edit; the agent's mount, made in its container, is on the host:", time.Since(began).Round(time.Millisecond))
	s.say("  %s  (mounted from %s)", s.disk, dev)
	return nil
}

func (s *realStory) bind(ctx context.Context) error {
	sts := sim.TiKVStatefulSet(stsName, 1)
	c := &sts.Spec.Template.Spec.Containers[0]
	c.Image, c.ImagePullPolicy = image.TestPodRef, corev1.PullNever
	c.Args = []string{"-data=/var/lib/tikv", "-files=1000"}
	sts.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	if _, err := s.env.Cluster.Client.AppsV1().StatefulSets("default").Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		return err
	}
	s.pod = sts.Name + "-0"
	began := time.Now()
	if err := s.waitFor(ctx, "the pod to write its files", 2*time.Minute, func() (bool, error) {
		_, err := os.Stat(filepath.Join(s.disk, "LOCK"))
		return err == nil, nil
	}); err != nil {
		return err
	}
	s.say("%s Running on node-a and its files are on the disk after %s; seen from the host:", s.pod, time.Since(began).Round(time.Millisecond))
	s.listDisk()
	out, err := s.env.Cluster.Kubectl(ctx, "exec", "-n", "default", s.pod, "--", "/testpod", "ls", "/var/lib/tikv")
	if err != nil {
		return err
	}
	s.say("and from inside the pod (kubectl exec %s -- /testpod ls /var/lib/tikv):", s.pod)
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		s.say("  %s", l)
	}
	return nil
}

func (s *realStory) scaleIn(ctx context.Context) error {
	c := s.env.Cluster.Client
	var pv *corev1.PersistentVolume
	if err := s.waitFor(ctx, "the controller to record the pod's store on its PV", 2*time.Minute, func() (bool, error) {
		pvc, err := c.CoreV1().PersistentVolumeClaims("default").Get(ctx, sim.ClaimName("tikv", stsName+"-tikv", 0), metav1.GetOptions{})
		if err != nil || pvc.Spec.VolumeName == "" {
			return false, nil
		}
		pv, err = c.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		return err == nil && pv.Annotations[provisioner.AnnStoreID] != "", nil
	}); err != nil {
		return err
	}
	store := pv.Annotations[provisioner.AnnStoreID]
	s.say("PV %s: owner %s, store %s", pv.Name, pv.Annotations[provisioner.AnnOwnerPod], store)
	if _, err := c.AppsV1().StatefulSets("default").Patch(ctx, stsName+"-tikv", types.MergePatchType, []byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{}); err != nil {
		return err
	}
	pdc, err := pd.New(s.pd.URL, pd.Options{})
	if err != nil {
		return err
	}
	var id uint64
	if _, err := fmt.Sscan(store, &id); err != nil {
		return err
	}
	if err := pdc.DeleteStore(ctx, id); err != nil {
		return err
	}
	began := time.Now()
	s.say("scaled the StatefulSet to 0 and asked PD to remove store %s (what TiDB Operator does)", store)
	diskID := pv.Labels[provisioner.LabelDisk]
	if err := s.waitFor(ctx, "the disk to come back as a new Available PV", 3*time.Minute, func() (bool, error) {
		pvs, err := c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: labels.Set{provisioner.LabelDisk: diskID}.String()})
		if err != nil {
			return false, err
		}
		for _, p := range pvs.Items {
			if p.UID != pv.UID && p.Status.Phase == corev1.VolumeAvailable {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return err
	}
	s.say("store Tombstone → claim released by the controller → wiped by the agent container → new PV Available: %s", time.Since(began).Round(time.Millisecond))
	s.say("the disk, seen from the host (only the identity marker is left):")
	s.listDisk()
	return nil
}

func (s *realStory) listDisk() {
	entries, err := os.ReadDir(s.disk)
	if err != nil {
		s.say("  (cannot list %s: %v)", s.disk, err)
		return
	}
	for _, e := range entries {
		n := ""
		if e.IsDir() {
			sub, _ := os.ReadDir(filepath.Join(s.disk, e.Name()))
			n = fmt.Sprintf("  %d entries", len(sub))
		}
		s.say("  %s%s", e.Name(), n)
	}
	if m, ok, _ := discovery.ReadMarker(s.disk); ok {
		s.say("  (marker: disk %s, %s)", m.ID, m.State)
	}
}

func (s *realStory) instructions() {
	kc := s.env.Cluster.AdminKubeconfig
	s.say("")
	s.say("The cluster stays up on real nodes. Point kubectl at it:")
	s.say("  export KUBECONFIG=%s", kc)
	s.say("  kubectl get nodes -o wide; kubectl -n tidb-localpv get pods -o wide")
	s.say("Run TiKV again and look at its files from inside the pod:")
	s.say("  kubectl scale statefulset %s-tikv --replicas=1", stsName)
	s.say("  kubectl exec -it %s -- /testpod ls /var/lib/tikv", s.pod)
	s.say("  ls %s", s.disk)
	s.say("The agent's log: kubectl -n tidb-localpv logs -l app.kubernetes.io/component=agent")
	s.say("Node logs (kubelet, containerd): %s", filepath.Join(s.env.WorkDir(), "cluster", "logs"))
	s.say("Press Ctrl-C to tear everything down.")
}

func (s *realStory) banner(title string) {
	line := strings.Repeat("━", 78)
	fmt.Fprintf(s.out, "\n%s\n  %s\n%s\n", line, title, line)
}

func (s *realStory) say(format string, args ...any) { fmt.Fprintf(s.out, format+"\n", args...) }

// waitFor polls cond every 100 ms until it holds, fails, or timeout.
func (s *realStory) waitFor(ctx context.Context, what string, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("waiting for %s", what), ctx.Err())
		case <-tick.C:
		}
	}
}
