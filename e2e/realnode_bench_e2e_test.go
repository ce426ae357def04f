//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

// Real-node benchmarks take a few samples each inside one b.N round
// (make bench runs them with -benchtime=1x): every sample costs seconds to
// minutes of real kubelet work, and the figures are means of the samples.
const realSamples = 3

// BenchmarkRealNodeStartToReady: containerd started → Node Ready, and
// kubelet started → Node Ready (the images are imported in between).
func BenchmarkRealNodeStartToReady(b *testing.B) {
	re := startRealCluster(b)
	var total, kubelet time.Duration
	for range b.N {
		for i := range realSamples {
			n := re.addNode(b, fmt.Sprintf("bench-%d", i))
			total += n.Real.Ready.Sub(n.Real.Started)
			kubelet += n.Real.Ready.Sub(n.Real.KubeletStarted)
		}
	}
	samples := float64(b.N * realSamples)
	b.ReportMetric(total.Seconds()/samples, "s-containerd-start-to-Ready")
	b.ReportMetric(kubelet.Seconds()/samples, "s-kubelet-start-to-Ready")
}

// BenchmarkRealNodeInventoryToPV: a blank loop device added to the
// inventory → its PV in the API server, with the agent formatting and
// mounting it inside its container.
func BenchmarkRealNodeInventoryToPV(b *testing.B) {
	re := startRealEnv(b, "node-a")
	ctx := context.Background()
	var total time.Duration
	var doc strings.Builder
	doc.WriteString("disks:\n")
	for range b.N {
		for i := range realSamples {
			dev, err := re.env.Host.AttachLoop(filepath.Join(re.work, fmt.Sprintf("inv-%d.img", i)), 64)
			require.NoError(b, err)
			fmt.Fprintf(&doc, "- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  format: true\n", dev)
			start := time.Now()
			_, err = re.env.SetInventory(ctx, doc.String())
			require.NoError(b, err)
			waitPV(ctx, b, re.env, "node-a", nodePath(filepath.Base(dev)), corev1.VolumeAvailable)
			took := time.Since(start)
			total += took
			b.Logf("inventory %s → PV Available in %s", dev, took.Round(time.Millisecond))
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N*realSamples), "ms-inventory-to-PV")
}

// BenchmarkRealNodeClaimDeletedToAvailable100k: a pod writes 100,000
// files into its volume; its store is buried, the controller deletes the
// claim; measured is claim gone → the disk's new PV Available, for a disk
// the agent formatted (reformat) and one mounted by hand (contents wipe).
func BenchmarkRealNodeClaimDeletedToAvailable100k(b *testing.B) {
	const files = 100_000
	re := startRealEnv(b, "node-a")
	ctx := context.Background()
	a := re.nodes["node-a"]
	te := &tidbEnv{env: re.env, nodes: re.nodes, pd: re.pd}
	c := re.env.Cluster.Client

	// 2 GiB: ext4's default inode ratio gives 131k inodes, room for 100k
	// files (the backing files are sparse).
	dev, err := re.env.Host.AttachLoop(filepath.Join(re.work, "reformat.img"), 2048)
	require.NoError(b, err)
	_, err = re.env.SetInventory(ctx, fmt.Sprintf("disks:\n- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  format: true\n", dev))
	require.NoError(b, err)
	waitPV(ctx, b, re.env, "node-a", nodePath(filepath.Base(dev)), corev1.VolumeAvailable)
	manualDev, err := re.env.Host.AttachLoop(filepath.Join(re.work, "contents.img"), 2048)
	require.NoError(b, err)
	require.NoError(b, hostdisk.Mkfs(manualDev, "ext4"))
	require.NoError(b, re.env.Host.Mount(manualDev, a.Path("/mnt/tidb-localpv/pd/manual"), "ext4"))
	waitPV(ctx, b, re.env, "node-a", "/mnt/tidb-localpv/pd/manual", corev1.VolumeAvailable)

	for _, v := range []struct{ how, class string }{{"reformat", "tidb-localpv-tikv"}, {"contents", "tidb-localpv-pd"}} {
		// A TiKV StatefulSet per class, so each lands on its own disk.
		sts := realTiKV(1, files)
		sts.Name = tidbInstance + "-tikv-" + v.how
		sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName = ptr.To(v.class)
		_, err := c.AppsV1().StatefulSets(tidbNS).Create(ctx, sts, metav1.CreateOptions{})
		require.NoError(b, err)
		var total time.Duration
		const samples = 2 // each writes 100k files first
		for range b.N {
			for range samples {
				p := waitStatefulSetBound(ctx, b, re.env, sts, 1)[0]
				disk := a.Path(p.PV.Spec.Local.Path)
				require.Eventually(b, func() bool { return dataOf(b, disk)["LOCK"] == -1 }, realWait, 50*time.Millisecond, "the pod never wrote its files")
				pv := te.waitOwnerRecorded(ctx, b, sts, 0)
				scaleStatefulSet(ctx, b, re.env, sts, 0, 1)
				te.offlineStore(ctx, b, storeIDOf(b, pv))
				var gone time.Time
				require.Eventually(b, func() bool {
					_, err := c.CoreV1().PersistentVolumeClaims(tidbNS).Get(ctx, p.Claim.Name, metav1.GetOptions{})
					if apierrors.IsNotFound(err) {
						gone = time.Now()
						return true
					}
					return false
				}, realWait, 5*time.Millisecond, "the controller never released the claim")
				te.waitRecycled(ctx, b, pv)
				took := time.Since(gone)
				total += took
				b.Logf("%s wipe: claim gone → new PV Available in %s (%d files)", v.how, took.Round(time.Millisecond), files)
				scaleStatefulSet(ctx, b, re.env, sts, 1, 0)
			}
		}
		b.ReportMetric(total.Seconds()/float64(b.N*samples), "s-"+v.how)
	}
}

