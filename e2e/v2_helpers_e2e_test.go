//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// controllerComponent is the event source of our controller.
const controllerComponent = "tidb-localpv-controller"

// waitRecovery bounds waits that include Kubernetes' own pod garbage
// collection of a deleted node's pods (40 s quarantine, checked every 20 s).
const waitRecovery = 4 * time.Minute

// testTimings are the controller flags the scenarios run with: the
// Deployment's arguments plus these.
func testTimings(poll time.Duration) []string {
	return []string{
		"--pd-poll-interval=" + poll.String(),
		"--dead-node-grace=3s",
		"--stuck-pod-grace=10s",
		"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=500ms",
		"-v=2",
	}
}

// startDisks brings up nodes with n tidb-localpv-tikv disks each and their agents.
func startDisks(t testing.TB, perNode int, nodes ...string) *tidbEnv {
	t.Helper()
	return startDisksOf(t, "tidb-localpv-tikv", perNode, nodes...)
}

// startDisksOf brings up nodes with n disks of class each and their agents.
func startDisksOf(t testing.TB, class string, perNode int, nodes ...string) *tidbEnv {
	t.Helper()
	env, ns := startEnv(t, nodes...)
	te := &tidbEnv{env: env, nodes: ns, disks: map[string]map[string]string{}}
	for _, name := range nodes {
		te.disks[name] = map[string]string{}
		for i := range perNode {
			path, err := ns[name].MountDisk(class, fmt.Sprintf("disk%d", i), "32m")
			require.NoError(t, err)
			te.disks[name][fmt.Sprintf("%s/%d", class, i)] = path
		}
		require.NoError(t, ns[name].StartAgent(context.Background()))
	}
	return te
}

// addNode adds a fresh node with one tidb-localpv-tikv disk and its agent.
func (te *tidbEnv) addNode(ctx context.Context, t testing.TB, name string) {
	t.Helper()
	n, err := te.env.AddNode(ctx, name)
	require.NoError(t, err)
	te.nodes[name] = n
	_, err = n.MountDisk("tidb-localpv-tikv", "disk0", "32m")
	require.NoError(t, err)
	require.NoError(t, n.StartAgent(ctx))
}

