//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// The disk lifecycle on two real nodes, with the agent DaemonSet and the
// controller Deployment of manifests/ running as containers of the image
// built from the work tree, and a TiKV-like pod writing real files. The
// chapters share one environment (starting one costs about half a minute)
// and run in order; each states what it proves.
func TestRealNodes(t *testing.T) {
	t.Parallel()
	re := startRealEnv(t, "node-a", "node-b")
	ctx := t.Context()
	te := &tidbEnv{env: re.env, nodes: re.nodes, pd: re.pd}
	a, b := re.nodes["node-a"], re.nodes["node-b"]
	c := re.env.Cluster.Client
	sts := realTiKV(1, 1000)
	var first placement // the pod of the first chapters and its disk
	var loopExt4 string // its device

	ok := t.Run("an inventory device is formatted and mounted by the agent in its container, shows on the host, and a real pod writes to it", func(t *testing.T) {
		dev, err := re.env.Host.AttachLoop(filepath.Join(re.work, "node-a-ext4.img"), 64)
		require.NoError(t, err)
		loopExt4 = dev
		_, err = re.env.SetInventory(ctx, fmt.Sprintf("disks:\n- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  format: true\n", dev))
		require.NoError(t, err)
		pv := waitPV(ctx, t, re.env, "node-a", nodePath(filepath.Base(dev)), corev1.VolumeAvailable)
		host := nodeDisk(a, filepath.Base(dev))
		require.Equal(t, dev, mountSource(t, host), "the agent's mount, made in its container, propagates to the host")
		require.Equal(t, "ext4", mountFSType(t, host))
		require.Equal(t, readMarker(t, host).ID, pv.Labels[provisioner.LabelDisk])

		_, err = c.AppsV1().StatefulSets(tidbNS).Create(ctx, sts, metav1.CreateOptions{})
		require.NoError(t, err)
		first = waitStatefulSetBound(ctx, t, re.env, sts, 1)[0]
		require.Equal(t, pv.Name, first.PV.Name)
		require.Equal(t, "node-a", first.Pod.Spec.NodeName)
		require.Eventually(t, func() bool { return dataOf(t, host)["LOCK"] == -1 }, realWait, tick, "the pod never wrote its data")
		require.Equal(t, map[string]int{"LOCK": -1, "db-0000": 1000}, dataOf(t, host), "what the pod wrote, seen from the host")
		out, err := re.env.Cluster.Kubectl(ctx, "exec", "-n", tidbNS, first.Pod.Name, "--", "/testpod", "ls", "/var/lib/tikv")
		require.NoError(t, err)
		require.Contains(t, string(out), "db-0000", "kubectl exec into the pod sees the same files")
		te.waitOwnerRecorded(ctx, t, sts, 0)
	})
	require.True(t, ok, "the later chapters build on this one")

	t.Run("a rolling update of the DaemonSet changes nothing on bound disks and the pod keeps its data", func(t *testing.T) {
		before := snapshotPVs(ctx, t, re.env)
		host := nodeDisk(a, filepath.Base(loopExt4))
		data := dataOf(t, host)
		next := strings.TrimSuffix(sim.Image, ":e2e") + ":e2e-next"
		for _, n := range []*sim.Node{a, b} {
			_, err := n.Real.Ctr(ctx, "images", "tag", sim.Image, next)
			require.NoError(t, err)
		}
		old := map[string]types.UID{}
		for _, n := range []*sim.Node{a, b} {
			p, err := n.AgentPod(ctx)
			require.NoError(t, err)
			old[n.Name] = p.UID
		}
		_, err := re.env.Cluster.Kubectl(ctx, "-n", sim.Namespace, "set", "image", "daemonset/"+sim.AgentDaemonSet, "agent="+next)
		require.NoError(t, err)
		_, err = re.env.Cluster.Kubectl(ctx, "-n", sim.Namespace, "rollout", "status", "daemonset/"+sim.AgentDaemonSet, "--timeout=3m")
		require.NoError(t, err)
		for _, n := range []*sim.Node{a, b} {
			p, err := n.WaitAgentPodReady(ctx, realWait)
			require.NoError(t, err)
			require.NotEqual(t, old[n.Name], p.UID, "the agent of %s was replaced", n.Name)
			require.Equal(t, next, p.Spec.Containers[0].Image)
		}
		require.Equal(t, before, snapshotPVs(ctx, t, re.env), "PVs changed during the rolling update")
		require.Equal(t, data, dataOf(t, host), "the pod's data changed during the rolling update")
		pod, err := c.CoreV1().Pods(tidbNS).Get(ctx, first.Pod.Name, metav1.GetOptions{})
		require.NoError(t, err)
		require.Equal(t, first.Pod.UID, pod.UID, "the TiKV pod was not disturbed")
		require.Equal(t, loopExt4, mountSource(t, host))
	})

	// Three disks, three ways to wipe: the agent's own ext4 and xfs are
	// reformatted, the disk an operator mounted by hand has its contents
	// removed (its mkfs options are not the agent's to change).
	t.Run("after scale-in and Tombstone the agent container wipes what the pods wrote and republishes each disk: ext4 and xfs reformatted, a hand-mounted disk emptied", func(t *testing.T) {
		xfs, err := re.env.Host.AttachLoop(filepath.Join(re.work, "node-a-xfs.img"), 320) // mkfs.xfs wants 300 MiB
		require.NoError(t, err)
		manualDev, err := re.env.Host.AttachLoop(filepath.Join(re.work, "node-a-manual.img"), 64)
		require.NoError(t, err)
		require.NoError(t, hostdisk.Mkfs(manualDev, "ext4"))
		manual := nodeDisk(a, "manual")
		require.NoError(t, re.env.Host.Mount(manualDev, manual, "ext4"), "an operator mounts a disk by hand on the host")
		_, err = re.env.SetInventory(ctx, fmt.Sprintf("disks:\n- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  format: true\n- node: node-a\n  device: %s\n  storageClass: tidb-localpv-tikv\n  fsType: xfs\n  format: true\n", loopExt4, xfs))
		require.NoError(t, err)
		waitPV(ctx, t, re.env, "node-a", nodePath(filepath.Base(xfs)), corev1.VolumeAvailable)
		waitPV(ctx, t, re.env, "node-a", nodePath("manual"), corev1.VolumeAvailable)
		disks := map[string]struct{ dev, fsType string }{
			nodeDisk(a, filepath.Base(loopExt4)): {loopExt4, "ext4"},
			nodeDisk(a, filepath.Base(xfs)):      {xfs, "xfs"},
			manual:                               {manualDev, "ext4"},
		}

		scaleStatefulSet(ctx, t, re.env, sts, 3, 1)
		placed := waitStatefulSetBound(ctx, t, re.env, sts, 3)
		var pvs []*corev1.PersistentVolume
		for i := range 3 {
			pvs = append(pvs, te.waitOwnerRecorded(ctx, t, sts, i))
		}
		for host := range disks {
			require.Eventually(t, func() bool { return dataOf(t, host)["LOCK"] == -1 }, realWait, tick, "no pod wrote into %s", host)
		}
		t.Logf("3 pods wrote into %v", keys(disks))
		// The inventory entries stay: the reformat wipes below own their
		// devices while the inventory pass runs beside them (issue 7's one
		// actor per device; this once needed the entries retired first).

		scaleStatefulSet(ctx, t, re.env, sts, 0, 3)
		for _, pv := range pvs {
			te.offlineStore(ctx, t, storeIDOf(t, pv))
		}
		for i, pv := range pvs {
			fresh := te.waitRecycled(ctx, t, pv)
			host := a.Path(fresh.Spec.Local.Path)
			require.Empty(t, userContents(t, host), "disk of %s still holds data", placed[i].Pod.Name)
			require.Equal(t, discovery.StateReady, readMarker(t, host).State)
			require.Equal(t, pv.Labels[provisioner.LabelDisk], fresh.Labels[provisioner.LabelDisk], "same disk, same identity")
			want := disks[host]
			require.Equal(t, want.dev, mountSource(t, host), "still mounted from its device")
			require.Equal(t, want.fsType, mountFSType(t, host), "still %s", want.fsType)
		}
	})

	t.Run("a dead node's TiKV pod runs again on the other node's fresh disk", func(t *testing.T) {
		spare, err := b.MountDisk("tidb-localpv-tikv", "spare", "512m")
		require.NoError(t, err)
		waitPV(ctx, t, re.env, "node-b", nodePath("spare"), corev1.VolumeAvailable)
		// node-a holds three free disks and node-b one: keep node-b out of
		// the first placement, so the pod has somewhere to go when node-a dies.
		_, err = re.env.Cluster.Kubectl(ctx, "cordon", "node-b")
		require.NoError(t, err)
		scaleStatefulSet(ctx, t, re.env, sts, 1, 0)
		p := waitStatefulSetBound(ctx, t, re.env, sts, 1)[0]
		require.Equal(t, "node-a", p.Pod.Spec.NodeName)
		te.waitOwnerRecorded(ctx, t, sts, 0)
		_, err = re.env.Cluster.Kubectl(ctx, "uncordon", "node-b")
		require.NoError(t, err)

		died := time.Now()
		require.NoError(t, a.Real.PowerOff())
		require.NoError(t, c.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}))
		t.Logf("node-a powered off and its Node deleted; the controller waits --dead-node-grace (60s in the manifest)")
		var moved *corev1.Pod
		require.Eventually(t, func() bool {
			pod, err := c.CoreV1().Pods(tidbNS).Get(ctx, p.Pod.Name, metav1.GetOptions{})
			if err != nil || pod.Spec.NodeName != "node-b" || pod.Status.Phase != corev1.PodRunning {
				return false
			}
			moved = pod
			return true
		}, 2*realWait, 100*time.Millisecond, "the pod never ran on node-b")
		t.Logf("node death → pod Running on node-b after %s", time.Since(died).Round(time.Millisecond))
		require.Eventually(t, func() bool { return dataOf(t, spare)["LOCK"] == -1 }, realWait, tick, "the moved pod never wrote to node-b's disk")
		require.NotEqual(t, p.Pod.UID, moved.UID)
		re.waitControllers(ctx, t, 1)
	})

	t.Run("the agent container killed mid-wipe is restarted by kubelet and finishes the wipe before the disk is published again", func(t *testing.T) {
		spare := nodeDisk(b, "spare")
		// The pod on node-b's disk goes: scale in, bury its store, wait for
		// the disk to come back empty.
		pv := te.waitOwnerRecorded(ctx, t, sts, 0)
		scaleStatefulSet(ctx, t, re.env, sts, 0, 1)
		te.offlineStore(ctx, t, storeIDOf(t, pv))
		te.waitRecycled(ctx, t, pv)

		// A pod writes enough files that their removal takes about a second
		// (empty ones: they take no tmpfs pages).
		patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"tikv","args":["-data=/var/lib/tikv","-files=%d","-size=0"]}]}}}}`, slowDirs*slowFilesPerDir)
		_, err := c.AppsV1().StatefulSets(tidbNS).Patch(ctx, sts.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		require.NoError(t, err)
		scaleStatefulSet(ctx, t, re.env, sts, 1, 0)
		placed := waitStatefulSetBound(ctx, t, re.env, sts, 1)[0]
		require.Equal(t, "node-b", placed.Pod.Spec.NodeName)
		written := time.Now()
		require.Eventually(t, func() bool { return dataOf(t, spare)["LOCK"] == -1 }, 2*realWait, 100*time.Millisecond, "the pod never finished writing")
		t.Logf("the pod wrote %d files in about %s", slowDirs*slowFilesPerDir, time.Since(written).Round(time.Second))
		old := te.waitOwnerRecorded(ctx, t, sts, 0)
		id := old.Labels[provisioner.LabelDisk]
		agent, err := b.AgentPod(ctx)
		require.NoError(t, err)
		restarts := agent.Status.ContainerStatuses[0].RestartCount

		scaleStatefulSet(ctx, t, re.env, sts, 0, 1)
		te.offlineStore(ctx, t, storeIDOf(t, old))
		// Kill once the wipe is certainly under way: the marker says so and
		// a top-level directory (1000 files) is gone.
		deadline := time.Now().Add(realWait)
		poll := time.NewTicker(time.Millisecond) // the window is about a second
		defer poll.Stop()
		for {
			m, ok, err := discovery.ReadMarker(spare)
			require.NoError(t, err)
			require.True(t, ok, "the marker must never vanish")
			dirs := dbDirs(userContents(t, spare))
			if m.State == discovery.StateWiping && dirs < slowDirs {
				break
			}
			if m.State != discovery.StateWiping {
				require.Equal(t, slowDirs, dirs, "files went before the disk was marked wiping")
			}
			require.True(t, time.Now().Before(deadline), "the agent never started wiping")
			<-poll.C
		}
		killed, err := b.KillAgentContainer(ctx)
		require.NoError(t, err)
		left := dbDirs(userContents(t, spare))
		t.Logf("agent container %.12s killed through containerd with %d of %d directories left", killed, left, slowDirs)
		require.NotZero(t, left, "the wipe finished before the kill; make it slower")
		require.Equal(t, discovery.StateWiping, readMarker(t, spare).State)

		// Whenever a PV other than the released one exists for the disk, the
		// disk must already be empty and marked ready.
		require.Eventually(t, func() bool {
			pvs, err := pvsOfDisk(ctx, re.env, id)
			require.NoError(t, err)
			for _, pv := range pvs {
				if pv.UID == old.UID {
					continue
				}
				require.Empty(t, userContents(t, spare), "PV %s exists while the disk holds data", pv.Name)
				require.Equal(t, discovery.StateReady, readMarker(t, spare).State)
				if pv.Status.Phase == corev1.VolumeAvailable {
					return true
				}
			}
			return false
		}, realWait, 5*time.Millisecond, "the disk never came back")
		pod, err := b.AgentPod(ctx)
		require.NoError(t, err)
		require.Greater(t, pod.Status.ContainerStatuses[0].RestartCount, restarts, "kubelet restarted the killed agent container")
		require.Empty(t, userContents(t, spare))
	})
}
