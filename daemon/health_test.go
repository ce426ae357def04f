package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// fakeHost is what a health check reads, as the test sets it: the disk at
// each path is an ext4 filesystem on loop3 (7:3) unless told otherwise.
type fakeHost struct {
	mu      sync.Mutex
	mounts  map[string]discovery.MountState
	devices map[[2]int]discovery.BlockDevice
	ext4    map[string]discovery.Ext4Errors
	usage   map[string]discovery.Usage
	rootErr map[string]error
	smart   map[string]discovery.SmartReport
	// hang, when set, blocks every statfs until closed.
	hang chan struct{}
}

func newFakeHost() *fakeHost {
	return &fakeHost{
		mounts: map[string]discovery.MountState{}, devices: map[[2]int]discovery.BlockDevice{},
		ext4: map[string]discovery.Ext4Errors{}, usage: map[string]discovery.Usage{},
		rootErr: map[string]error{}, smart: map[string]discovery.SmartReport{},
	}
}

func (f *fakeHost) source() healthSource {
	return healthSource{
		mounts: func() (map[string]discovery.MountState, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			out := map[string]discovery.MountState{}
			for k, v := range f.mounts {
				out[k] = v
			}
			return out, nil
		},
		blockDevice: func(major, minor int) (discovery.BlockDevice, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.devices[[2]int{major, minor}], nil
		},
		devNumber: func(string) (int, int, error) { return 0, 0, os.ErrNotExist },
		ext4: func(name string) (discovery.Ext4Errors, bool, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			e, ok := f.ext4[name]
			return e, ok, nil
		},
		usage: func(path string) (discovery.Usage, error) {
			f.mu.Lock()
			hang := f.hang
			u := f.usage[path]
			f.mu.Unlock()
			if hang != nil {
				<-hang
			}
			return u, nil
		},
		rootAlive: func(path string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.rootErr[path]
		},
		smart: func(_ context.Context, dev string) (discovery.SmartReport, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.smart[dev], nil
		},
		mountInstance: func(_ string, id int) string { return fmt.Sprintf("boot-1/%d", id) },
	}
}

func (f *fakeHost) set(fn func(f *fakeHost)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// healthHarness is the LocalDisk harness with one ext4 disk on loop3 and
// a fake host under its health checks.
type healthHarness struct {
	*diskHarness
	host *fakeHost
	disk string
}

func newHealthHarness(t *testing.T, hc harnessConfig) *healthHarness {
	h := newDiskHarness(t, hc)
	host := newFakeHost()
	h.agent.health.src = host.source()
	disk := filepath.Join(h.root, "disk0")
	require.NoError(t, os.MkdirAll(disk, 0o755))
	h.mounts.add(disk, "/dev/loop3", "ext4")
	host.mounts[disk] = discovery.MountState{ID: 100, Source: "/dev/loop3", FSType: "ext4", Major: 7, Minor: 3}
	host.devices[[2]int{7, 3}] = discovery.BlockDevice{Name: "loop3", Present: true, Sectors: 1 << 20, Physical: true}
	host.ext4["loop3"] = discovery.Ext4Errors{}
	host.usage[disk] = discovery.Usage{BytesPercent: 10, InodesPercent: 1, InodesKnown: true}
	return &healthHarness{diskHarness: h, host: host, disk: disk}
}

func (h *healthHarness) pvName() string {
	h.t.Helper()
	return provisioner.PVName(testNode, "disk0", h.marker(h.disk).ID)
}

// bind binds the disk's PV to a claim, as the PV binder would.
func (h *healthHarness) bind() *corev1.PersistentVolume {
	h.t.Helper()
	pv := h.apiPV(h.pvName())
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "tikv-db-tikv-0", UID: "claim-uid"}
	pv.Status.Phase = corev1.VolumeBound
	h.updatePV(pv)
	return pv
}

func (h *healthHarness) pvHealth() provisioner.Health {
	h.t.Helper()
	got, _, err := provisioner.HealthOf(h.apiPV(h.pvName()))
	require.NoError(h.t, err)
	return got
}

