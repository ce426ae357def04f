package volumecontroller

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// Issue 7 scenarios: each test tries to lead the controller into releasing
// a disk whose data a store still needs.

// restartPod makes the cached TiKV pod a new incarnation: started at
// started, Ready as given.
func (w *world) restartPod(started time.Time, ready bool) {
	w.t.Helper()
	pod, err := w.client.CoreV1().Pods(ns).Get(w.ctx, podN, metav1.GetOptions{})
	require.NoError(w.t, err)
	fresh := tikvPod(pod.UID, ready)
	fresh.ResourceVersion = pod.ResourceVersion
	fresh.Labels = pod.Labels
	fresh.Status.StartTime = ptr.To(metav1.NewTime(started))
	fresh.Status.Conditions[0].LastTransitionTime = metav1.NewTime(started)
	_, err = w.client.CoreV1().Pods(ns).UpdateStatus(w.ctx, fresh, metav1.UpdateOptions{})
	require.NoError(w.t, err)
	require.Eventually(w.t, func() bool {
		p, err := w.c.podLister.Pods(ns).Get(podN)
		return err == nil && p.Status.StartTime.Equal(fresh.Status.StartTime)
	}, 5*time.Second, time.Millisecond)
}

func (w *world) podDeletes() int {
	n := 0
	for _, a := range w.client.Actions() {
		if a.GetVerb() == "delete" && a.GetResource().Resource == "pods" {
			n++
		}
	}
	return n
}

func (w *world) storeAt(id uint64, state string, heartbeat time.Time) {
	w.pd.mu.Lock()
	s := w.pd.stores[id]
	s.ID, s.Address, s.LastHeartbeat = id, "demo-tikv-3.demo-tikv-peer.tidb.svc:20160", heartbeat
	w.pd.stores[id] = s
	w.pd.mu.Unlock()
	w.pd.set(id, state)
}

func TestSync_ANewClaimIsNeverRecordedAsOwnedByItsPodsPreviousStore(t *testing.T) {
	for _, prev := range []struct {
		state     string
		heartbeat time.Duration // relative to testNow; the pod started a minute ago
	}{
		{"Up", -time.Hour},           // died seconds ago: PD has not noticed yet
		{"Disconnected", -time.Hour}, // node died
		{"Down", -time.Hour},         // node died long ago
		{"Offline", -time.Hour},      // offlined by the operator, not yet buried
		{"Offline", 0},               // offlined, old process still heartbeating elsewhere
	} {
		for _, label := range []bool{false, true} {
			state := prev.state
			t.Run(fmt.Sprintf("%s, heartbeat %s%s", state, prev.heartbeat, map[bool]string{false: "", true: ", with TiDB Operator's store-id label"}[label]), func(t *testing.T) {
				objs := tikvObjects(true)
				pod := objs[3].(*corev1.Pod)
				pod.Status.StartTime = ptr.To(metav1.NewTime(testNow.Add(-time.Minute)))
				if label {
					pod.Labels[labelStoreID] = "7"
				}
				w := newWorld(t, objs...)
				// Store 7 is the pod's previous incarnation on a dead node:
				// it last heartbeated before this pod started.
				w.storeAt(7, state, testNow.Add(prev.heartbeat))
				require.NoError(t, w.sync())
				pv := w.pv()
				require.False(t, provisioner.Owned(pv), "store 7 must not become the owner of the new pod's disk")
				require.Empty(t, pv.Annotations[provisioner.AnnStoreID])

				// Store 7 is buried; the pod registers as store 12.
				w.pd.set(7, "Tombstone")
				w.storeAt(12, "Up", testNow)
				require.NoError(t, w.sync())
				require.Equal(t, "12", w.pv().Annotations[provisioner.AnnStoreID])

				// The pod restarts on store 12's disk and is not Ready for a
				// long time: nothing of store 12 is released.
				w.clock.Step(time.Hour)
				w.restartPod(testNow.Add(time.Minute), false)
				w.storeAt(12, "Up", testNow.Add(2*time.Minute))
				require.NoError(t, w.sync())
				require.Empty(t, w.claimDeletes())
				require.Zero(t, w.podDeletes())
			})
		}
	}
}

