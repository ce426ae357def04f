package provisioner

import (
	"context"
	"errors"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"
)

// fakeRecycler records the PVs it is asked to wipe.
type fakeRecycler struct {
	mu    sync.Mutex
	calls []*corev1.PersistentVolume
	err   error
}

func (r *fakeRecycler) Recycle(_ context.Context, pv *corev1.PersistentVolume) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, pv.DeepCopy())
	return r.err
}

// releasedPV is a PV of node-a the informer saw as Released, ready to wipe.
func releasedPV(t *testing.T) *corev1.PersistentVolume {
	t.Helper()
	pv, err := RenderPV(testDisk(), Identity{ID: "fs-0123456789abcdef01234567"}, Node{Name: "node-a"}, testClass(nil))
	require.NoError(t, err)
	pv.UID = "uid-1"
	pv.ResourceVersion = "7"
	pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "db", Name: "tikv-tikv-0", UID: "claim-uid"}
	pv.Status.Phase = corev1.VolumeReleased
	return pv
}

func TestShouldDelete_KeepsEachAgentToOurPVsOfItsOwnNode(t *testing.T) {
	p := &Provisioner{Node: "node-a"}
	cases := []struct {
		name   string
		change func(*corev1.PersistentVolume)
		want   bool
	}{
		{"our PV of this node", func(*corev1.PersistentVolume) {}, true},
		{"our PV of another node", func(pv *corev1.PersistentVolume) { pv.Labels[LabelNode] = "node-b" }, false},
		{"same hostname label but another node", func(pv *corev1.PersistentVolume) {
			pv.Labels[LabelNode] = "node-b"
			pv.Labels[LabelHostname] = "node-a"
		}, false},
		{"not ours", func(pv *corev1.PersistentVolume) { delete(pv.Annotations, AnnProvisionedBy) }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pv := releasedPV(t)
			c.change(pv)
			require.Equal(t, c.want, p.ShouldDelete(context.Background(), pv))
		})
	}
}