func (h *healthHarness) eventsOn(reason, pv string) []recordedEvent {
	var out []recordedEvent
	for _, e := range h.events.withReason(reason) {
		if p, ok := e.Object.(*corev1.PersistentVolume); ok && p.Name == pv {
			out = append(out, e)
		}
	}
	return out
}

func TestHealth_EachFaultIsReadAsItsStateAndReason(t *testing.T) {
	eio := fmt.Errorf("stat: %w", unix.EIO)
	tests := []struct {
		name   string
		fault  func(f *fakeHost, disk string)
		state  provisioner.HealthState
		reason string
		says   string
	}{
		{"healthy", func(*fakeHost, string) {}, provisioner.HealthHealthy, "", ""},
		{"remounted read-only", func(f *fakeHost, d string) {
			m := f.mounts[d]
			m.ReadOnly, m.Options = true, "mount option ro"
			f.mounts[d] = m
		}, provisioner.HealthFailed, HealthReadOnly, "mount option ro"},
		{"ext4 emergency read-only keeps rw in the mount options", func(f *fakeHost, d string) {
			m := f.mounts[d]
			m.ReadOnly, m.Options = true, "superblock option emergency_ro"
			f.mounts[d] = m
		}, provisioner.HealthFailed, HealthReadOnly, "emergency_ro"},
		{"device gone from sysfs", func(f *fakeHost, _ string) {
			f.devices[[2]int{7, 3}] = discovery.BlockDevice{}
		}, provisioner.HealthFailed, HealthDeviceGone, "gone"},
		{"device without medium", func(f *fakeHost, _ string) {
			f.devices[[2]int{7, 3}] = discovery.BlockDevice{Name: "loop3", Present: true}
		}, provisioner.HealthFailed, HealthDeviceGone, "size 0"},
		{"filesystem shut down answers EIO", func(f *fakeHost, d string) { f.rootErr[d] = eio }, provisioner.HealthFailed, HealthFilesystemShutdown, "shut down"},
		{"ext4 errors recorded before we watched", func(f *fakeHost, _ string) {
			f.ext4["loop3"] = discovery.Ext4Errors{Count: 2, FirstFunc: "ext4_lookup"}
		}, provisioner.HealthWarning, HealthErrorsRecorded, "e2fsck"},
		{"nearly full", func(f *fakeHost, d string) {
			f.usage[d] = discovery.Usage{BytesPercent: 93, InodesKnown: true}
		}, provisioner.HealthWarning, HealthCapacityLow, "93% full"},
		{"out of inodes", func(f *fakeHost, d string) {
			f.usage[d] = discovery.Usage{BytesPercent: 5, InodesPercent: 97, InodesKnown: true}
		}, provisioner.HealthWarning, HealthInodesLow, "97%"},
		{"SMART failing", func(f *fakeHost, _ string) {
			f.smart["/dev/loop3"] = discovery.SmartReport{Known: true, Failing: true}
		}, provisioner.HealthFailed, HealthSMARTFailing, "FAILED"},
		{"NVMe media read-only", func(f *fakeHost, _ string) {
			f.smart["/dev/loop3"] = discovery.SmartReport{Known: true, CriticalWarning: discovery.NVMeReadOnly}
		}, provisioner.HealthFailed, HealthNVMeCritical, "read-only mode"},
		{"NVMe too hot is a warning", func(f *fakeHost, _ string) {
			f.smart["/dev/loop3"] = discovery.SmartReport{Known: true, CriticalWarning: discovery.NVMeTemperature}
		}, provisioner.HealthWarning, HealthSMARTWarning, "temperature"},
		{"a device gone explains a read-only mount", func(f *fakeHost, d string) {
			m := f.mounts[d]
			m.ReadOnly = true
			f.mounts[d] = m
			f.devices[[2]int{7, 3}] = discovery.BlockDevice{}
		}, provisioner.HealthFailed, HealthDeviceGone, "read-only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHealthHarness(t, harnessConfig{})
			h.host.set(func(f *fakeHost) { tt.fault(f, h.disk) })
			h.pass()
			h.pass()

			ld := h.disks()[h.disk]
			require.NotNil(t, ld.Status.Health)
			require.Equal(t, string(tt.state), ld.Status.Health.State)
			require.Equal(t, tt.reason, ld.Status.Health.Reason)
			require.Contains(t, ld.Status.Health.Message, tt.says)
			if tt.state == provisioner.HealthFailed {
				require.Equal(t, v1alpha1.PhaseFailed, ld.Status.Phase, "a failed disk's phase is Failed")
				require.Equal(t, tt.reason, ld.Status.Reason, "with the health reason")
			}
			require.Equal(t, map[string]float64{string(tt.state): 1}, h.healthGauge())
		})
	}
}

