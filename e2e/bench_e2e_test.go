//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// BenchmarkMountToPV measures, on the real control plane, the time from a
// tmpfs mount appearing under a discovery directory to the PV existing in
// the API server (target: under 1 s). A watch, not polling, sees the PV.
func BenchmarkMountToPV(b *testing.B) {
	env, nodes := startEnv(b, "node-a")
	ctx := context.Background()
	n := nodes["node-a"]
	if err := n.StartAgent(ctx); err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	b.ResetTimer()
	for i := range b.N {
		w, err := env.Cluster.Client.CoreV1().PersistentVolumes().Watch(ctx, metav1.ListOptions{
			LabelSelector: labels.Set{provisioner.LabelNode: "node-a"}.String(),
		})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		path, err := n.MountDisk("tidb-localpv-tikv", fmt.Sprintf("bench%d", i), "8m")
		if err != nil {
			b.Fatal(err)
		}
		waitWatch(b, w, func(pv *corev1.PersistentVolume) bool { return pv.Spec.Local.Path == path })
		total += time.Since(start)
		w.Stop()
	}
	b.StopTimer()
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-mount-to-PV")
}

// BenchmarkTombstoneToAvailable measures, on the real control plane with
// the controller at the manifest's default PD poll interval (5 s), the time
// from PD burying a store whose pod is gone to its disk being Available
// again (target: poll interval + 2 s).
const defaultPoll = 5 * time.Second

func BenchmarkTombstoneToAvailable(b *testing.B) {
	te := startTiDBEnv(b, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	if _, err := te.env.StartController(ctx, "controller-0", fmt.Sprintf("--pd-endpoint=%s/%s=%s", tidbNS, tidbInstance, te.pd.URL)); err != nil {
		b.Fatal(err)
	}
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	t := b
	te.deploy(ctx, t, sts)
	var total, worst time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		pv := te.waitOwnerRecorded(ctx, t, sts, 3)
		store := storeIDOf(t, pv)
		// Scale in first, so the time measured is ours alone: from the
		// burial to the disk being free again.
		scaleStatefulSet(ctx, t, te.env, sts, 3, 4)
		// The waits above end on one of the controller's polls; a random
		// pause unties the burial from the poll's phase, as in real life.
		time.Sleep(rand.N(defaultPoll))
		b.StartTimer()
		tomb := te.offlineStore(ctx, t, store)
		te.waitRecycled(ctx, t, pv)
		total += time.Since(tomb)
		worst = max(worst, time.Since(tomb))
		b.Logf("store %d Tombstone at %s → disk Available after %s", store, tomb.Format("15:04:05.000"), time.Since(tomb).Round(time.Millisecond))
		b.StopTimer()
		scaleStatefulSet(ctx, t, te.env, sts, 4, 3)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s-tombstone-to-available")
	b.ReportMetric(worst.Seconds(), "s-worst")
}

func waitWatch(b *testing.B, w watch.Interface, match func(*corev1.PersistentVolume) bool) {
	b.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case ev := <-w.ResultChan():
			if pv, ok := ev.Object.(*corev1.PersistentVolume); ok && match(pv) {
				return
			}
		case <-timeout:
			b.Fatal("PV never appeared")
		}
	}
}