// TestDelete_RechecksAFreshReadAndIgnoresEveryPVItMustNotWipe: the library
// hands Delete its informer copy; each way that copy can be wrong, or the PV
// can have changed since, must end in IgnoredError (the library then leaves
// the PV alone) without the recycler ever being asked to wipe.
func TestDelete_RechecksAFreshReadAndIgnoresEveryPVItMustNotWipe(t *testing.T) {
	cases := []struct {
		name string
		// seen turns the informer copy into the trick.
		seen func(*corev1.PersistentVolume)
		// fresh is what the API server holds now; nil means the PV is gone.
		fresh func(*corev1.PersistentVolume) *corev1.PersistentVolume
		// wantGet says whether Delete had to read the API to refuse.
		wantGet bool
		reason  string
	}{
		{
			name: "PV of another node",
			seen: func(pv *corev1.PersistentVolume) { pv.Labels[LabelNode] = "node-b" },
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				return pv
			},
			reason: "not a tidb-localpv disk of node node-a",
		},
		{
			name: "PV not ours",
			seen: func(pv *corev1.PersistentVolume) { pv.Annotations[AnnProvisionedBy] = "someone-else" },
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				return pv
			},
			reason: "not a tidb-localpv disk",
		},
		{
			name: "UID changed between the informer copy and the fresh read",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.UID = "uid-2"
				return pv
			},
			wantGet: true,
			reason:  "was replaced",
		},
		{
			name: "a live store's claim deleted by hand: no approval from the volume-controller",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Annotations[AnnOwnerClaim] = "claim-uid"
				pv.Annotations[AnnStoreID] = "7"
				return pv
			},
			wantGet: true,
			reason:  "TiKV store 7",
		},
		{
			name: "approval given for an earlier claim of the same PV",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Annotations[AnnOwnerClaim] = "claim-uid"
				pv.Annotations[AnnPDMember] = "pd-2"
				pv.Annotations[AnnReleaseApproved] = "an-older-claim"
				return pv
			},
			wantGet: true,
			reason:  "PD member pd-2",
		},
		{
			// Found by the model check (seed 1796124631107204942): the
			// controller recorded PD member 1001, the node died before its
			// agent kept the record, a person stripped part of it, and TiDB
			// Operator set the PV to Delete after scaling the member in.
			name: "an ownership record stripped in part, no approval",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Annotations[AnnOwnerPod] = "tidb/demo-pd-1"
				pv.Annotations[AnnPDMemberID] = "1001"
				pv.Annotations[AnnPDPeers] = "1001,1004"
				pv.Annotations[AnnOwnerSeen] = "2026-11-22T06:08:48Z"
				return pv
			},
			wantGet: true,
			reason:  "part of an ownership record (tidb-localpv.io/pd-member-id, tidb-localpv.io/pd-peers)",
		},
		{
			name: "an ownership record of another claim than the PV's, no approval",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Annotations[AnnOwnerPod] = "tidb/demo-tikv-1"
				pv.Annotations[AnnOwnerClaim] = "an-older-claim"
				pv.Annotations[AnnStoreID] = "7"
				pv.Annotations[AnnPDClusterID] = "7714128303309438786"
				return pv
			},
			wantGet: true,
			reason:  "part of an ownership record",
		},
		{
			name: "re-bound since: no longer Released",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Status.Phase = corev1.VolumeBound
				return pv
			},
			wantGet: true,
			reason:  "is Bound, not Released",
		},
		{
			name: "made Available again since",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Spec.ClaimRef = nil
				pv.Status.Phase = corev1.VolumeAvailable
				return pv
			},
			wantGet: true,
			reason:  "not Released",
		},
		{
			name: "reclaimPolicy changed to Retain",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
				return pv
			},
			wantGet: true,
			reason:  "reclaimPolicy Retain",
		},
		{
			name: "disk label changed",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Labels[LabelDisk] = "fs-ffffffffffffffffffffffff"
				return pv
			},
			wantGet: true,
			reason:  "changed node or disk labels",
		},
		{
			name: "node label changed",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				pv.Labels[LabelNode] = "node-b"
				return pv
			},
			wantGet: true,
			reason:  "changed node or disk labels",
		},
		{
			name: "PV being deleted",
			fresh: func(pv *corev1.PersistentVolume) *corev1.PersistentVolume {
				now := metav1.Now()
				pv.DeletionTimestamp = &now
				pv.Finalizers = []string{"kubernetes.io/pv-protection"}
				return pv
			},
			wantGet: true,
			reason:  "is being deleted",
		},
		{
			name:    "PV gone",
			fresh:   func(*corev1.PersistentVolume) *corev1.PersistentVolume { return nil },
			wantGet: true,
			reason:  "already gone",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seen := releasedPV(t)
			if c.seen != nil {
				c.seen(seen)
			}
			var objs []runtime.Object
			if fresh := c.fresh(releasedPV(t)); fresh != nil {
				objs = append(objs, fresh)
			}
			client := fake.NewClientset(objs...)
			rec := &fakeRecycler{}
			p := &Provisioner{Node: "node-a", Client: client, Recycler: rec}

			err := p.Delete(context.Background(), seen)

			var ignored *controller.IgnoredError
			require.ErrorAs(t, err, &ignored)
			require.IsType(t, &controller.IgnoredError{}, err, "the library type-asserts, so the IgnoredError must not be wrapped")
			require.Contains(t, ignored.Reason, c.reason)
			require.Empty(t, rec.calls, "the recycler must not be asked to wipe")
			require.Equal(t, c.wantGet, len(client.Actions()) > 0)
			for _, a := range client.Actions() {
				require.Equal(t, "get", a.GetVerb(), "Delete itself writes nothing; the library deletes the PV")
			}
		})
	}
}