func TestHealth_AReadOnlyBoundDiskIsReportedOnItsPVAndRecoversWhenRemountedReadWrite(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	h.bind()
	h.pass()
	require.NotContains(t, h.apiPV(name).Annotations, provisioner.AnnHealth, "a disk that was never unhealthy gets no annotation")

	h.host.set(func(f *fakeHost) {
		m := f.mounts[h.disk]
		m.ReadOnly, m.Options = true, "superblock option emergency_ro"
		f.mounts[h.disk] = m
	})
	h.clock.Step(time.Second)
	h.pass()

	got := h.pvHealth()
	require.Equal(t, provisioner.HealthFailed, got.State)
	require.Equal(t, HealthReadOnly, got.Reason)
	require.Equal(t, h.clock.Now().UTC().Truncate(time.Second), got.Since)
	abnormal := h.eventsOn(provisioner.ReasonVolumeConditionAbnormal, name)
	require.Len(t, abnormal, 1)
	require.Equal(t, corev1.EventTypeWarning, abnormal[0].Type)
	require.Contains(t, abnormal[0].Message, "emergency_ro")
	require.Contains(t, h.apiPVs(), name, "a bound PV stays")
	ld := h.disks()[h.disk]
	require.Equal(t, v1alpha1.PhaseFailed, ld.Status.Phase)
	require.Equal(t, "db/tikv-db-tikv-0", ld.Status.Claim)

	h.client.ClearActions()
	h.pass()
	require.Empty(t, h.writes(), "a standing condition is written once")
	require.Len(t, h.eventsOn(provisioner.ReasonVolumeConditionAbnormal, name), 1)
	h.clock.Step(repeatStanding)
	h.pass()
	require.Len(t, h.eventsOn(provisioner.ReasonVolumeConditionAbnormal, name), 2, "re-emitted while it lasts")

	// The operator remounts it read-write (a new mount).
	h.host.set(func(f *fakeHost) {
		f.mounts[h.disk] = discovery.MountState{ID: 101, Source: "/dev/loop3", FSType: "ext4", Major: 7, Minor: 3}
	})
	h.pass()
	got = h.pvHealth()
	require.Equal(t, provisioner.HealthHealthy, got.State)
	require.Empty(t, got.Reason)
	require.NotContains(t, h.apiPV(name).Annotations, provisioner.AnnHealthMessage)
	normal := h.eventsOn(provisioner.ReasonVolumeConditionNormal, name)
	require.Len(t, normal, 1)
	require.Equal(t, corev1.EventTypeNormal, normal[0].Type)
	require.Equal(t, v1alpha1.PhaseBound, h.disks()[h.disk].Status.Phase)
}

func TestHealth_KernelIOErrorsStandUntilTheDiskIsReturnedToService(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	h.bind()
	h.pass()

	h.agent.kernelError(h.ctx, discovery.KernelError{Device: "loop9", Kind: discovery.KernelIOError, Text: "I/O error, dev loop9, sector 8"})
	h.pass()
	require.Equal(t, provisioner.HealthHealthy, h.pvHealth().State, "another device's errors are not this disk's")

	h.agent.kernelError(h.ctx, discovery.KernelError{Device: "loop3", Kind: discovery.KernelIOError, Text: "I/O error, dev loop3, sector 8"})
	h.pass()
	got := h.pvHealth()
	require.Equal(t, provisioner.HealthFailed, got.State)
	require.Equal(t, HealthIOErrors, got.Reason)
	require.Contains(t, got.Message, "sector 8")

	require.Len(t, h.eventsOn(provisioner.ReasonVolumeConditionAbnormal, name), 1)

	h.clock.Step(time.Hour)
	h.pass()
	require.Equal(t, provisioner.HealthFailed, h.pvHealth().State, "I/O errors do not fade: the device is suspect until someone checks it")
}