// startV2 runs a TiDB Operator v2 cluster with its own PD simulator.
func startV2(t testing.TB, te *tidbEnv, opts sim.V2Options) *sim.V2 {
	t.Helper()
	if opts.PD.MaxReplicas == 0 {
		opts.PD = pdOptions
	}
	v, err := te.env.StartV2(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(v.Close)
	return v
}

// startControllerWith runs a controller replica with the Deployment's
// arguments plus extra, and prints its log's tail if the test fails.
func startControllerWith(t testing.TB, env *sim.Env, name string, extra ...string) *cluster.Process {
	t.Helper()
	p, err := env.StartController(context.Background(), name, extra...)
	require.NoError(t, err)
	t.Cleanup(func() { dumpOnFailure(t, p) })
	return p
}

func dumpOnFailure(t testing.TB, p *cluster.Process) {
	if !t.Failed() {
		return
	}
	data, _ := os.ReadFile(p.LogPath())
	lines := strings.Split(string(data), "\n")
	t.Logf("---- %s ----\n%s", p.LogPath(), strings.Join(lines[max(0, len(lines)-120):], "\n"))
}

// v2Placement is where one v2 instance runs.
type v2Placement struct {
	Instance string
	Pod      corev1.Pod
	PV       corev1.PersistentVolume
	Store    uint64
}

// waitV2Owners waits until the group has n instances, each pod Running on a
// Bound claim whose PV records its store as Up, and returns them by
// instance name.
func waitV2Owners(ctx context.Context, t testing.TB, te *tidbEnv, v *sim.V2, n int) map[string]v2Placement {
	t.Helper()
	out := map[string]v2Placement{}
	var last string
	require.Eventually(t, func() bool {
		insts, err := v.Instances(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		live := 0
		clear(out)
		for _, inst := range insts {
			if inst.GetDeletionTimestamp() != nil {
				continue
			}
			live++
			p, why := v2PlacementOf(ctx, te, v, inst)
			if why != "" {
				last = why
				return false
			}
			out[inst.GetName()] = p
		}
		if live != n {
			last = fmt.Sprintf("%d live instances, want %d", live, n)
			return false
		}
		return true
	}, waitRecovery, 50*time.Millisecond, "v2 owners never all recorded (last: %s)", func() string { return last }())
	return out
}

// v2PlacementOf reads one instance's pod, claim and PV; why says what is
// not there yet.
func v2PlacementOf(ctx context.Context, te *tidbEnv, v *sim.V2, inst unstructured.Unstructured) (v2Placement, string) {
	c := te.env.Cluster.Client.CoreV1()
	ns := v.Opts.Namespace
	podName := sim.V2PodName(inst.GetName(), "tikv")
	pod, err := c.Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil || pod.Status.Phase != corev1.PodRunning {
		return v2Placement{}, fmt.Sprintf("pod %s: %v", podName, describePod(pod, err))
	}
	pvc, err := c.PersistentVolumeClaims(ns).Get(ctx, sim.V2ClaimName("data", podName), metav1.GetOptions{})
	if err != nil || pvc.Spec.VolumeName == "" {
		return v2Placement{}, fmt.Sprintf("claim of %s not bound (%v)", podName, err)
	}
	pv, err := c.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || pv.Annotations[provisioner.AnnStoreID] == "" || pv.Annotations[provisioner.AnnOwnerState] != "Up" || pv.Annotations[provisioner.AnnOwnerClaim] != string(pvc.UID) {
		return v2Placement{}, fmt.Sprintf("owner of %s not recorded (%v)", podName, err)
	}
	id, err := strconv.ParseUint(pv.Annotations[provisioner.AnnStoreID], 10, 64)
	if err != nil {
		return v2Placement{}, fmt.Sprintf("store ID of %s: %v", podName, err)
	}
	return v2Placement{Instance: inst.GetName(), Pod: *pod, PV: *pv, Store: id}, ""
}

// controllerWarnings lists every Warning event our controller emitted, so
// a scenario can show nothing fought.
func controllerWarnings(ctx context.Context, t testing.TB, env *sim.Env) []corev1.Event {
	t.Helper()
	list, err := env.Cluster.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	var out []corev1.Event
	for _, ev := range list.Items {
		if ev.Source.Component == controllerComponent && ev.Type == corev1.EventTypeWarning {
			out = append(out, ev)
		}
	}
	return out
}

// requireNoFight checks the controller emitted no Warning and logged no
// failed sync: no refusal, no error, no action that met the other side's.
func requireNoFight(ctx context.Context, t testing.TB, env *sim.Env, controllers ...*cluster.Process) {
	t.Helper()
	for _, ev := range controllerWarnings(ctx, t, env) {
		t.Errorf("controller warning on %s %s: %s: %s", ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Reason, ev.Message)
	}
	for _, p := range controllers {
		data, err := os.ReadFile(p.LogPath())
		require.NoError(t, err)
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "sync failed") {
				t.Errorf("%s: %s", filepath.Base(p.LogPath()), l)
			}
		}
	}
}

// eventsAbout lists our controller's events about an object by kind and
// name (node events carry no real UID), with a reason.
func eventsAbout(ctx context.Context, t testing.TB, env *sim.Env, kind, name, reason string) []corev1.Event {
	t.Helper()
	list, err := env.Cluster.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	var out []corev1.Event
	for _, ev := range list.Items {
		if ev.Source.Component == controllerComponent && ev.InvolvedObject.Kind == kind && ev.InvolvedObject.Name == name && ev.Reason == reason {
			out = append(out, ev)
		}
	}
	return out
}

// eventCount adds up the counts of events (the recorder folds repeats).
func eventCount(evs []corev1.Event) int {
	n := 0
	for _, ev := range evs {
		n += int(max(ev.Count, 1))
	}
	return n
}

// killNode is a node lost for good: its agent stops (nothing on a dead
// node answers), then its Node object is deleted.
func killNode(ctx context.Context, t testing.TB, te *tidbEnv, name string) time.Time {
	t.Helper()
	te.nodes[name].StopAgent()
	at := time.Now()
	require.NoError(t, te.env.Cluster.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}))
	return at
}

