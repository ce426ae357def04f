package volumecontroller

import (
	"context"
	"fmt"
	goruntime "runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// BenchmarkFullResync10kPVs measures one full pass of the controller over
// 10,000 bound TiKV PVs (10,000 claims, pods and PD stores): the steady
// state after owners were recorded, which is what every poll costs. It
// reports the pass time and the heap the controller's caches hold.
func BenchmarkFullResync10kPVs(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	stores := map[uint64]pd.StoreInfo{}
	var objs []runtime.Object
	for i := range n {
		w := tikvObjects(true)
		pv := w[0].(*corev1.PersistentVolume)
		pvc := w[1].(*corev1.PersistentVolumeClaim)
		pod := w[3].(*corev1.Pod)
		pv.Name = fmt.Sprintf("tlpv-node-%d-disk0-%08x", i%100, i)
		pv.UID = types.UID(fmt.Sprintf("pv-%d", i))
		pvc.Name, pvc.UID, pvc.Spec.VolumeName = fmt.Sprintf("tikv-demo-tikv-%d", i), types.UID(fmt.Sprintf("pvc-%d", i)), pv.Name
		pv.Spec.ClaimRef.Name, pv.Spec.ClaimRef.UID = pvc.Name, pvc.UID
		pv.Labels[provisioner.LabelNode] = fmt.Sprintf("node-%d", i%100)
		pod.Name, pod.UID = fmt.Sprintf("demo-tikv-%d", i), types.UID(fmt.Sprintf("pod-%d", i))
		pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName = pvc.Name
		objs = append(objs, pv, pvc, pod)
		id := uint64(i + 1)
		stores[id] = pd.StoreInfo{ID: id, Address: fmt.Sprintf("demo-tikv-%d.demo-tikv-peer.tidb.svc:20160", i), StateName: "Up", LastHeartbeat: testNow}
	}
	for i := range 100 {
		node := tikvObjects(false)[2].(*corev1.Node).DeepCopy()
		node.Name = fmt.Sprintf("node-%d", i)
		objs = append(objs, node)
	}
	client := fake.NewClientset(objs...)
	fpd := &fakePD{cluster: testClusterID, stores: stores}
	tmpl, _ := pd.ParseEndpointTemplate(pd.DefaultEndpointTemplate)

	var before goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	c, err := New(Config{Policy: testPolicy, PDTemplate: tmpl, PollInterval: time.Second, PDCacheTTL: time.Second, Workers: 1},
		Deps{Client: client, Clock: clock.RealClock{}, Recorder: record.NewFakeRecorder(n), Registry: prometheus.NewRegistry(),
			Dial: func(string) (PD, error) { return fpd, nil }})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		b.Fatal(err)
	}
	initialSync := time.Since(start)

	pvs, _ := c.pvLister.List(labels.Everything())
	names := make([]string, len(pvs))
	for i, pv := range pvs {
		names[i] = pv.Name
	}
	// The heap now holds the fake API server's objects and the controller's
	// caches of them; the controller's share is what its informers keep.
	// First pass records every owner (10,000 patches); it is not the steady
	// state, so it runs before the timer.
	first := time.Now()
	for _, name := range names {
		if err := c.sync(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
	firstPass := time.Since(first)
	owned := 0
	for _, name := range names {
		if pv, err := client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{}); err == nil && provisioner.Owned(pv) {
			owned++
		}
	}
	if owned != n {
		b.Fatalf("%d of %d owners recorded: the benchmark would not measure the steady state", owned, n)
	}
	client.ClearActions()
	fpd.resetCalls()

	b.ResetTimer()
	for range b.N {
		for _, name := range names {
			if err := c.sync(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	var after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB-heap")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/PV")
	b.ReportMetric(initialSync.Seconds(), "s-cache-sync")
	b.ReportMetric(firstPass.Seconds(), "s-first-pass")
	// API load at steady state: every sync reads caches; what reaches the
	// API server and PD per full pass (one pass per --pd-poll-interval).
	b.ReportMetric(float64(len(client.Actions()))/float64(b.N), "api-requests/pass")
	b.ReportMetric(float64(fpd.callCount())/float64(b.N), "pd-requests/pass")
	goruntime.KeepAlive(c)
}