func TestHealth_ExtFourErrorsCountedWhileWatchingFailTheDiskUntilItIsMountedAnew(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	h.bind()
	h.pass()

	h.host.set(func(f *fakeHost) { f.ext4["loop3"] = discovery.Ext4Errors{Count: 1, LastFunc: "trigger_test_error"} })
	h.pass()
	got := h.pvHealth()
	require.Equal(t, provisioner.HealthFailed, got.State)
	require.Equal(t, HealthFilesystemErrors, got.Reason)
	require.Contains(t, got.Message, "trigger_test_error")

	h.pass()
	require.Equal(t, provisioner.HealthFailed, h.pvHealth().State, "the same mount: still failed")

	h.host.set(func(f *fakeHost) {
		f.mounts[h.disk] = discovery.MountState{ID: 200, Source: "/dev/loop3", FSType: "ext4", Major: 7, Minor: 3}
	})
	h.pass()
	got = h.pvHealth()
	require.Equal(t, provisioner.HealthWarning, got.State, "mounted anew without new errors: the record stays until e2fsck")
	require.Equal(t, HealthErrorsRecorded, got.Reason)

	h.host.set(func(f *fakeHost) { f.ext4["loop3"] = discovery.Ext4Errors{} })
	h.pass()
	require.Equal(t, provisioner.HealthHealthy, h.pvHealth().State, "e2fsck cleared the record")
}

func TestHealth_AFailedDisksUnboundPVIsWithdrawnAndItIsNotPublishedAgain(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	h.host.set(func(f *fakeHost) { f.rootErr[h.disk] = unix.EIO })
	h.pass()

	require.NotContains(t, h.apiPVs(), name, "no claim may bind a failed disk")
	del := deletesOf(h.writes(), name)
	require.Len(t, del, 1)
	pre := del[0].GetDeleteOptions().Preconditions
	require.NotNil(t, pre.UID)
	require.NotNil(t, pre.ResourceVersion)

	h.host.set(func(f *fakeHost) { f.rootErr[h.disk] = nil })
	h.pass()
	h.pass()
	require.NotContains(t, h.apiPVs(), name, "recovered, but out of service: not published again by itself")
	ld := h.disks()[h.disk]
	require.Equal(t, v1alpha1.PhaseFailed, ld.Status.Phase)
	require.Equal(t, HealthFilesystemShutdown, ld.Status.Reason)
	require.Contains(t, ld.Status.Message, provisioner.AnnReturnToService)
	require.Equal(t, string(provisioner.HealthHealthy), ld.Status.Health.State)
	require.NotEmpty(t, h.events.withReason(ReasonDiskOutOfService))
}

func deletesOf(writes []k8stesting.Action, name string) []k8stesting.DeleteActionImpl {
	var out []k8stesting.DeleteActionImpl
	for _, w := range writes {
		if d, ok := w.(k8stesting.DeleteActionImpl); ok && d.GetName() == name {
			out = append(out, d)
		}
	}
	return out
}

func TestHealth_AFailedDisksPVBoundSinceTheCacheSawItIsNotWithdrawn(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	h.host.set(func(f *fakeHost) { f.rootErr[h.disk] = unix.EIO })
	h.sync()
	// The binder binds it after the cache was read: the fresh read sees it.
	bound := h.apiPV(name)
	bound.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "tikv-db-tikv-0", UID: "claim-uid"}
	h.updatePV(bound)

	require.NoError(t, h.agent.reconcile(h.ctx))
	require.Contains(t, h.apiPVs(), name)
	require.Empty(t, deletesOf(h.writes(), name))
}

func TestHealth_AFailedDisksPVReplacedSinceTheFreshReadIsNotWithdrawn(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	h.host.set(func(f *fakeHost) { f.rootErr[h.disk] = unix.EIO })
	h.sync()
	// Between the fresh read and the delete, the PV changes: the
	// resourceVersion precondition refuses the delete.
	h.client.PrependReactor("delete", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(pvResource.GroupResource(), name, fmt.Errorf("precondition failed"))
	})
	require.NoError(t, h.agent.reconcile(h.ctx))
	require.Contains(t, h.apiPVs(), name)
}

