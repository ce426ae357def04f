//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/image"
	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

// Real nodes start containers and pull nothing, but a loaded machine makes
// everything slower than the kwok runs: waits are longer.
const realWait = 3 * time.Minute

// realPDOptions: one replica is enough (two real nodes hold few stores),
// and PD's lifecycle runs at test speed.
var realPDOptions = pdsim.Options{MaxReplicas: 1, DrainDelay: time.Second, DisconnectedAfter: 2 * time.Second, DownAfter: 4 * time.Second, CheckInterval: 200 * time.Millisecond}

// anchorStore is the address of a TiKV store that is not ours and stays Up.
const anchorStore = "tikv-elsewhere.demo-tikv-peer.default.svc:20160"

// requireRealNodes installs the host packages real nodes need (as make
// test does) and skips, naming what is missing, when they still cannot
// run — or fails where CI is set, so a skipped claim never counts as proven.
func requireRealNodes(t testing.TB) {
	t.Helper()
	hostdisk.RequireRoot(t, "run kubelet and containerd as real nodes")
	if err := cluster.InstallHostPackages(t.Context(), testLog{t}); err != nil {
		t.Logf("installing host packages failed: %v", err)
	}
	missing := cluster.Preflight()
	if len(missing) == 0 {
		return
	}
	msg := "real nodes cannot run on this host; missing: " + strings.Join(missing, "; ")
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set: not skipping)")
	}
	t.Skip(msg)
}

// realEnv is a control plane with real nodes running the manifests as
// written (image overridden), a PD simulator exposed as <instance>-pd.
type realEnv struct {
	env   *sim.Env
	nodes map[string]*sim.Node
	pd    *sim.PD
	work  string
	// started is when the environment began to start.
	started time.Time
}

func startRealEnv(t testing.TB, nodes ...string) *realEnv {
	t.Helper()
	re := startRealCluster(t)
	ctx := context.Background()
	for _, name := range nodes {
		re.addNode(t, name)
	}
	for _, n := range re.nodes {
		_, err := n.WaitAgentPodReady(ctx, realWait)
		require.NoError(t, err)
	}
	re.waitControllers(ctx, t, int32(min(2, len(nodes))))
	if len(nodes) > 1 {
		re.spreadControllers(ctx, t)
	}
	p, err := re.env.StartPD(ctx, realPDOptions)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	re.pd = p
	// A store of the TiKV cluster that lives elsewhere: PD refuses to
	// remove the last Up store, so the scenarios' own stores can all go.
	p.Sim.RegisterStore(anchorStore)
	require.NoError(t, re.env.ExposePD(ctx, p, tidbNS, tidbInstance))
	t.Logf("real-node environment with %d nodes, agents and controllers Ready in %s", len(nodes), time.Since(re.started).Round(time.Millisecond))
	return re
}

// addNode starts a real node and logs how long it took to be Ready.
func (re *realEnv) addNode(t testing.TB, name string) *sim.Node {
	t.Helper()
	n, err := re.env.AddRealNode(context.Background(), name)
	require.NoError(t, err)
	t.Logf("real node %s Ready %s after its containerd started (kubelet start → Ready %s)", name,
		n.Real.Ready.Sub(n.Real.Started).Round(time.Millisecond), n.Real.Ready.Sub(n.Real.KubeletStarted).Round(time.Millisecond))
	re.nodes[name] = n
	return n
}

// startRealCluster starts the control plane for real nodes, with the
// manifests applied, and no node yet.
func startRealCluster(t testing.TB) *realEnv {
	t.Helper()
	return startRealClusterWith(t, "")
}

// startRealClusterWith is startRealCluster with the install applied through
// overlay (a directory of the repository; "" is manifests/ itself).
func startRealClusterWith(t testing.TB, overlay string) *realEnv {
	t.Helper()
	requireRealNodes(t)
	root, err := sim.FindRepoRoot()
	require.NoError(t, err)
	work, err := os.MkdirTemp("", "tlpv-real-")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	t.Cleanup(cancel)
	start := time.Now()
	env, err := sim.Start(ctx, sim.Options{RepoRoot: root, WorkDir: work, Progress: testLog{t}, RealNodes: true, Overlay: overlay, Binary: tidbLocalPV(t)})
	if err != nil {
		_ = os.RemoveAll(work)
	}
	require.NoError(t, err)
	re := &realEnv{env: env, nodes: map[string]*sim.Node{}, work: work, started: start}
	t.Cleanup(func() {
		if t.Failed() {
			re.dumpLogs(t)
		}
		require.NoError(t, env.Close(), "teardown must leave nothing behind")
		_ = os.RemoveAll(work)
	})
	return re
}

