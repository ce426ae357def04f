package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// BenchmarkHealth_FaultToAbnormalEvent measures, per kind of fault, the
// time from injecting it into a real disk (a loop device, as root) to the
// VolumeConditionAbnormal event on the disk's bound PV, through the whole
// agent as it runs on a node (Run: the kernel log, the mount-table watch,
// the health poll, the reconcile queue, the event recorder) against a
// fake API server. ns/op is the mean; max-ms the slowest. Run it with
//
//	go test -run '^$' -bench BenchmarkHealth_FaultToAbnormalEvent -benchtime 5x ./daemon/
func BenchmarkHealth_FaultToAbnormalEvent(b *testing.B) {
	hostdisk.RequireRoot(b, "break loop devices")
	kinds := []struct {
		name    string
		fsType  string
		options string
		sizeMiB int
		// tmpfsMiB, when set, puts the backing file on a tmpfs this small.
		tmpfsMiB int
		inject   func(b *testing.B, d realDisk)
	}{
		{"ext4-error-emergency-ro", "ext4", "errors=remount-ro", 64, 0, func(b *testing.B, d realDisk) {
			writeOrFail(b, filepath.Join("/sys/fs/ext4", filepath.Base(d.dev), "trigger_fs_error"), "1")
		}},
		{"remount-ro", "ext4", "", 64, 0, func(b *testing.B, d realDisk) {
			if err := unix.Mount("", d.path, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				b.Fatal(err)
			}
		}},
		{"io-errors-backing-full", "ext4", "", 64, 8, func(b *testing.B, d realDisk) {
			fillAndSync(b, filepath.Join(d.path, "fill"), 20<<20)
		}},
		{"device-gone", "ext4", "", 64, 0, func(b *testing.B, d realDisk) {
			if err := os.Truncate(d.backing, 0); err != nil {
				b.Fatal(err)
			}
			if out, err := exec.Command("losetup", "-c", d.dev).CombinedOutput(); err != nil {
				b.Fatalf("losetup -c: %v: %s", err, out)
			}
		}},
		{"lazy-unmount", "ext4", "", 64, 0, func(b *testing.B, d realDisk) {
			if err := unix.Unmount(d.path, unix.MNT_DETACH); err != nil {
				b.Fatal(err)
			}
		}},
		{"xfs-shutdown", "xfs", "", 320, 0, func(b *testing.B, d realDisk) {
			if out, err := exec.Command("xfs_io", "-x", "-c", "shutdown", d.path).CombinedOutput(); err != nil {
				b.Fatalf("xfs_io shutdown: %v: %s", err, out)
			}
		}},
		{"capacity-warning", "ext4", "", 64, 0, func(b *testing.B, d realDisk) {
			var st unix.Statfs_t
			if err := unix.Statfs(d.path, &st); err != nil {
				b.Fatal(err)
			}
			fillAndSync(b, filepath.Join(d.path, "fill"), int(float64(st.Bavail*uint64(st.Bsize))*0.95))
		}},
	}
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			env := startBenchAgent(b)
			var took []time.Duration
			i := 0
			for b.Loop() {
				b.StopTimer()
				hd := &hostdisk.Host{}
				d := env.newDisk(b, hd, fmt.Sprintf("d%d", i), k.fsType, k.options, k.sizeMiB, k.tmpfsMiB)
				pv := env.publishAndBind(b, d)
				b.StartTimer()
				start := time.Now()
				k.inject(b, d)
				env.waitForAbnormal(b, pv)
				took = append(took, time.Since(start))
				b.StopTimer()
				if err := hd.Close(); err != nil {
					b.Errorf("clean up: %v", err)
				}
				i++
				b.StartTimer()
			}
			b.ReportMetric(float64(slices.Max(took).Milliseconds()), "max-ms")
		})
	}
}

func writeOrFail(b *testing.B, path, s string) {
	if err := os.WriteFile(path, []byte(s), 0o200); err != nil {
		b.Fatal(err)
	}
}

// benchAgent is a whole agent (Run) on the real host and a fake API.
type benchAgent struct {
	agent  *Agent
	client *fake.Clientset
	root   string
	events <-chan watch.Event
}

func startBenchAgent(b *testing.B) *benchAgent {
	b.Helper()
	base := b.TempDir()
	root := filepath.Join(base, "tikv")
	if err := os.MkdirAll(root, 0o755); err != nil {
		b.Fatal(err)
	}
	client := fake.NewClientset(testNodeObject(), testStorageClass(nil))
	cfg := Config{
		NodeName: testNode, Roots: discovery.Roots{{Class: testClass, Dir: root}},
		InventoryNamespace: invNamespace, InventoryName: invName,
		StateDir: filepath.Join(base, "state"), ResyncPeriod: time.Minute, FSWipe: provisioner.FSWipeAuto,
		MountInfo: discovery.DefaultMountInfo, DevDir: "/dev", ByIDDir: "/dev/disk/by-id", SysBlockDir: "/sys/class/block",
	}
	a, err := New(cfg, OSDeps(client, cfg, prometheus.NewRegistry()))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	b.Cleanup(func() { cancel(); <-done })
	w, err := client.CoreV1().Events("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)
	waitFor(b, "the agent to be ready", a.Ready)
	return &benchAgent{agent: a, client: client, root: root, events: w.ResultChan()}
}

func waitFor(b *testing.B, what string, cond func() bool) {
	b.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 30*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		b.Fatalf("waiting for %s: %v", what, err)
	}
}