func TestHealth_AReleasedFailedDiskIsNotWipedEvenAfterARestartUntilReturnedToService(t *testing.T) {
	base := t.TempDir()
	h := newHealthHarness(t, harnessConfig{base: base})
	h.pass()
	name := h.pvName()
	id := h.marker(h.disk).ID
	h.bind()
	h.pass()
	h.agent.kernelError(h.ctx, discovery.KernelError{Device: "loop3", Kind: discovery.KernelIOError, Text: "Buffer I/O error on dev loop3, logical block 9"})
	h.pass()
	writeFile(t, filepath.Join(h.disk, "db", "000001.sst"))

	// The agent restarts: a new one on the same state directory.
	h2 := newHealthHarness(t, harnessConfig{base: base, objects: []runtime.Object{h.apiPV(name)}})
	released := h2.release(name)
	p := &provisioner.Provisioner{Node: testNode, Client: h2.client, Recycler: h2.agent}
	err := p.Delete(h2.ctx, released)
	require.Error(t, err)
	require.Contains(t, err.Error(), "out of service")
	require.Contains(t, err.Error(), provisioner.AnnReturnToService)
	require.FileExists(t, filepath.Join(h.disk, "db", "000001.sst"), "not wiped")
	require.Contains(t, h2.apiPVs(), name)
	h2.pass()
	ld := h2.disks()[h2.disk]
	require.Equal(t, v1alpha1.PhaseFailed, ld.Status.Phase)
	require.Equal(t, HealthIOErrors, ld.Status.Reason)

	// The operator checked the disk and returns it.
	u, err := h2.dyn.Resource(v1alpha1.Resource).Get(h2.ctx, diskObjectName(testNode, "disk0", id), metav1.GetOptions{})
	require.NoError(t, err)
	u.SetAnnotations(map[string]string{provisioner.AnnReturnToService: "true"})
	_, err = h2.dyn.Resource(v1alpha1.Resource).Update(h2.ctx, u, metav1.UpdateOptions{})
	require.NoError(t, err)
	h2.pass()
	require.Len(t, h2.events.withReason(ReasonReturnedToService), 1)
	u, err = h2.dyn.Resource(v1alpha1.Resource).Get(h2.ctx, u.GetName(), metav1.GetOptions{})
	require.NoError(t, err)
	require.NotContains(t, u.GetAnnotations(), provisioner.AnnReturnToService, "the annotation is consumed")
	require.Equal(t, provisioner.HealthHealthy, h2.pvHealth().State)
	require.NotEmpty(t, h2.eventsOn(provisioner.ReasonVolumeConditionNormal, name))

	require.ErrorContains(t, p.Delete(h2.ctx, h2.release(name)), "wiped")
	require.NoFileExists(t, filepath.Join(h.disk, "db", "000001.sst"), "wiped once returned")
}

func TestHealth_ReturnToServiceIsRefusedWhileTheDiskStillReadsFailed(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	id := h.marker(h.disk).ID
	h.host.set(func(f *fakeHost) {
		m := f.mounts[h.disk]
		m.ReadOnly, m.Options = true, "mount option ro"
		f.mounts[h.disk] = m
	})
	h.pass()
	h.pass()
	u, err := h.dyn.Resource(v1alpha1.Resource).Get(h.ctx, diskObjectName(testNode, "disk0", id), metav1.GetOptions{})
	require.NoError(t, err)
	u.SetAnnotations(map[string]string{provisioner.AnnReturnToService: "true"})
	_, err = h.dyn.Resource(v1alpha1.Resource).Update(h.ctx, u, metav1.UpdateOptions{})
	require.NoError(t, err)
	h.client.ClearActions()
	h.pass()

	refused := h.events.withReason(ReasonReturnRefused)
	require.Len(t, refused, 1)
	require.Equal(t, corev1.EventTypeWarning, refused[0].Type)
	require.Contains(t, refused[0].Message, "read-only")
	require.Equal(t, u.GetName(), refused[0].Object.(*unstructured.Unstructured).GetName())
	oos, err := h.agent.outOfService(id)
	require.NoError(t, err)
	require.NotNil(t, oos, "still out of service")
	require.Empty(t, h.createActions(), "not published")
}