func TestSync_AStoreIDLabelNamingAnotherPodsStoreIsNotConfirmed(t *testing.T) {
	objs := tikvObjects(true)
	objs[3].(*corev1.Pod).Labels[labelStoreID] = "1" // demo-tikv-0's store
	w := newWorld(t, objs...)
	w.pd.mu.Lock()
	delete(w.pd.stores, 7)
	w.pd.mu.Unlock()
	require.NoError(t, w.sync())
	require.False(t, provisioner.Owned(w.pv()))
}

func TestSync_ReleaseIsRefusedWhileALiveStoreAdvertisesTheOwnerPodsAddress(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	// A record written wrongly (e.g. by an older version): store 7 is
	// Tombstone, but store 12 at the same pod's address is alive, and no
	// other disk records store 12.
	w.pd.set(7, "Tombstone")
	w.storeAt(12, "Up", testNow)
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
	require.Contains(t, w.events(), "store 12")
	require.Equal(t, 1.0, testutilValue(w.c.metrics.refusals.WithLabelValues("live-store-at-address")))

	// Once another disk records store 12, its data is accounted for.
	other := tikvObjects(false)[0].(*corev1.PersistentVolume).DeepCopy()
	other.Name, other.UID = "tlpv-node-b-disk0-abcdef01", "pv-2"
	other.Spec.ClaimRef = &corev1.ObjectReference{Namespace: ns, Name: "tikv-demo-tikv-3-new", UID: "claim-2"}
	rec := provisioner.Ownership{Component: ComponentTiKV, Claim: "claim-2", StoreID: 12, ClusterID: testClusterID, State: "Up"}
	for k, v := range rec.Annotations() {
		if v != "" {
			other.Annotations[k] = v
		}
	}
	_, err := w.client.CoreV1().PersistentVolumes().Create(w.ctx, other, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
}

func TestSync_AnotherClustersPDIsUnknownAndNamesBothIDs(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	require.Equal(t, "7714128303309438701", w.pv().Annotations[provisioner.AnnPDClusterID], "the cluster ID is recorded exactly (it exceeds 2^53)")
	w.removePod()
	// PD is rebuilt with a new cluster ID and one fresh store (or the
	// template resolves to another cluster's PD): store 7 is not there.
	w.pd.mu.Lock()
	w.pd.cluster = 42
	w.pd.stores = map[uint64]pd.StoreInfo{1: {ID: 1, Address: "demo-tikv-0.demo-tikv-peer.tidb.svc:20160", StateName: "Up", LastHeartbeat: testNow}}
	w.pd.mu.Unlock()
	w.clock.Step(time.Hour)
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
	ev := w.events()
	require.Contains(t, ev, "42")
	require.Contains(t, ev, "7714128303309438701")
	require.Equal(t, 1.0, testutilValue(w.c.metrics.refusals.WithLabelValues(unknownCluster)))
}

func TestSync_AStoreThatVanishesWithoutBeingSeenBuriedIsNotGone(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	// pd-recover brings the stores back one by one: store 7 (last seen Up)
	// is not listed yet, store 1 is.
	w.pd.mu.Lock()
	delete(w.pd.stores, 7)
	w.pd.mu.Unlock()
	w.clock.Step(time.Hour)
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
	require.Contains(t, w.events(), "last seen Up")
	require.Equal(t, 1.0, testutilValue(w.c.metrics.refusals.WithLabelValues(unknownVanished)))

	// Seen Offline, then gone: buried and dropped since, or lost by
	// pd-recover while still draining — PD no longer tells which.
	w.storeAt(7, "Offline", testNow)
	require.NoError(t, w.sync())
	require.Equal(t, "Offline", w.pv().Annotations[provisioner.AnnOwnerState])
	w.pd.mu.Lock()
	delete(w.pd.stores, 7)
	w.pd.mu.Unlock()
	require.NoError(t, w.sync())
	require.Empty(t, w.claimDeletes())
	require.Contains(t, w.events(), "still draining")

	// Seen buried, then dropped (remove-tombstone): gone.
	w.storeAt(7, "Tombstone", testNow)
	require.NoError(t, w.sync())
	require.Equal(t, "Tombstone", w.pv().Annotations[provisioner.AnnOwnerState])
	w.pd.mu.Lock()
	delete(w.pd.stores, 7)
	w.pd.mu.Unlock()
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
}

func TestSync_AnApprovedReleasedPVSetBackToRetainIsRecycled(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	w.pd.set(7, "Tombstone")
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
	// TiDB Operator patches its pvReclaimPolicy back while the claim goes.
	pv := w.pv()
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	pv.Status.Phase = corev1.VolumeReleased
	pv, err := w.client.CoreV1().PersistentVolumes().Update(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	_, err = w.client.CoreV1().PersistentVolumes().UpdateStatus(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.sync())
	require.Equal(t, corev1.PersistentVolumeReclaimDelete, w.pv().Spec.PersistentVolumeReclaimPolicy)
}

func TestSync_ARetainPVWithoutApprovalIsNeverSetToDelete(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.removePod()
	pv := w.pv()
	pv.Status.Phase = corev1.VolumeReleased
	// A forged approval for another claim does not count.
	pv.Annotations[provisioner.AnnReleaseApproved] = "some-other-claim"
	_, err := w.client.CoreV1().PersistentVolumes().UpdateStatus(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.sync())
	require.Equal(t, corev1.PersistentVolumeReclaimRetain, w.pv().Spec.PersistentVolumeReclaimPolicy)
	require.Contains(t, w.events(), "keeps its data")
}

func TestSync_ATiKVClaimWhoseOwnerStaysUnknownIsNeverSetToDeleteAndIsReported(t *testing.T) {
	objs := tikvObjects(true)
	objs[1].(*corev1.PersistentVolumeClaim).CreationTimestamp = metav1.NewTime(testNow)
	w := newWorld(t, objs...)
	w.c.cfg.Policy.UnresolvedGrace = 5 * time.Minute
	// The pod's store never registers (wrong endpoint, PD refusing it).
	w.pd.mu.Lock()
	delete(w.pd.stores, 7)
	w.pd.mu.Unlock()
	require.NoError(t, w.sync())
	require.NotContains(t, w.events(), ReasonRefused)
	w.clock.Step(time.Hour)
	require.NoError(t, w.sync())
	require.Contains(t, w.events(), "no tikv owner confirmed")
	require.Equal(t, corev1.PersistentVolumeReclaimRetain, w.pv().Spec.PersistentVolumeReclaimPolicy)

	// The claim is deleted: still Retain, still its data.
	w.removePod()
	pv := w.pv()
	pv.Status.Phase = corev1.VolumeReleased
	_, err := w.client.CoreV1().PersistentVolumes().UpdateStatus(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.sync())
	require.Equal(t, corev1.PersistentVolumeReclaimRetain, w.pv().Spec.PersistentVolumeReclaimPolicy)
	require.Contains(t, w.events(), "no owner was ever confirmed")
}

func TestSync_APlainClaimsPVIsSetToDeleteOnlyAfterAFreshLookAtItsPods(t *testing.T) {
	plainWorld := func(t *testing.T, podLabels map[string]string) *world {
		objs := tikvObjects(false)
		objs[1].(*corev1.PersistentVolumeClaim).Labels = nil
		pod := tikvPod("web-uid", true)
		pod.Name, pod.Labels, pod.OwnerReferences = "web-0", podLabels, nil
		return newWorld(t, append(objs, pod)...)
	}
	t.Run("a web server's claim recycles", func(t *testing.T) {
		w := plainWorld(t, map[string]string{"app": "web"})
		require.NoError(t, w.sync())
		require.Equal(t, corev1.PersistentVolumeReclaimDelete, w.pv().Spec.PersistentVolumeReclaimPolicy)
		require.Contains(t, w.events(), ReasonReclaimDelete)
	})
	for name, lbl := range map[string]map[string]string{
		"v1 labels": {labelComponent: "tikv"},
		"v2 labels": {"pingcap.com/component": "tikv"},
	} {
		t.Run("an unlabelled claim used by a TiKV pod with "+name+" stays Retain", func(t *testing.T) {
			w := plainWorld(t, lbl)
			// The pod cache has not seen the pod (v2 labels are not cached;
			// a v1 pod may be late): only the fresh list tells.
			require.NoError(t, w.c.podInf.GetIndexer().Delete(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0"}}))
			require.NoError(t, w.c.sync(w.ctx, pvName))
			require.Equal(t, corev1.PersistentVolumeReclaimRetain, w.pv().Spec.PersistentVolumeReclaimPolicy)
		})
	}
	t.Run("a claim no pod uses yet stays Retain", func(t *testing.T) {
		objs := tikvObjects(false)
		objs[1].(*corev1.PersistentVolumeClaim).Labels = nil
		w := newWorld(t, objs...)
		require.NoError(t, w.sync())
		require.Equal(t, corev1.PersistentVolumeReclaimRetain, w.pv().Spec.PersistentVolumeReclaimPolicy)
	})
}

func TestSync_APDMemberUnderOperatorV2IsMatchedByMemberIDThenInstanceName(t *testing.T) {
	objs := tikvObjects(true)
	pvc := objs[1].(*corev1.PersistentVolumeClaim)
	pod := objs[3].(*corev1.Pod)
	for _, l := range []map[string]string{pvc.Labels, pod.Labels} {
		l[labelComponent] = "pd"
		l[labelV2Instance] = "demo-7axwci"
	}
	pod.Labels[labelMemberID] = "202"
	w := newWorld(t, objs...)
	// v2: named after the instance, not the pod; its URLs name the pod.
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 101, ns), pdMember("demo-7axwci", 202, ns), pdMember("demo-x1", 303, ns)}
	w.pd.members[1].ClientURLs = []string{"http://" + podN + ".demo-pd-peer." + ns + ":2379"}
	w.pd.members[1].PeerURLs = []string{"http://" + podN + ".demo-pd-peer." + ns + ":2380"}
	require.NoError(t, w.sync())
	pv := w.pv()
	require.Equal(t, "demo-7axwci", pv.Annotations[provisioner.AnnPDMember])
	require.Equal(t, "202", pv.Annotations[provisioner.AnnPDMemberID])
	require.Equal(t, "101,202,303", pv.Annotations[provisioner.AnnPDPeers])

	// Removed from a membership that carries on: released.
	w.removePod()
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 101, ns), pdMember("demo-x1", 303, ns)}
	require.NoError(t, w.sync())
	require.Len(t, w.claimDeletes(), 1)
}