func TestDelete_WipesAReleasedPVOnceWithTheFreshObject(t *testing.T) {
	seen := releasedPV(t)
	fresh := releasedPV(t)
	fresh.ResourceVersion = "8"
	fresh.Annotations["example.com/touched"] = "after the informer copy"
	client := fake.NewClientset(fresh)
	rec := &fakeRecycler{}
	p := &Provisioner{Node: "node-a", Client: client, Recycler: rec}

	err := p.Delete(context.Background(), seen)
	// The PV is deleted here, with a UID precondition, and the library told
	// there is nothing left to do.
	require.ErrorAs(t, err, new(*controller.IgnoredError))
	var deleted bool
	for _, a := range client.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok {
			deleted = true
			require.Equal(t, types.UID("uid-1"), *d.GetDeleteOptions().Preconditions.UID)
		}
	}
	require.True(t, deleted)
	_, gerr := client.CoreV1().PersistentVolumes().Get(context.Background(), fresh.Name, metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(gerr))

	require.Len(t, rec.calls, 1)
	require.Equal(t, "after the informer copy", rec.calls[0].Annotations["example.com/touched"], "the recycler gets the fresh read, not the informer copy")
	require.Equal(t, types.UID("uid-1"), rec.calls[0].UID)
}

// The controller notes who uses a claim before PD confirms an owner (and
// keeps only that for a plain claim): that alone is no record.
func TestDelete_WipesAPVThatNamesOnlyThePodUsingItsClaim(t *testing.T) {
	pv := releasedPV(t)
	pv.Annotations[AnnOwnerPod] = "default/web-0"
	rec := &fakeRecycler{}
	p := &Provisioner{Node: "node-a", Client: fake.NewClientset(pv), Recycler: rec}
	err := p.Delete(context.Background(), pv)
	require.ErrorAs(t, err, new(*controller.IgnoredError))
	require.Len(t, rec.calls, 1)
}

func TestDelete_WipesAnOwnedDiskOnceTheVolumeControllerApprovedItsClaim(t *testing.T) {
	pv := releasedPV(t)
	pv.Annotations[AnnOwnerClaim] = "claim-uid"
	pv.Annotations[AnnStoreID] = "7"
	pv.Annotations[AnnReleaseApproved] = "claim-uid"
	rec := &fakeRecycler{}
	p := &Provisioner{Node: "node-a", Client: fake.NewClientset(pv), Recycler: rec}
	err := p.Delete(context.Background(), pv)
	require.ErrorContains(t, err, "disk wiped")
	require.Len(t, rec.calls, 1)
}

func TestDelete_ReturnsTheRecyclersFailureSoTheLibraryRetries(t *testing.T) {
	client := fake.NewClientset(releasedPV(t))
	rec := &fakeRecycler{err: errors.New("disk busy")}
	p := &Provisioner{Node: "node-a", Client: client, Recycler: rec}

	err := p.Delete(context.Background(), releasedPV(t))

	require.ErrorContains(t, err, "disk busy")
	require.NotErrorAs(t, err, new(*controller.IgnoredError))
	require.Len(t, rec.calls, 1)
}

func TestDelete_DoesNotWipeWhenTheFreshReadFails(t *testing.T) {
	client := fake.NewClientset(releasedPV(t))
	client.PrependReactor("get", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("apiserver unreachable")
	})
	rec := &fakeRecycler{}
	p := &Provisioner{Node: "node-a", Client: client, Recycler: rec}

	err := p.Delete(context.Background(), releasedPV(t))

	require.ErrorContains(t, err, "apiserver unreachable")
	require.NotErrorAs(t, err, new(*controller.IgnoredError), "an unknown state is retried, not dropped")
	require.Empty(t, rec.calls)
}

func TestProvision_IsAlwaysIgnored(t *testing.T) {
	p := &Provisioner{Node: "node-a"}
	pv, _, err := p.Provision(context.Background(), controller.ProvisionOptions{})
	require.Nil(t, pv)
	require.IsType(t, &controller.IgnoredError{}, err)
}