func TestHealth_AnUnreadableHealthRecordKeepsTheDiskOut(t *testing.T) {
	base := t.TempDir()
	h := newHealthHarness(t, harnessConfig{base: base})
	h.pass()
	name := h.pvName()
	id := h.marker(h.disk).ID
	require.NoError(t, os.MkdirAll(filepath.Join(base, "state", healthDir), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(base, "state", healthDir, id+".json"), []byte("{garbage"), 0o600))

	h2 := newHealthHarness(t, harnessConfig{base: base, objects: []runtime.Object{h.apiPV(name)}})
	released := h2.release(name)
	err := (&provisioner.Provisioner{Node: testNode, Client: h2.client, Recycler: h2.agent}).Delete(h2.ctx, released)
	require.ErrorContains(t, err, "health record")
}

func TestHealth_AHungStatfsIsUnresponsiveAndTheOtherDisksGoOn(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.agent.io.timeout = 200 * time.Millisecond
	other := h.newDisk("disk1")
	h.pass()
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	h.host.set(func(f *fakeHost) { f.hang = hang })
	h.pass()

	ld := h.disks()
	require.Equal(t, HealthUnresponsive, ld[h.disk].Status.Health.Reason)
	require.Equal(t, string(provisioner.HealthFailed), ld[h.disk].Status.Health.State)
	require.NotNil(t, ld[other])
	require.Equal(t, v1alpha1.PhaseAvailable, ld[other].Status.Phase, "a tmpfs disk without a device is not held up")
}

func TestHealth_TheBoundPVOfAMissingDiskIsFailedUntilTheDiskIsBack(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	h.bind()
	h.pass()

	h.mounts.remove(h.disk)
	h.pass()
	got := h.pvHealth()
	require.Equal(t, provisioner.HealthFailed, got.State)
	require.Equal(t, HealthDiskMissing, got.Reason)
	require.Len(t, h.eventsOn(provisioner.ReasonVolumeConditionAbnormal, name), 1)

	h.mounts.add(h.disk, "/dev/loop3", "ext4")
	h.pass()
	require.Equal(t, provisioner.HealthHealthy, h.pvHealth().State)
	require.Len(t, h.eventsOn(provisioner.ReasonVolumeConditionNormal, name), 1)
	oos, err := h.agent.outOfService(h.marker(h.disk).ID)
	require.NoError(t, err)
	require.Nil(t, oos, "a missing disk is not a failed one")
}

func TestHealth_ACapacityWarningDoesNotFlapAroundTheThreshold(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	name := h.pvName()
	for _, pct := range []float64{91, 89, 90.5, 89.5} {
		h.host.set(func(f *fakeHost) { f.usage[h.disk] = discovery.Usage{BytesPercent: pct} })
		h.pass()
		require.Equal(t, provisioner.HealthWarning, h.pvHealth().State, "%.1f%%", pct)
	}
	require.Contains(t, h.apiPVs(), name, "a Warning does not take the disk out of the pool")
	h.host.set(func(f *fakeHost) { f.usage[h.disk] = discovery.Usage{BytesPercent: 87} })
	h.pass()
	require.Equal(t, provisioner.HealthHealthy, h.pvHealth().State)
}

func TestHealth_TheMonitorAsksForAPassWhenADiskChanges(t *testing.T) {
	h := newHealthHarness(t, harnessConfig{})
	h.pass()
	require.False(t, h.agent.healthChanged(h.ctx), "nothing changed")
	h.host.set(func(f *fakeHost) {
		m := f.mounts[h.disk]
		m.ReadOnly = true
		f.mounts[h.disk] = m
	})
	require.True(t, h.agent.healthChanged(h.ctx))
}

// healthGauge reads tidb_localpv_disk_health of the test class, by state.
func (h *healthHarness) healthGauge() map[string]float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(h.t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "tidb_localpv_disk_health" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["class"] == testClass {
				out[labels["state"]] += m.GetGauge().GetValue()
			}
		}
	}
	return out
}
