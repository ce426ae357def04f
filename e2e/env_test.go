//go:build e2e

package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// testLog lets progress lines reach `go test -v` as they happen.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Every scenario calls t.Parallel(). go test's -parallel caps how many
// run, but starts them in no particular order, and the real-node scenarios
// are the long pole: they take turns on the machine's network (a lock in
// e2e/cluster) and should start at once. So `make e2e` lifts -parallel and
// the scenarios on simulated nodes take a slot here instead; the real-node
// ones take none.
var scenarioSlotCount = flag.Int("e2e.scenarios", 0, "how many scenarios on simulated nodes run at once (0: as many as go test's -parallel lets run)")

// scenarioSlots is the semaphore behind -e2e.scenarios; nil when unbounded.
var scenarioSlots = sync.OnceValue(func() chan struct{} {
	if *scenarioSlotCount <= 0 {
		return nil
	}
	return make(chan struct{}, *scenarioSlotCount)
})

// takeScenarioSlot waits for a slot and gives it back when the test has
// ended and its environment is torn down: call it before anything the
// test cleans up.
func takeScenarioSlot(t testing.TB) {
	t.Helper()
	slots := scenarioSlots()
	if slots == nil {
		return
	}
	start := time.Now()
	slots <- struct{}{}
	t.Cleanup(func() { <-slots })
	if waited := time.Since(start); waited > time.Second {
		t.Logf("waited %s for one of %d scenario slots", waited.Round(time.Second), cap(slots))
	}
}

// binaryDir holds the tidb-localpv binary the scenarios share; TestMain
// makes it before any test runs and removes it after the last.
var binaryDir string

// sharedBinary builds tidb-localpv once for the whole run: built by each
// scenario, the same link ran 27 times side by side on two cores, 15–30 s
// of a scenario slot each.
var sharedBinary = sync.OnceValues(func() (string, error) {
	root, err := sim.FindRepoRoot()
	if err != nil {
		return "", err
	}
	return sim.BuildBinary(context.Background(), root, binaryDir)
})

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "tlpv-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binaryDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// tidbLocalPV returns the shared tidb-localpv binary, building it on first use.
func tidbLocalPV(t testing.TB) string {
	t.Helper()
	bin, err := sharedBinary()
	require.NoError(t, err, "build tidb-localpv")
	return bin
}

// startEnv brings up a control plane with the manifests applied and the
// named nodes, each running our agent. Everything is torn down — and checked
// for leftovers — when the test ends, pass or fail.
func startEnv(t testing.TB, nodes ...string) (*sim.Env, map[string]*sim.Node) {
	t.Helper()
	hostdisk.RequireRoot(t, "mount tmpfs disks and attach loop devices for the simulated nodes")
	takeScenarioSlot(t)
	root, err := sim.FindRepoRoot()
	require.NoError(t, err)
	work, err := os.MkdirTemp("", "tlpv-e2e-")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	start := time.Now()
	env, err := sim.Start(ctx, sim.Options{RepoRoot: root, WorkDir: work, Progress: testLog{t}, ExtraAgentArgs: []string{"-v=2"}, Binary: tidbLocalPV(t)})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, work)
		}
		require.NoError(t, env.Close(), "teardown must leave nothing behind")
		_ = os.RemoveAll(work)
	})
	out := map[string]*sim.Node{}
	for _, name := range nodes {
		n, err := env.AddNode(ctx, name)
		require.NoError(t, err)
		out[name] = n
	}
	t.Logf("environment with %d nodes ready in %s", len(nodes), time.Since(start).Round(time.Millisecond))
	return env, out
}

func dumpLogs(t testing.TB, work string) {
	logs, _ := filepath.Glob(filepath.Join(work, "logs", "agent-*.log"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		lines := strings.Split(string(data), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("---- %s ----\n%s", filepath.Base(l), strings.Join(lines, "\n"))
	}
}

// pvsOf lists our PVs on a node.
func pvsOf(ctx context.Context, t testing.TB, env *sim.Env, node string) []corev1.PersistentVolume {
	t.Helper()
	list, err := env.Cluster.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{provisioner.LabelNode: node}.String(),
	})
	require.NoError(t, err)
	return list.Items
}

// waitPV waits for the PV of the disk at path and returns it.
// Several phases may be given: a pending pod can bind an Available PV
// faster than the test polls.
func waitPV(ctx context.Context, t testing.TB, env *sim.Env, node, path string, phases ...corev1.PersistentVolumePhase) corev1.PersistentVolume {
	t.Helper()
	var got corev1.PersistentVolume
	require.Eventually(t, func() bool {
		for _, pv := range pvsOf(ctx, t, env, node) {
			if pv.Spec.Local.Path == path && slices.Contains(phases, pv.Status.Phase) && pv.DeletionTimestamp == nil {
				got = pv
				return true
			}
		}
		return false
	}, 60*time.Second, 20*time.Millisecond, "PV for %s on %s never became %v", path, node, phases)
	return got
}

// tikvStatefulSet is a TiKV-like StatefulSet: one tidb-localpv-tikv volume per pod.
func tikvStatefulSet(name string, replicas int32) *appsv1.StatefulSet {
	return sim.TiKVStatefulSet(name, replicas)
}

// plainStatefulSet is tikvStatefulSet for a workload that is not TiKV
// (the same local class, a scratch volume): its disk recycles as soon as
// its claim goes, without PD.
func plainStatefulSet(name string, replicas int32) *appsv1.StatefulSet {
	sts := sim.TiKVStatefulSet(name, replicas)
	lbl := map[string]string{"app.kubernetes.io/component": "scratch", "app.kubernetes.io/instance": name}
	sts.Spec.Selector.MatchLabels = lbl
	sts.Spec.Template.Labels = lbl
	return sts
}

func podName(sts string, i int) string { return fmt.Sprintf("%s-%d", sts, i) }

// startPlainController runs the volume-controller as the Deployment does,
// for scenarios without TiDB: it sets the PVs of plain claims to Delete.
func startPlainController(t *testing.T, env *sim.Env) {
	t.Helper()
	p, err := env.StartController(context.Background(), "controller", "--pd-poll-interval=1s", "-v=2")
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			data, _ := os.ReadFile(p.LogPath())
			t.Logf("---- controller ----\n%s", data)
		}
	})
}

// waitReclaimDelete waits until the volume-controller has set the PV of a
// plain claim to Delete.
func waitReclaimDelete(ctx context.Context, t *testing.T, env *sim.Env, pv string) {
	t.Helper()
	require.Eventually(t, func() bool {
		got, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{})
		return err == nil && got.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete
	}, waitLong, 50*time.Millisecond, "the controller never set PV %s to Delete", pv)
}