// waitControllers waits until n controller replicas are Ready.
func (re *realEnv) waitControllers(ctx context.Context, t testing.TB, n int32) {
	t.Helper()
	require.Eventually(t, func() bool {
		d, err := re.env.Cluster.Client.AppsV1().Deployments(sim.Namespace).Get(ctx, sim.ControllerDeployment, metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas >= n
	}, realWait, 100*time.Millisecond, "the controller Deployment never had %d Ready replicas", n)
}

// spreadControllers puts the two controller replicas on two nodes. The
// manifest's anti-affinity is only preferred: the Deployment, applied
// before any node existed, had both pods scheduled onto the first node
// that became Ready, as it would when a cluster is bootstrapped. Deleting
// one lets the scheduler honour the preference.
func (re *realEnv) spreadControllers(ctx context.Context, t testing.TB) {
	t.Helper()
	c := re.env.Cluster.Client.CoreV1()
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"}
	pods, err := c.Pods(sim.Namespace).List(ctx, sel)
	require.NoError(t, err)
	if len(pods.Items) != 2 || pods.Items[0].Spec.NodeName != pods.Items[1].Spec.NodeName {
		return
	}
	require.NoError(t, c.Pods(sim.Namespace).Delete(ctx, pods.Items[1].Name, metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		pods, err := c.Pods(sim.Namespace).List(ctx, sel)
		if err != nil {
			return false
		}
		on := map[string]bool{}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && podIsReady(&p) {
				on[p.Spec.NodeName] = true
			}
		}
		return len(on) == 2
	}, realWait, 100*time.Millisecond, "the controller replicas never spread over two nodes")
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// dumpLogs prints the end of every real node's kubelet and containerd log
// and of every container log, to explain a failure.
func (re *realEnv) dumpLogs(t testing.TB) {
	var files []string
	for _, n := range re.nodes {
		files = append(files, n.Real.KubeletLog(), n.Real.ContainerdLog())
		logs, _ := filepath.Glob(filepath.Join(n.Real.PodLogsDir(), "*", "*", "*.log"))
		files = append(files, logs...)
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		t.Logf("---- %s ----\n%s", f, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// realTiKV is the TiKV-like StatefulSet of the real nodes: the test image
// writes files files into its volume once, then waits for SIGTERM.
func realTiKV(replicas int32, files int) *appsv1.StatefulSet {
	sts := sim.TiKVStatefulSet(tidbInstance, replicas)
	c := &sts.Spec.Template.Spec.Containers[0]
	c.Image = image.TestPodRef
	c.ImagePullPolicy = corev1.PullNever
	c.Args = []string{"-data=/var/lib/tikv", fmt.Sprintf("-files=%d", files)}
	sts.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	return sts
}

// nodeDisk is the host path of a disk the node sees at
// /mnt/tidb-localpv/tikv/<name>.
func nodeDisk(n *sim.Node, name string) string { return n.Path(nodePath(name)) }

// nodePath is the node's own path of tidb-localpv-tikv disk name, as PVs carry it.
func nodePath(name string) string { return "/mnt/tidb-localpv/tikv/" + name }

// mountFSType is the filesystem type of the mount at dir on the host.
func mountFSType(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			for i, x := range f {
				if x == "-" && i+1 < len(f) {
					return f[i+1]
				}
			}
		}
	}
	return ""
}

// dataOf lists what the test pod wrote at the disk's root (its LOCK and
// db-* directories) with the number of files in each directory.
func dataOf(t testing.TB, disk string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, name := range userContents(t, disk) {
		entries, err := os.ReadDir(filepath.Join(disk, name))
		if err != nil {
			out[name] = -1 // a file
			continue
		}
		out[name] = len(entries)
	}
	return out
}
