package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// stateStalled is the tidb_localpv_disks state of a disk whose
// identification did not return within the probe timeout.
const stateStalled = "stalled"

// ReasonDiskStalled is the event of a disk whose I/O does not return.
const ReasonDiskStalled = "DiskStalled"

// identify reads each disk's identity. A filesystem disk without a marker
// gets one only if it is empty: data without our identity belongs to
// someone else and is neither published nor wiped.
//
// All disks are probed at once and the pass waits for them up to the probe
// timeout: a disk whose I/O hangs is reported and skipped, and the others
// are published. Its probe keeps its claim on the disk until it returns, so
// later passes skip the disk at once instead of piling up stuck calls.
func (a *Agent) identify(ctx context.Context, disks []discovery.Disk) []found {
	wait, cancel := context.WithTimeout(ctx, a.io.timeout)
	defer cancel()
	out := make([]found, len(disks))
	var wg sync.WaitGroup
	for i, d := range disks {
		wg.Go(func() {
			out[i] = a.probeDisk(ctx, d, wait.Done(), func(f *found) { a.identifyOne(ctx, f) })
		})
	}
	wg.Wait()
	for _, f := range out {
		if f.Problem != "" {
			a.events.once("disk/"+f.Path, a.nodeRef(), f.reason(), f.Problem)
		}
	}
	return out
}

// unidentified lists the paths of disks whose identity is unknown this pass
// (unreadable marker, stalled probe, held by another actor): a PV naming
// such a path may well be that disk's, so it is neither missing nor free.
func unidentified(disks []found) map[string]bool {
	out := map[string]bool{}
	for _, d := range disks {
		if d.ID == "" && !d.Foreign {
			out[d.Path] = true
		}
	}
	return out
}

func (f found) reason() string {
	if f.state == stateStalled {
		return ReasonDiskStalled
	}
	return ReasonBadDisk
}

// probeDisk runs probe on d under a claim, waiting for it until deadline.
// A disk held by a probe or an inventory step younger than the timeout
// (each bounded: a reconcile pass and a wipe's search meet here) is waited
// for; one held longer is stalled; one held by a wipe is being wiped.
func (a *Agent) probeDisk(ctx context.Context, d discovery.Disk, deadline <-chan struct{}, probe func(*found)) found {
	f := found{Disk: d}
	keys := diskKeys(d.Path, d.Device)
	var (
		run     *probeRun[found]
		blocker *claim
	)
	for {
		run, blocker = startProbe(a.io, holderProbe, keys, func() found {
			g := found{Disk: d}
			probe(&g)
			return g
		})
		if blocker == nil || blocker.holder == holderWipe || time.Since(blocker.since) >= a.io.timeout {
			break
		}
		select {
		case <-blocker.done:
			continue
		case <-deadline:
		}
		break
	}
	if blocker != nil {
		switch blocker.holder {
		case holderWipe:
			f.state = stateWiping
		case holderInventory:
			// The inventory step reports its own stall.
			f.state = stateStalled
		default:
			a.stalled(&f, blocker)
		}
		return f
	}
	res, ok := run.await(deadline)
	if !ok {
		a.metrics.errors.WithLabelValues("identify-timeout").Inc()
		klog.FromContext(ctx).Info("disk did not answer in time; skipping it", "path", d.Path, "timeout", a.io.timeout)
		a.stalled(&f, run.claim)
		return f
	}
	if res.Problem != "" && res.state == "" {
		a.metrics.errors.WithLabelValues("identify").Inc()
	}
	return res
}

func (a *Agent) stalled(f *found, c *claim) {
	f.state = stateStalled
	f.Problem = fmt.Sprintf("%s: %s of this disk started %s and has not returned (the bound is %s); the disk is skipped and the others proceed, and it is not probed again until that call returns. Its I/O hangs: check the device (dmesg, smartctl) and what else uses it",
		f.Path, c.holder, c.since.UTC().Format(time.RFC3339), a.io.timeout)
}

// identifyOne measures a disk and reads (or, for an empty filesystem disk,
// gives it) its identity.
func (a *Agent) identifyOne(ctx context.Context, f *found) {
	var (
		n   int64
		err error
	)
	if f.Mode == corev1.PersistentVolumeBlock {
		n, err = a.deps.Sizer.BlockDeviceSize(f.Path)
	} else {
		n, err = a.deps.Sizer.FilesystemSize(f.Path)
	}
	if err != nil {
		f.Problem = fmt.Sprintf("%s cannot be measured: %v", f.Path, err)
		return
	}
	f.Capacity = n
	if f.Mode == corev1.PersistentVolumeBlock {
		a.identifyBlock(f)
	} else {
		a.identifyFilesystem(ctx, f)
	}
}