func TestSync_APDMemberIDLabelForAnotherMemberIsNotConfirmed(t *testing.T) {
	objs := tikvObjects(true)
	for _, l := range []map[string]string{objs[1].(*corev1.PersistentVolumeClaim).Labels, objs[3].(*corev1.Pod).Labels} {
		l[labelComponent] = "pd"
	}
	objs[3].(*corev1.Pod).Labels[labelMemberID] = "101"
	w := newWorld(t, objs...)
	w.pd.members = []pd.Member{pdMember("demo-pd-0", 101, ns)}
	require.NoError(t, w.sync())
	require.False(t, provisioner.Owned(w.pv()))
}

var _ = runtime.Object(nil)
var _ = k8stesting.Action(nil)

func TestConfirmMember_OnlyAMemberWhoseURLsNameTheReadyPodIsItsOwn(t *testing.T) {
	v1 := owner{Component: ComponentPD, Cluster: "demo", Pod: "demo-pd-1", Namespace: "tidb", Ready: true, Labels: map[string]string{}}
	v2 := owner{Component: ComponentPD, Cluster: "basic", Pod: "basic-pd-7axwci", Namespace: "db", Ready: true,
		Labels: map[string]string{labelV2Cluster: "basic", labelV2Group: "pd", labelV2Instance: "basic-7axwci"}}
	member := func(name, host string) pd.Members {
		return pd.Members{Members: []pd.Member{{Name: name, MemberID: 9, ClientURLs: []string{"http://" + host + ":2379"}, PeerURLs: []string{"http://" + host + ":2380"}}}}
	}
	notReady := v1
	notReady.Ready = false
	for _, tc := range []struct {
		name    string
		o       owner
		members pd.Members
		want    bool
	}{
		{"v1: the pod's own URLs", v1, member("demo-pd-1", "demo-pd-1.demo-pd-peer.tidb.svc"), true},
		{"v1: a pod that is not Ready (its previous disk's member may be listed)", notReady, member("demo-pd-1", "demo-pd-1.demo-pd-peer.tidb.svc"), false},
		{"v1: another namespace's member of the same name", v1, member("demo-pd-1", "demo-pd-1.demo-pd-peer.staging.svc"), false},
		{"v1: another cluster's member of the same name", v1, member("demo-pd-1", "demo-pd-1.other-pd-peer.tidb.svc"), false},
		{"v1: URLs of addresses, naming no pod", v1, member("demo-pd-1", "10.0.0.7"), false},
		{"v2: named after the instance, URLs name the pod", v2, member("basic-7axwci", "basic-pd-7axwci.pd-pd-peer.db"), true},
		{"v2: ClusterSubdomain", v2, member("basic-7axwci", "basic-pd-7axwci.basic-cluster.db"), true},
		{"v2: the instance's name with another pod's URLs", v2, member("basic-7axwci", "basic-pd-zzzzzz.pd-pd-peer.db"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, why := confirmMember(tc.o, tc.members)
			require.Equal(t, tc.want, why == "", why)
		})
	}
}

