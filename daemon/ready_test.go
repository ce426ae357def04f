package daemon

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

func TestReady_AfterOneFullPassEvenWhenOneDiskFails(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	good := h.newDisk("good")
	bad := h.newDisk("bad")
	// The API refuses the PV of one disk, every time: a disk that cannot be
	// published must not keep the whole node's agent unready.
	h.client.PrependReactor("create", "persistentvolumes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pv := a.(k8stesting.CreateAction).GetObject().(*corev1.PersistentVolume)
		if pv.Spec.Local != nil && pv.Spec.Local.Path == bad {
			return true, nil, errors.New("admission webhook denied the request")
		}
		return false, nil, nil
	})
	require.False(t, h.agent.Ready(), "not ready before the first pass")

	require.Error(t, h.reconcile(), "the failing disk is retried")
	require.True(t, h.agent.Ready(), "one full pass is done")
	require.Error(t, h.reconcile())
	require.True(t, h.agent.Ready(), "readiness does not flap with the failing disk")

	var published []string
	for _, pv := range h.apiPVs() {
		published = append(published, pv.Spec.Local.Path)
		require.Equal(t, testNode, pv.Labels[provisioner.LabelNode])
	}
	require.Equal(t, []string{good}, published, "the good disk is published")
}

func TestReady_NotAfterAPassThatCouldNotScanTheNode(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.newDisk("disk0")
	h.agent.scanner.Mounts = unreadableMounts{}

	require.Error(t, h.reconcile())
	require.False(t, h.agent.Ready(), "a pass that saw no disk at all is not a full pass")

	h.agent.scanner.Mounts = h.mounts
	h.mustReconcile()
	require.True(t, h.agent.Ready())
}

// unreadableMounts is a mount table that cannot be read.
type unreadableMounts struct{}

func (unreadableMounts) Mounts() ([]discovery.Mount, error) {
	return nil, errors.New("read /proc/self/mountinfo: input/output error")
}
