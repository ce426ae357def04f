//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// BenchmarkV2DeadNodeToReplacementRunning measures, on the real control
// plane with a TiDB Operator v2 cluster of 4 TiKV instances and a spare
// node, the time from a node's deletion (its agent stopped first) to the
// group's replacement pod Running on a fresh disk of another node. The
// controller runs the Deployment's arguments with the manifest's 5 s PD
// poll and a 3 s dead-node grace (the default is 1 m); the simulated PD
// calls a silent store Disconnected after 2 s (real PD: 20 s). Also
// reported: node deletion → instance deleted by tidb-localpv, and → store
// buried. What is left is Kubernetes' pod garbage collection of the dead
// node's pod (40 s quarantine, checked every 20 s), which v2's finalizer
// waits for before the group replaces the instance.
func BenchmarkV2DeadNodeToReplacementRunning(b *testing.B) {
	te := startDisks(b, 1, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	v := startV2(b, te, sim.V2Options{Namespace: v2NS, Cluster: v2Cluster, Replicas: 4})
	if _, err := te.env.StartController(ctx, "controller-0", testTimings(defaultPoll)...); err != nil {
		b.Fatal(err)
	}
	var total, worst, toDelete, toBuried time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		owners := waitV2Owners(ctx, b, te, v, 4)
		var victim v2Placement
		for _, p := range owners {
			victim = p
			break
		}
		b.StartTimer()
		lost := killNode(ctx, b, te, victim.Pod.Spec.NodeName)
		var deletedAt, buriedAt time.Time
		// The condition notes the milestones as it sees them go by.
		require.Eventually(b, func() bool {
			if deletedAt.IsZero() {
				if inst, err := v.InstanceGet(ctx, victim.Instance); err != nil || inst.GetDeletionTimestamp() != nil {
					deletedAt = time.Now()
				}
			}
			if s, ok := v.Sim.Store(victim.Store); buriedAt.IsZero() && ok && s.StateName == "Tombstone" {
				buriedAt = time.Now()
			}
			return replacementRunning(ctx, te, v, owners)
		}, waitRecovery, 20*time.Millisecond, "no replacement for %s", victim.Instance)
		took := time.Since(lost)
		b.StopTimer()
		total += took
		worst = max(worst, took)
		toDelete += deletedAt.Sub(lost)
		toBuried += buriedAt.Sub(lost)
		b.Logf("node %s deleted → instance deleted %s, store buried %s, replacement Running %s",
			victim.Pod.Spec.NodeName, deletedAt.Sub(lost).Round(time.Millisecond), buriedAt.Sub(lost).Round(time.Millisecond), took.Round(time.Millisecond))
		// A fresh spare node for the next round.
		te.addNode(ctx, b, fmt.Sprintf("node-x%d", i))
	}
	n := float64(b.N)
	b.ReportMetric(total.Seconds()/n, "s-dead-node-to-running")
	b.ReportMetric(worst.Seconds(), "s-worst")
	b.ReportMetric(toDelete.Seconds()/n, "s-to-instance-deleted")
	b.ReportMetric(toBuried.Seconds()/n, "s-to-store-buried")
}

// replacementRunning: four live instances, one of them new, every pod
// Running on a bound claim.
func replacementRunning(ctx context.Context, te *tidbEnv, v *sim.V2, before map[string]v2Placement) bool {
	insts, err := v.Instances(ctx)
	if err != nil {
		return false
	}
	c := te.env.Cluster.Client.CoreV1()
	live, fresh := 0, false
	for _, inst := range insts {
		if inst.GetDeletionTimestamp() != nil {
			continue
		}
		live++
		if _, old := before[inst.GetName()]; old {
			continue
		}
		pod, err := c.Pods(v2NS).Get(ctx, sim.V2PodName(inst.GetName(), "tikv"), metav1.GetOptions{})
		if err != nil || pod.Status.Phase != corev1.PodRunning {
			return false
		}
		pvc, err := c.PersistentVolumeClaims(v2NS).Get(ctx, sim.V2ClaimName("data", pod.Name), metav1.GetOptions{})
		if err != nil || pvc.Status.Phase != corev1.ClaimBound {
			return false
		}
		fresh = true
	}
	return fresh && live == len(before)
}

// BenchmarkOutOfServiceToPodRunning measures, with a TiDB Operator v1
// cluster (StatefulSet of 4 TiKV pods) and a spare node, the time from a
// node shut down and tainted node.kubernetes.io/out-of-service to its
// TiKV pod Running on another node's fresh disk — no Node deletion, no
// grace. Controller: the Deployment's arguments, 5 s PD poll; simulated PD:
// Disconnected after 2 s of silence (real PD: 20 s).
func BenchmarkOutOfServiceToPodRunning(b *testing.B) {
	te := startTiDBEnv(b, []string{"tidb-localpv-tikv"}, "node-a", "node-b", "node-c", "node-d", "node-e")
	ctx := context.Background()
	args := append(testTimings(defaultPoll), fmt.Sprintf("--pd-endpoint=%s/%s=%s", tidbNS, tidbInstance, te.pd.URL))
	if _, err := te.env.StartController(ctx, "controller-0", args...); err != nil {
		b.Fatal(err)
	}
	sts := tidbStatefulSet("tikv", "tidb-localpv-tikv", 4)
	te.deploy(ctx, b, sts)
	var total, worst time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		pv := te.waitOwnerRecorded(ctx, b, sts, 1)
		victim := pv.Labels[provisioner.LabelNode]
		b.StartTimer()
		tainted := shutDownNode(ctx, b, te, victim)
		moved := waitPodMoved(ctx, b, te, sts, 1, victim)
		took := time.Since(tainted)
		b.StopTimer()
		total += took
		worst = max(worst, took)
		b.Logf("node %s tainted out-of-service → %s Running on %s after %s", victim, podName(sts.Name, 1), moved.Labels[provisioner.LabelNode], took.Round(time.Millisecond))
		te.addNode(ctx, b, fmt.Sprintf("node-x%d", i))
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s-taint-to-running")
	b.ReportMetric(worst.Seconds(), "s-worst")
}