func (a *Agent) identifyFilesystem(ctx context.Context, f *found) {
	m, ok, err := a.io.readMarker(f.Path)
	if err != nil {
		f.Problem = badMarker(f.Path, err)
		return
	}
	contents, err := a.io.contents(f.Path)
	if err != nil {
		f.Problem = fmt.Sprintf("%s cannot be listed: %v", f.Path, err)
		return
	}
	f.HasData = len(contents) > 0
	if ok {
		f.ID, f.Wiping = m.ID, m.State == discovery.StateWiping
		return
	}
	if f.HasData {
		f.Foreign = true
		f.Problem = fmt.Sprintf("%s holds data (%s) but no tidb-localpv identity, so it is not published and not wiped; empty the disk to have it published", f.Path, firstFew(contents))
		return
	}
	id, err := discovery.NewID()
	if err != nil {
		f.Problem = err.Error()
		return
	}
	m = discovery.Marker{ID: id, State: discovery.StateReady, Created: time.Now().UTC()}
	if f.Device != "" && a.formattedByAgent(ctx, f.Device, f.FSType) {
		m.FormattedDevice, m.FSType = f.Device, f.FSType
	}
	if err := discovery.WriteMarker(f.Path, m); err != nil {
		f.Problem = fmt.Sprintf("%s: %v", f.Path, err)
		return
	}
	klog.FromContext(ctx).Info("new disk", "path", f.Path, "disk", id)
	f.ID = id
}

// badMarker says what is wrong with a marker and what to do about it.
func badMarker(path string, err error) string {
	what := "Inspect the marker file; remove it only if the disk holds nothing you need"
	if errors.Is(err, discovery.ErrUnsafeMarker) || errors.Is(err, discovery.ErrCorruptMarker) {
		what = fmt.Sprintf(`If a PV names this path, its label tidb-localpv.io/disk holds the disk's ID: replace %s/%s with a regular file holding {"version":1,"id":"<that ID>","state":"wiping"} and the agent wipes the disk and publishes it again; if no PV names it, remove that entry and empty the disk to have it published as a new disk`,
			path, discovery.MarkerName)
	}
	return fmt.Sprintf("%s: %v; the disk is neither published nor wiped while its identity cannot be read. %s", path, err, what)
}

func (a *Agent) identifyBlock(f *found) {
	id, src, err := a.blocks.Identify(f.Path)
	if err != nil {
		f.Problem = fmt.Sprintf("%s: %v; Block volumes need a stable identity", f.Path, err)
		return
	}
	f.ID, f.Source = id, src
	wiping, err := a.wiper.BlockWiping(id)
	if err != nil {
		f.Problem = fmt.Sprintf("%s: read wipe record: %v", f.Path, err)
		return
	}
	f.Wiping = wiping
	// A block disk cannot be listed; one published before may hold data.
	f.HasData = a.blockKnown(id)
}

// findDisk looks for the disk with identity id, reading only identities
// (it never gives a disk a new one), each bounded like a reconcile pass's.
// It says the disk is not here only when every disk was identified: a disk
// whose marker cannot be read, or whose I/O hangs, may be the one, and
// "not here" lets its PV go without a wipe.
func (a *Agent) findDisk(ctx context.Context, id string, disks []discovery.Disk) (found, bool, error) {
	var unsure []string
	for _, d := range disks {
		wait, cancel := context.WithTimeout(ctx, a.io.timeout)
		f := a.probeDisk(ctx, d, wait.Done(), func(f *found) {
			if f.Mode == corev1.PersistentVolumeBlock {
				a.identifyBlock(f)
				return
			}
			m, ok, err := a.io.readMarker(f.Path)
			if err != nil {
				f.Problem = badMarker(f.Path, err)
				return
			}
			f.ID = m.ID
			f.Foreign = !ok // no marker: a new or foreign disk, not the one sought
		})
		cancel()
		if f.ID == id {
			return f, true, nil
		}
		if f.ID == "" && !f.Foreign && f.state != stateWiping {
			why := f.Problem
			if why == "" {
				why = f.Path + " is " + f.state
			}
			unsure = append(unsure, why)
		}
	}
	if len(unsure) > 0 {
		return found{}, false, fmt.Errorf("disk %s is not among the disks identified on this node, but %d could not be identified, and it may be one of them: %s", id, len(unsure), strings.Join(unsure, "; "))
	}
	return found{}, false, nil
}

func firstFew(names []string) string {
	if len(names) > 3 {
		return strings.Join(names[:3], ", ") + ", …"
	}
	return strings.Join(names, ", ")
}