// BenchmarkRealNodeDeathToRunning: a node with a TiKV pod is powered off
// and its Node deleted → the pod Running on the other node's free disk.
// The controller waits the manifest's --dead-node-grace (60 s) first.
func BenchmarkRealNodeDeathToRunning(b *testing.B) {
	re := startRealEnv(b, "node-a", "node-b")
	ctx := context.Background()
	te := &tidbEnv{env: re.env, nodes: re.nodes, pd: re.pd}
	c := re.env.Cluster.Client
	a, nb := re.nodes["node-a"], re.nodes["node-b"]
	_, err := a.MountDisk("tidb-localpv-tikv", "disk0", "64m")
	require.NoError(b, err)
	_, err = re.env.Cluster.Kubectl(ctx, "cordon", "node-b")
	require.NoError(b, err)
	sts := realTiKV(1, 100)
	_, err = c.AppsV1().StatefulSets(tidbNS).Create(ctx, sts, metav1.CreateOptions{})
	require.NoError(b, err)
	p := waitStatefulSetBound(ctx, b, re.env, sts, 1)[0]
	te.waitOwnerRecorded(ctx, b, sts, 0)
	_, err = nb.MountDisk("tidb-localpv-tikv", "disk0", "64m")
	require.NoError(b, err)
	_, err = re.env.Cluster.Kubectl(ctx, "uncordon", "node-b")
	require.NoError(b, err)
	waitPV(ctx, b, re.env, "node-b", nodePath("disk0"), corev1.VolumeAvailable)

	b.ResetTimer()
	died := time.Now()
	require.NoError(b, a.Real.PowerOff())
	require.NoError(b, c.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}))
	require.Eventually(b, func() bool {
		pod, err := c.CoreV1().Pods(tidbNS).Get(ctx, p.Pod.Name, metav1.GetOptions{})
		return err == nil && pod.Spec.NodeName == "node-b" && pod.Status.Phase == corev1.PodRunning
	}, 2*realWait, 50*time.Millisecond, "the pod never ran on node-b")
	took := time.Since(died)
	b.StopTimer()
	b.Logf("node death → pod Running on node-b in %s", took.Round(time.Millisecond))
	b.ReportMetric(took.Seconds(), "s-node-death-to-Running")
}

// BenchmarkRealNodeAgentIdle8Disks: the agent container's resident memory
// and CPU with eight published disks and nothing happening.
func BenchmarkRealNodeAgentIdle8Disks(b *testing.B) {
	const window = 30 * time.Second
	re := startRealEnv(b, "node-a")
	ctx := context.Background()
	a := re.nodes["node-a"]
	for i := range 8 {
		_, err := a.MountDisk("tidb-localpv-tikv", fmt.Sprintf("disk%d", i), "16m")
		require.NoError(b, err)
	}
	require.Eventually(b, func() bool { return len(pvsOf(ctx, b, re.env, "node-a")) == 8 }, realWait, 50*time.Millisecond)
	pid := agentPid(b, a)
	for range b.N {
		cpu0 := cpuTicks(b, pid)
		start := time.Now()
		<-time.After(window) // idle on purpose: the measurement is of idleness
		cpu := float64(cpuTicks(b, pid)-cpu0) / 100 / time.Since(start).Seconds()
		rss := rssKiB(b, pid)
		b.Logf("agent (pid %d) with 8 disks, idle: RSS %.1f MiB, CPU %.2f millicores over %s", pid, float64(rss)/1024, cpu*1000, window)
		b.ReportMetric(float64(rss)/1024, "MiB-RSS")
		b.ReportMetric(cpu*1000, "millicores")
	}
}

// agentPid finds the agent's process among the node's container processes.
func agentPid(b *testing.B, n *sim.Node) int {
	b.Helper()
	for _, pid := range n.Real.Pids() {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.HasPrefix(raw, []byte("/usr/local/bin/tidb-localpv\x00agent")) {
			return pid
		}
	}
	b.Fatal("no agent process on " + n.Name)
	return 0
}

// cpuTicks is utime+stime of pid in clock ticks (100 per second on Linux).
func cpuTicks(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(b, err)
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	ut, err := strconv.ParseInt(f[11], 10, 64)
	require.NoError(b, err)
	st, err := strconv.ParseInt(f[12], 10, 64)
	require.NoError(b, err)
	return ut + st
}

// rssKiB is VmRSS of pid.
func rssKiB(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(b, err)
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			require.NoError(b, err)
			return kb
		}
	}
	b.Fatal("no VmRSS for", pid)
	return 0
}