func (e *benchAgent) newDisk(b *testing.B, hd *hostdisk.Host, name, fsType, options string, sizeMiB, tmpfsMiB int) realDisk {
	b.Helper()
	dir := b.TempDir()
	if tmpfsMiB > 0 {
		if err := hd.MountTmpfs(filepath.Join(dir, "small"), fmt.Sprintf("%dm", tmpfsMiB)); err != nil {
			b.Fatal(err)
		}
		dir = filepath.Join(dir, "small")
	}
	backing := filepath.Join(dir, "disk.img")
	dev, err := hd.AttachLoop(backing, sizeMiB)
	if err != nil {
		b.Fatal(err)
	}
	if err := hostdisk.Mkfs(dev, fsType); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(e.root, name)
	if err := os.MkdirAll(path, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := unix.Mount(dev, path, fsType, 0, options); err != nil {
		b.Fatal(err)
	}
	hd.Track("unmount "+path, func() error { return hostdisk.Unmount(path) })
	return realDisk{dev: dev, path: path, backing: backing}
}

// publishAndBind waits for the agent to publish the disk, binds its PV and
// waits until the agent has seen it bound and has checked the disk once.
func (e *benchAgent) publishAndBind(b *testing.B, d realDisk) string {
	b.Helper()
	var pv *corev1.PersistentVolume
	waitFor(b, "the disk's PV", func() bool {
		list, err := e.client.CoreV1().PersistentVolumes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for i := range list.Items {
			if list.Items[i].Spec.Local.Path == d.path {
				pv = &list.Items[i]
				return true
			}
		}
		return false
	})
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "claim-" + pv.Name, UID: "uid-" + pv.UID}
	pv.Status.Phase = corev1.VolumeBound
	if _, err := e.client.CoreV1().PersistentVolumes().Update(context.Background(), pv, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	id := pv.Labels[provisioner.LabelDisk]
	waitFor(b, "the agent to see the PV bound and check its disk", func() bool {
		cached, err := e.agent.pvLister.Get(pv.Name)
		if err != nil || cached.Status.Phase != corev1.VolumeBound {
			return false
		}
		m := e.agent.health
		m.mu.Lock()
		defer m.mu.Unlock()
		dh := m.disks[id]
		return dh != nil && dh.known && len(dh.names) > 0
	})
	return pv.Name
}

func (e *benchAgent) waitForAbnormal(b *testing.B, pv string) {
	b.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-e.events:
			if o, ok := ev.Object.(*corev1.Event); ok && o.Reason == provisioner.ReasonVolumeConditionAbnormal && o.InvolvedObject.Name == pv {
				return
			}
		case <-timeout:
			b.Fatalf("no %s event on PV %s", provisioner.ReasonVolumeConditionAbnormal, pv)
		}
	}
}

// BenchmarkHealth_CheckPass measures one health check of a node's disks
// (ext4 on loop devices, as root): what the 5 s poll costs. Run it with
//
//	go test -run '^$' -bench BenchmarkHealth_CheckPass ./daemon/
func BenchmarkHealth_CheckPass(b *testing.B) {
	hostdisk.RequireRoot(b, "mount loop devices")
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("disks=%d", n), func(b *testing.B) {
			// The agent is built but not run: the pass alone is measured.
			base := b.TempDir()
			cfg := Config{
				NodeName: testNode, Roots: discovery.Roots{{Class: testClass, Dir: filepath.Join(base, "tikv")}},
				InventoryNamespace: invNamespace, InventoryName: invName, StateDir: filepath.Join(base, "state"),
				ResyncPeriod: time.Minute, MountInfo: discovery.DefaultMountInfo,
			}
			client := fake.NewClientset()
			a, err := New(cfg, OSDeps(client, cfg, prometheus.NewRegistry()))
			if err != nil {
				b.Fatal(err)
			}
			env := &benchAgent{agent: a, client: client, root: filepath.Join(base, "tikv")}
			hd := hostdisk.ForTest(b)
			var disks []found
			for i := range n {
				d := env.newDisk(b, hd, fmt.Sprintf("c%d", i), "ext4", "", 64, 0)
				disks = append(disks, found{Disk: discovery.Disk{
					Class: testClass, Name: filepath.Base(d.path), Path: d.path, Mode: corev1.PersistentVolumeFilesystem,
					Device: d.dev, FSType: "ext4", MountPoint: true,
				}, ID: fmt.Sprintf("fs-bench%016d", i)})
			}
			ctx := context.Background()
			for b.Loop() {
				env.agent.checkHealth(ctx, disks)
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(n), "µs/disk")
		})
	}
}
