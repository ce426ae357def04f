package volumecontroller

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Issue 11: the controller's side of disk health.

func (w *world) setHealth(state provisioner.HealthState, reason string, since time.Time) {
	w.t.Helper()
	pv := w.pv()
	pv.Annotations[provisioner.AnnHealth] = string(state)
	pv.Annotations[provisioner.AnnHealthReason] = reason
	pv.Annotations[provisioner.AnnHealthSince] = since.UTC().Format(time.RFC3339)
	pv.Annotations[provisioner.AnnHealthMessage] = "the kernel remounted the filesystem read-only"
	_, err := w.client.CoreV1().PersistentVolumes().Update(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(w.t, err)
}

func TestSync_AFailingDiskIsToldToItsClaimAndPodAndItsRecoveryToo(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.events()
	w.setHealth(provisioner.HealthFailed, "ReadOnlyFilesystem", testNow)
	require.NoError(t, w.sync())
	ev := w.events()
	require.Contains(t, ev, "Warning VolumeConditionAbnormal")
	require.Equal(t, 2, countOf(ev, ReasonVolumeAbnormal), "one on the claim, one on the pod")
	require.NoError(t, w.sync())
	require.Zero(t, countOf(w.events(), ReasonVolumeAbnormal), "once per change")

	w.setHealth(provisioner.HealthHealthy, "", testNow)
	require.NoError(t, w.sync())
	require.Equal(t, 2, countOf(w.events(), ReasonVolumeNormal))
	require.Empty(t, w.pd.deletes)
}

func countOf(events, reason string) int {
	return strings.Count(events, " "+reason+" ")
}

func TestSync_AFailedDiskIsHandledLikeADeadNodeForItsStoreOnlyWhenOptedIn(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.setHealth(provisioner.HealthFailed, "IOErrors", testNow.Add(-10*time.Minute))
	w.pd.set(7, "Disconnected")
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes, "off by default")

	w.c.cfg.Policy.FailedDiskGrace = 5 * time.Minute
	w.pd.set(7, "Up")
	require.NoError(t, w.sync())
	require.Empty(t, w.pd.deletes, "a store still Up on a failing disk is only reported")
	require.Contains(t, w.events(), "Up in PD")

	w.pd.set(7, "Disconnected")
	require.NoError(t, w.sync())
	require.Equal(t, []uint64{7}, w.pd.deletes)

	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
	require.Equal(t, 1, w.podDeletes(), "the StatefulSet starts the pod over on a healthy disk")
}

func TestSync_ADiskHealthyAgainAtTheFreshReadIsNotActedOn(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.c.cfg.Policy.FailedDiskGrace = time.Minute
	w.recordOwner()
	w.setHealth(provisioner.HealthFailed, "IOErrors", testNow.Add(-10*time.Minute))
	w.pd.set(7, "Down")
	w.waitCaches()
	// The operator fixed the disk between the decision and the action.
	healthy := w.pv()
	healthy.Annotations[provisioner.AnnHealth] = string(provisioner.HealthHealthy)
	w.client.PrependReactor("get", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, healthy.DeepCopy(), nil
	})
	require.NoError(t, w.c.sync(w.ctx, pvName))
	require.Empty(t, w.pd.deletes)
	_ = corev1.VolumeBound
}