// Found by the v2 scale-in e2e: v2 buries the store, then deletes the
// claim, within the PD cache's lifetime. Judged on the answer cached before
// the claim went, the controller warned that the store was Up.
func TestSync_AReleasedPVIsJudgedOnAPDAnswerYoungerThanTheRelease(t *testing.T) {
	w := newWorld(t, tikvObjects(true)...)
	w.recordOwner()
	w.c.pd = newPDView(func(string) (PD, error) { return w.pd, nil }, 30*time.Second, w.clock)
	w.removePod()
	require.NoError(t, w.c.sync(w.ctx, pvName)) // caches "store 7 Up"

	w.pd.set(7, "Tombstone")
	require.NoError(t, w.client.CoreV1().PersistentVolumeClaims(ns).Delete(w.ctx, pvcName, metav1.DeleteOptions{}))
	pv := w.pv()
	pv.Status.Phase = corev1.VolumeReleased
	pv.Status.LastPhaseTransitionTime = ptr.To(metav1.NewTime(w.clock.Now().Truncate(time.Second)))
	_, err := w.client.CoreV1().PersistentVolumes().UpdateStatus(w.ctx, pv, metav1.UpdateOptions{})
	require.NoError(t, err)
	w.waitCaches()
	w.events() // what came before
	require.NoError(t, w.c.sync(w.ctx, pvName))
	require.NotContains(t, w.events(), "is Up in PD", "no false alarm from an answer older than the release")
	require.Equal(t, string(w.pv().Spec.ClaimRef.UID), w.pv().Annotations[provisioner.AnnReleaseApproved], "the wipe is approved at once")
}