// shutDownNode is a node shut down without its Node object being deleted
// (non-graceful shutdown): its agent stops, kwok stops playing its kubelet
// and the node turns NotReady, and then — as an operator or a cloud does —
// it is tainted node.kubernetes.io/out-of-service.
func shutDownNode(ctx context.Context, t testing.TB, te *tidbEnv, name string) time.Time {
	t.Helper()
	te.nodes[name].StopAgent()
	nodes := te.env.Cluster.Client.CoreV1().Nodes()
	// kwok manages only nodes with its annotation: without it, nobody
	// renews this node's status or finishes its pods' deletion.
	_, err := nodes.Patch(ctx, name, "application/merge-patch+json", []byte(`{"metadata":{"annotations":{"kwok.x-k8s.io/node":null}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	n, err := nodes.Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	now := metav1.Now()
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			n.Status.Conditions[i].Status = corev1.ConditionUnknown
			n.Status.Conditions[i].Reason = "NodeStatusUnknown"
			n.Status.Conditions[i].Message = "Kubelet stopped posting node status."
			n.Status.Conditions[i].LastTransitionTime = now
		}
	}
	_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
	at := time.Now()
	patch := `{"spec":{"taints":[{"key":"node.kubernetes.io/out-of-service","value":"nodeshutdown","effect":"NoExecute"}]}}`
	_, err = nodes.Patch(ctx, name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{})
	require.NoError(t, err)
	return at
}

// loopbackIP picks a random 127.x.y.z address, so that services listening
// on fixed ports (PD's 2379) do not meet other users of this machine.
func loopbackIP() string {
	return fmt.Sprintf("127.%d.%d.%d", 2+rand.IntN(250), 2+rand.IntN(250), 2+rand.IntN(250))
}

// listenPD listens on <random loopback IP>:2379, PD's client port.
func listenPD(t testing.TB) net.Listener {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(loopbackIP(), "2379"))
		if err == nil {
			return l
		}
	}
	t.Fatal("no free loopback address for a PD on port 2379")
	return nil
}

// forwardPD serves l by forwarding to a PD simulator's URL: the same PD,
// answering at the address Kubernetes DNS would give its Service.
func forwardPD(t testing.TB, l net.Listener, target string) {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	srv := &http.Server{Handler: httputil.NewSingleHostReverseProxy(u), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// startControllerWithDNS runs a controller replica that resolves the given
// Service names as cluster DNS would, through its own /etc/hosts in a
// private mount namespace; nothing else about it differs from
// StartController. hosts maps host name → IP.
func startControllerWithDNS(t testing.TB, env *sim.Env, name string, hosts map[string]string, extra ...string) *cluster.Process {
	t.Helper()
	root, err := sim.FindRepoRoot()
	require.NoError(t, err)
	args, err := sim.ReadContainerArgs(filepath.Join(root, "manifests/controller-deployment.yaml"))
	require.NoError(t, err)
	args, err = sim.Rebase(args, env.WorkDir())
	require.NoError(t, err)
	kubeconfig := filepath.Join(env.WorkDir(), "controller-dns.kubeconfig")
	require.NoError(t, env.Cluster.ServiceAccountKubeconfig(context.Background(), sim.Namespace, sim.ControllerAccount, kubeconfig))
	args = append(args, "--kubeconfig="+kubeconfig)
	args = append(args, extra...)

	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n")
	for host, ip := range hosts {
		fmt.Fprintf(&b, "%s %s\n", ip, host)
	}
	hostsFile := filepath.Join(env.WorkDir(), name+".hosts")
	require.NoError(t, os.WriteFile(hostsFile, []byte(b.String()), 0o644))
	// unshare execs in place (no fork), and so does sh: the process the
	// harness stops is the controller itself.
	wrapped := append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c",
		`mount --bind "$0" /etc/hosts && exec "$@"`, hostsFile, env.Binary}, args...)
	procEnv := append(os.Environ(), "POD_NAMESPACE="+sim.Namespace, "POD_NAME="+name)
	p, err := env.StartProcess(name, "/usr/bin/unshare", wrapped, procEnv)
	require.NoError(t, err)
	t.Cleanup(func() { dumpOnFailure(t, p) })
	return p
}
