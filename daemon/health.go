package daemon

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// Disk health. Every disk a reconcile pass found is checked on each pass
// and every HealthInterval in between; the kernel log is followed so that
// an I/O or filesystem error is seen the moment the kernel prints it, and
// a remount read-only is a mount-table event that starts a pass at once.
// What needs a poll (ext4's emergency read-only changes no mount-table
// event, capacity, a device gone, a filesystem shut down) is caught by the
// next tick.
//
// A check reads the mount table and sysfs (kernel memory) and, bounded in
// time like every probe, stats the filesystem: a failing disk is exactly
// the one whose I/O hangs.

// Defaults of the health monitor (see docs/defaults.md).
const (
	// defaultHealthInterval: the kernel log and the mount table report
	// most faults at once; the poll catches the rest (ext4's emergency
	// read-only, a device gone, capacity) within seconds, and a check costs
	// a few sysfs reads and one statfs per disk.
	defaultHealthInterval = 5 * time.Second
	// defaultSmartInterval: SMART data changes over hours, and smartctl is a
	// process and a device command per disk.
	defaultSmartInterval = 10 * time.Minute
	// defaultFullPercent: a Warning at 90% used leaves a 2 TB disk 200 GB
	// (and a 100 GB disk 10 GB, still over TiKV's 5 GB reserve-space) to
	// act in, and stays clear of PD's low-space-ratio (80%), at which a
	// full cluster normally runs.
	defaultFullPercent = 90
	// fullHysteresis: a disk that went over the threshold is back to
	// normal only this many points below it, so one near the line does
	// not flap between Warning and Healthy.
	fullHysteresis = 2
)

// Health finding reasons (CamelCase words, as in the PV annotation).
const (
	HealthReadOnly            = "ReadOnly"
	HealthIOErrors            = "IOErrors"
	HealthFilesystemErrors    = "FilesystemErrors"
	HealthFilesystemShutdown  = "FilesystemShutdown"
	HealthDeviceGone          = "DeviceGone"
	HealthUnresponsive        = "Unresponsive"
	HealthSMARTFailing        = "SMARTFailing"
	HealthNVMeCritical        = "NVMeCriticalWarning"
	HealthDiskMissing         = "DiskMissing"
	HealthCapacityLow         = "CapacityLow"
	HealthInodesLow           = "InodesLow"
	HealthErrorsRecorded      = "FilesystemErrorsRecorded"
	HealthSMARTPrefailure     = "SMARTPrefailure"
	HealthSMARTWarning        = "NVMeWarning"
	HealthRecordUnreadable    = "HealthRecordUnreadable"
	holderHealth              = "a health check"
	healthRecordUnreadableMsg = "its health record cannot be read"
)

// reasonOrder ranks findings of one state: the first is the reading's
// reason. A device gone explains everything after it.
var reasonOrder = []string{
	HealthDeviceGone, HealthFilesystemShutdown, HealthReadOnly, HealthIOErrors, HealthFilesystemErrors,
	HealthSMARTFailing, HealthNVMeCritical, HealthUnresponsive, HealthDiskMissing,
	HealthCapacityLow, HealthInodesLow, HealthErrorsRecorded, HealthSMARTPrefailure, HealthSMARTWarning,
}

// finding is one thing a check found.
type finding struct {
	state   provisioner.HealthState
	reason  string
	message string
}

// healthSource is how a check reads the host: seams for tests.
type healthSource struct {
	mounts      func() (map[string]discovery.MountState, error)
	blockDevice func(major, minor int) (discovery.BlockDevice, error)
	devNumber   func(path string) (int, int, error)
	ext4        func(name string) (discovery.Ext4Errors, bool, error)
	usage       func(path string) (discovery.Usage, error)
	rootAlive   func(path string) error
	smart       func(ctx context.Context, device string) (discovery.SmartReport, error)
	// mountInstance names the mount at a path, differently after a remount.
	mountInstance func(path string, mountinfoID int) string
}

// diskHealth is what the monitor knows of one disk between passes.
type diskHealth struct {
	key     string // disk ID, or "path:<path>" for a disk without one
	id      string
	path    string
	class   string
	names   []string // kernel device names errors about it may carry
	mount   string   // boot ID / mount ID of its filesystem
	record  *healthRecord
	current []finding // standing findings of the last check
	ext4    *discovery.Ext4Errors
	smart   []finding
	smartAt time.Time
	known   bool // checked at least once
	health  provisioner.Health
	readErr error // the record could not be read
}

// healthMonitor holds the health state of the node's disks.
type healthMonitor struct {
	interval      time.Duration
	smartInterval time.Duration
	fullPercent   float64
	inodesPercent float64
	src           healthSource

	check sync.Mutex // one check pass at a time

	mu      sync.Mutex
	disks   map[string]*diskHealth
	targets []found // disks of the last reconcile pass
	kick    chan struct{}
	// reported is what was last said of each object (PV or disk on the
	// node): the condition and when, for events.
	reported map[string]reportedHealth
	// told are the objects reported on in the current pass.
	told map[string]bool
}

type reportedHealth struct {
	health provisioner.Health
	at     time.Time
}

func newHealthMonitor(cfg Config, exe func(ctx context.Context, name string, args ...string) ([]byte, error)) *healthMonitor {
	m := &healthMonitor{
		interval:      cfg.HealthInterval,
		smartInterval: cfg.SmartInterval,
		fullPercent:   cfg.CapacityWarningPercent,
		inodesPercent: cfg.InodesWarningPercent,
		disks:         map[string]*diskHealth{},
		kick:          make(chan struct{}, 1),
		reported:      map[string]reportedHealth{},
	}
	if m.interval <= 0 {
		m.interval = defaultHealthInterval
	}
	if m.smartInterval <= 0 {
		m.smartInterval = defaultSmartInterval
	}
	if m.fullPercent <= 0 {
		m.fullPercent = defaultFullPercent
	}
	if m.inodesPercent <= 0 {
		m.inodesPercent = defaultFullPercent
	}
	sysfs := cfg.SysFS
	m.src = healthSource{
		mounts: func() (map[string]discovery.MountState, error) { return discovery.ReadMounts(cfg.MountInfo) },
		blockDevice: func(major, minor int) (discovery.BlockDevice, error) {
			return discovery.ReadBlockDevice(sysfs, major, minor)
		},
		devNumber:     discovery.DeviceNumber,
		ext4:          func(name string) (discovery.Ext4Errors, bool, error) { return discovery.ReadExt4Errors(sysfs, name) },
		usage:         discovery.ReadUsage,
		rootAlive:     discovery.RootAlive,
		mountInstance: discovery.MountInstance,
	}
	// SMART only where smartctl is installed; the image does not ship it.
	if path, err := exec.LookPath("smartctl"); err == nil && exe != nil {
		m.src.smart = func(ctx context.Context, device string) (discovery.SmartReport, error) {
			out, err := exe(ctx, path, discovery.SmartctlArgs(device)...)
			if len(out) == 0 && err != nil {
				return discovery.SmartReport{}, err
			}
			return discovery.ParseSmartctl(out)
		}
	}
	return m
}

func healthKey(d found) string {
	if d.ID != "" {
		return d.ID
	}
	return "path:" + d.Path
}

// checkHealth checks the disks of a pass (each bounded in time, all at
// once) and returns each one's health by key.
func (a *Agent) checkHealth(ctx context.Context, disks []found) map[string]provisioner.Health {
	m := a.health
	m.check.Lock()
	defer m.check.Unlock()

	now := a.deps.Clock.Now()
	wait, cancel := context.WithTimeout(ctx, a.io.timeout)
	defer cancel()
	type result struct {
		probedHealth
		known bool
	}
	results := make([]result, len(disks))
	// One read of the mount table for the pass: a wipe that remounted a
	// disk since would not be seen in it, but its new mount is told apart
	// by the unique mount ID read under the claim, and no mount option of
	// the old one can make a disk look worse than it is.
	mounts, err := m.src.mounts()
	if err != nil {
		klog.FromContext(ctx).Error(err, "read mount table for the health check")
	}
	var wg sync.WaitGroup
	for i, d := range disks {
		if d.state == stateWiping || a.isBusy(d.ID) || a.pathBusy(d.Path) {
			continue // a wipe owns the disk; mid-reformat it is briefly unmounted
		}
		wg.Go(func() {
			r, known := a.probeHealth(ctx, d, mounts, wait.Done())
			results[i] = result{r, known}
		})
	}
	wg.Wait()

	out := make(map[string]provisioner.Health, len(disks))
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, d := range disks {
		dh := m.diskLocked(a, d)
		res := results[i]
		if res.known {
			dh.current, dh.known, dh.ext4 = res.findings, true, res.ext4
			if res.mount != "" {
				dh.mount = res.mount
			}
			if len(res.names) > 0 {
				dh.names = res.names
			}
		}
		if dh.known {
			a.evaluateLocked(ctx, dh, now)
		}
		out[dh.key] = dh.health
	}
	return out
}

// diskLocked returns the monitor's entry for a disk, loading its record.
func (m *healthMonitor) diskLocked(a *Agent, d found) *diskHealth {
	key := healthKey(d)
	dh := m.disks[key]
	if dh == nil {
		dh = &diskHealth{key: key, id: d.ID, record: &healthRecord{Version: 1}}
		if d.ID != "" {
			rec, err := a.loadHealthRecord(d.ID)
			if err != nil {
				dh.readErr = err
			} else {
				dh.record = rec
			}
		}
		if dh.record.State != "" {
			dh.health = provisioner.Health{State: provisioner.HealthState(dh.record.State), Reason: dh.record.Reason, Since: dh.record.Since}
		}
		m.disks[key] = dh
	}
	dh.path, dh.class = d.Path, d.Class
	return dh
}

// probedHealth is one bounded check of one disk.
type probedHealth struct {
	findings []finding
	mount    string
	names    []string
	ext4     *discovery.Ext4Errors
}

// probeHealth checks one disk under a claim on it, waiting until deadline.
// known is false when nothing could be read this time (a wipe holds the
// disk, or another probe that is not stuck yet).
func (a *Agent) probeHealth(ctx context.Context, d found, mounts map[string]discovery.MountState, deadline <-chan struct{}) (probedHealth, bool) {
	keys := diskKeys(d.Path, d.Device)
	for {
		run, blocker := startProbe(a.io, holderHealth, keys, func() probedHealth { return a.readHealth(ctx, d, mounts) })
		if blocker == nil {
			res, ok := run.await(deadline)
			if !ok {
				a.metrics.errors.WithLabelValues("health-timeout").Inc()
				return probedHealth{findings: []finding{unresponsive(d.Path, run.claim, a.io.timeout)}}, true
			}
			return res, true
		}
		switch {
		case blocker.holder == holderWipe:
			return probedHealth{}, false
		case time.Since(blocker.since) >= a.io.timeout:
			return probedHealth{findings: []finding{unresponsive(d.Path, blocker, a.io.timeout)}}, true
		}
		select {
		case <-blocker.done:
			continue
		case <-deadline:
			// The blocker may have been a hair short of the bound when we
			// looked; after waiting out our own, it is judged again rather
			// than left for the next pass.
			if time.Since(blocker.since) >= a.io.timeout {
				return probedHealth{findings: []finding{unresponsive(d.Path, blocker, a.io.timeout)}}, true
			}
			return probedHealth{}, false
		}
	}
}

func unresponsive(path string, c *claim, bound time.Duration) finding {
	return finding{provisioner.HealthFailed, HealthUnresponsive, fmt.Sprintf(
		"%s of %s started %s and has not returned within %s: the disk's I/O hangs; check the device (dmesg, smartctl)",
		c.holder, path, c.since.UTC().Format(time.RFC3339), bound)}
}

// readHealth is one check of a disk: its line of the mount table, sysfs,
// and (bounded by the caller) statfs and a stat of its root.
func (a *Agent) readHealth(ctx context.Context, d found, mounts map[string]discovery.MountState) probedHealth {
	m := a.health
	var out probedHealth
	add := func(state provisioner.HealthState, reason, format string, args ...any) {
		out.findings = append(out.findings, finding{state, reason, fmt.Sprintf(format, args...)})
	}
	var (
		major, minor int
		hasDevice    bool
	)
	if d.Mode == corev1.PersistentVolumeBlock {
		maj, mnr, err := m.src.devNumber(d.Path)
		if err != nil {
			add(provisioner.HealthFailed, HealthDeviceGone, "%s is no longer a block device: %v", d.Path, err)
			return out
		}
		major, minor, hasDevice = maj, mnr, true
	} else {
		ms, ok := mounts[d.Path]
		if !ok {
			// Unmounted since the scan: the next pass finds it missing.
			return out
		}
		out.mount = m.src.mountInstance(d.Path, ms.ID)
		if ms.ReadOnly {
			add(provisioner.HealthFailed, HealthReadOnly, "%s is read-only (%s): the kernel or an operator stopped writes to it, and nothing can write its data; if the kernel did (an error), check the device, repair the filesystem and mount it read-write again", d.Path, ms.Options)
		}
		major, minor, hasDevice = ms.Major, ms.Minor, ms.Major != 0
	}
	if hasDevice {
		dev, err := m.src.blockDevice(major, minor)
		switch {
		case err != nil:
		case !dev.Present:
			add(provisioner.HealthFailed, HealthDeviceGone, "the device %d:%d behind %s is gone from the system while still in use", major, minor, d.Path)
		case dev.Sectors == 0:
			add(provisioner.HealthFailed, HealthDeviceGone, "the device %s behind %s has no medium any more (size 0)", dev.Name, d.Path)
		}
		if dev.Name != "" {
			out.names = dev.Names()
			if d.FSType == "ext4" {
				if e, ok, err := m.src.ext4(dev.Name); err == nil && ok {
					out.ext4 = &e
				}
			}
			out.findings = append(out.findings, a.smartFindings(ctx, d, dev)...)
		}
	}
	if d.Mode == corev1.PersistentVolumeFilesystem {
		if err := m.src.rootAlive(d.Path); errors.Is(err, unix.EIO) {
			add(provisioner.HealthFailed, HealthFilesystemShutdown, "the filesystem at %s answers I/O errors (%v): it has shut down; unmount it, repair it and mount it again", d.Path, err)
		} else if u, err := m.src.usage(d.Path); err == nil {
			out.findings = append(out.findings, m.usageFindings(a, d, u)...)
		}
	}
	if out.ext4 != nil && out.ext4.Count > 0 {
		out.findings = append(out.findings, ext4Finding(*out.ext4))
	}
	return out
}

// usageFindings compares a filesystem's usage with the thresholds,
// keeping a disk over them in Warning until it is fullHysteresis points
// under.
func (m *healthMonitor) usageFindings(a *Agent, d found, u discovery.Usage) []finding {
	m.mu.Lock()
	var was []finding
	if dh := m.disks[healthKey(d)]; dh != nil {
		was = dh.current
	}
	m.mu.Unlock()
	had := func(reason string) bool {
		return slices.ContainsFunc(was, func(f finding) bool { return f.reason == reason })
	}
	over := func(pct, limit float64, reason string) bool {
		if had(reason) {
			return pct >= limit-fullHysteresis
		}
		return pct >= limit
	}
	var out []finding
	if over(u.BytesPercent, m.fullPercent, HealthCapacityLow) {
		out = append(out, finding{provisioner.HealthWarning, HealthCapacityLow, fmt.Sprintf(
			"%s is %.0f%% full (warning at %.0f%%): free space or move data before the store runs out", d.Path, u.BytesPercent, m.fullPercent)})
	}
	if u.InodesKnown && over(u.InodesPercent, m.inodesPercent, HealthInodesLow) {
		out = append(out, finding{provisioner.HealthWarning, HealthInodesLow, fmt.Sprintf(
			"%s has used %.0f%% of its inodes (warning at %.0f%%)", d.Path, u.InodesPercent, m.inodesPercent)})
	}
	return out
}

// ext4Finding is the standing finding of ext4's error record: errors stay
// recorded in the superblock until e2fsck checks the filesystem.
func ext4Finding(e discovery.Ext4Errors) finding {
	if e.Count == 0 {
		return finding{}
	}
	return finding{provisioner.HealthWarning, HealthErrorsRecorded, fmt.Sprintf(
		"ext4 has recorded %d error(s) (first %s in %s, last %s in %s); they stay recorded until the filesystem is unmounted and checked with e2fsck -f",
		e.Count, fmtTime(e.First), orDash(e.FirstFunc), fmtTime(e.Last), orDash(e.LastFunc))}
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// smartFindings runs smartctl on a physical disk every smartInterval.
func (a *Agent) smartFindings(ctx context.Context, d found, dev discovery.BlockDevice) []finding {
	m := a.health
	if m.src.smart == nil || !dev.Physical {
		return nil
	}
	key := healthKey(d)
	now := a.deps.Clock.Now()
	m.mu.Lock()
	dh := m.disks[key]
	if dh != nil && !dh.smartAt.IsZero() && now.Sub(dh.smartAt) < m.smartInterval {
		cached := dh.smart
		m.mu.Unlock()
		return cached
	}
	m.mu.Unlock()
	name := dev.Name
	if dev.Parent != "" {
		name = dev.Parent
	}
	ctx, cancel := context.WithTimeout(ctx, a.io.timeout)
	defer cancel()
	r, err := m.src.smart(ctx, "/dev/"+name)
	var out []finding
	if err == nil && r.Known {
		if r.Failing {
			out = append(out, finding{provisioner.HealthFailed, HealthSMARTFailing, fmt.Sprintf("the drive /dev/%s says its SMART overall health test FAILED: replace it", name)})
		}
		if w := r.CriticalWarning & discovery.NVMeFatal; w != 0 {
			out = append(out, finding{provisioner.HealthFailed, HealthNVMeCritical, fmt.Sprintf("the NVMe drive /dev/%s reports a critical warning (%s): replace it", name, discovery.DescribeNVMeWarning(w))})
		}
		if w := r.CriticalWarning &^ discovery.NVMeFatal; w != 0 {
			out = append(out, finding{provisioner.HealthWarning, HealthSMARTWarning, fmt.Sprintf("the NVMe drive /dev/%s warns: %s", name, discovery.DescribeNVMeWarning(w))})
		}
		if len(r.FailingAttributes) > 0 {
			out = append(out, finding{provisioner.HealthWarning, HealthSMARTPrefailure, fmt.Sprintf("SMART attributes of /dev/%s are at or below their threshold: %s", name, strings.Join(r.FailingAttributes, ", "))})
		}
	}
	m.mu.Lock()
	if dh := m.disks[key]; dh != nil {
		dh.smart, dh.smartAt = out, now
	}
	m.mu.Unlock()
	return out
}

// evaluateLocked merges a disk's standing findings with its record
// (kernel errors logged since, ext4 errors counted since, faults that
// stand until cleared), decides its health, marks a failed disk out of
// service and saves the record when it changed.
func (a *Agent) evaluateLocked(ctx context.Context, dh *diskHealth, now time.Time) {
	log := klog.FromContext(ctx)
	rec := dh.record
	before := *rec
	beforeFaults := slices.Clone(rec.Faults)
	beforeOOS := rec.OutOfService

	if e := dh.ext4; e != nil {
		// First sight: errors already recorded are a Warning (a standing
		// finding); only errors counted since are a failure. A count that
		// went down was reset by e2fsck.
		if rec.Ext4Seen && e.Count > rec.Ext4Errors {
			a.noteFault(dh, HealthFilesystemErrors, fmt.Sprintf("ext4 recorded %d new error(s) (%d in all; last %s in %s)",
				e.Count-rec.Ext4Errors, e.Count, fmtTime(e.Last), orDash(e.LastFunc)), now)
		}
		rec.Ext4Errors, rec.Ext4Seen = e.Count, true
	}
	standing := dh.current
	// Filesystem errors and a shutdown are over once the filesystem is
	// mounted anew and no new error came since.
	rec.Faults = slices.DeleteFunc(rec.Faults, func(f faultRecord) bool {
		fsFault := f.Reason == HealthFilesystemErrors || f.Reason == HealthFilesystemShutdown
		return fsFault && f.Mount != "" && dh.mount != "" && f.Mount != dh.mount
	})
	all := slices.Clone(standing)
	for _, f := range rec.Faults {
		all = append(all, finding{provisioner.HealthFailed, f.Reason, faultMessage(f, dh.path)})
	}
	h := worst(all)
	if dh.readErr != nil {
		h = provisioner.Health{State: provisioner.HealthFailed, Reason: HealthRecordUnreadable, Message: fmt.Sprintf("%s (%v): the disk is kept out of service until the file is repaired or removed", healthRecordUnreadableMsg, dh.readErr)}
	}
	if h.Same(dh.health) && !dh.health.Since.IsZero() {
		h.Since = dh.health.Since
	} else {
		h.Since = now.UTC().Truncate(time.Second)
	}
	if !h.Same(dh.health) {
		log.Info("disk health changed", "path", dh.path, "disk", dh.id, "state", h.State, "reason", h.Reason, "was", dh.health.State, "message", h.Message)
	}
	dh.health = h
	if h.State == provisioner.HealthFailed && rec.OutOfService == nil && dh.id != "" && dh.readErr == nil {
		rec.OutOfService = &faultRecord{Reason: h.Reason, Message: h.Message, First: h.Since, Last: h.Since, Count: 1}
		log.Info("failed disk taken out of service", "path", dh.path, "disk", dh.id, "reason", h.Reason)
	}
	rec.State, rec.Reason, rec.Since = string(h.State), h.Reason, h.Since
	if dh.id == "" || dh.readErr != nil {
		return
	}
	changed := before.State != rec.State || before.Reason != rec.Reason || !before.Since.Equal(rec.Since) ||
		before.Ext4Errors != rec.Ext4Errors || before.Ext4Seen != rec.Ext4Seen || beforeOOS != rec.OutOfService ||
		!slices.Equal(beforeFaults, rec.Faults)
	if changed {
		if err := a.saveHealthRecord(dh.id, rec); err != nil {
			log.Error(err, "save health record", "disk", dh.id)
		}
	}
}

func faultMessage(f faultRecord, path string) string {
	what := map[string]string{
		HealthIOErrors:           "the kernel reported I/O errors for the device of",
		HealthFilesystemErrors:   "the filesystem found errors in itself on",
		HealthFilesystemShutdown: "the filesystem shut down on",
	}[f.Reason]
	if what == "" {
		what = f.Reason + " on"
	}
	msg := fmt.Sprintf("%s %s (%d time(s), first %s, last %s: %q)", what, path, f.Count, fmtTime(f.First), fmtTime(f.Last), f.Message)
	switch f.Reason {
	case HealthIOErrors:
		msg += "; check or replace the device, then return it to service"
	default:
		msg += "; repair the filesystem (unmount, fsck) and mount it again"
	}
	return msg
}

// noteFault records a fault that stands until cleared.
func (a *Agent) noteFault(dh *diskHealth, reason, msg string, at time.Time) {
	at = at.UTC().Truncate(time.Second)
	for i := range dh.record.Faults {
		f := &dh.record.Faults[i]
		if f.Reason == reason {
			f.Count++
			f.Last, f.Message = at, msg
			if dh.mount != "" {
				f.Mount = dh.mount
			}
			return
		}
	}
	dh.record.Faults = append(dh.record.Faults, faultRecord{Reason: reason, Message: msg, First: at, Last: at, Count: 1, Mount: dh.mount})
}

// worst folds findings into one reading: the worst state, the reason of
// its first finding in reasonOrder, the messages of all its findings.
func worst(fs []finding) provisioner.Health {
	h := provisioner.Health{State: provisioner.HealthHealthy}
	for _, f := range fs {
		if f.state.Worse(h.State) {
			h.State = f.state
		}
	}
	if h.State == provisioner.HealthHealthy {
		return h
	}
	var top []finding
	for _, f := range fs {
		if f.state == h.State {
			top = append(top, f)
		}
	}
	rank := func(r string) int {
		if i := slices.Index(reasonOrder, r); i >= 0 {
			return i
		}
		return len(reasonOrder)
	}
	slices.SortStableFunc(top, func(x, y finding) int { return rank(x.reason) - rank(y.reason) })
	h.Reason = top[0].reason
	msgs := make([]string, 0, len(top))
	for _, f := range top {
		if !slices.Contains(msgs, f.message) {
			msgs = append(msgs, f.message)
		}
	}
	h.Message = strings.Join(msgs, "; ")
	return h
}

// kernelError takes one error the kernel logged: each disk of the last
// pass whose device it names gets a fault that stands until cleared (two
// partitions of one drive both do when the drive errs), and a check runs
// at once.
func (a *Agent) kernelError(ctx context.Context, e discovery.KernelError) {
	m := a.health
	now := a.deps.Clock.Now()
	m.mu.Lock()
	// The path and ID are copied under the lock: a pass updates them.
	type hit struct{ path, id string }
	var hits []hit
	for _, dh := range m.disks {
		if slices.Contains(dh.names, e.Device) {
			hits = append(hits, hit{dh.path, dh.id})
			if e.Kind != discovery.KernelDeviceGone {
				a.noteFault(dh, string(e.Kind), e.Text, now)
			}
		}
	}
	m.mu.Unlock()
	if len(hits) == 0 {
		klog.FromContext(ctx).V(4).Info("kernel error about a device that is not a disk of ours", "device", e.Device, "line", e.Text)
		return
	}
	for _, h := range hits {
		klog.FromContext(ctx).Info("kernel reported a disk error", "path", h.path, "disk", h.id, "device", e.Device, "kind", e.Kind, "line", e.Text)
	}
	m.poke()
}

func (m *healthMonitor) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// setTargets remembers the disks of the last pass for the checks between
// passes, and forgets the others: a device name is reused as soon as it is
// free (a new loop device, a drive swapped in), and the kernel's errors
// about it must not land on a disk that is gone. What matters of a
// forgotten disk is in its record, read again if it comes back.
func (m *healthMonitor) setTargets(disks []found) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.targets = slices.Clone(disks)
	keep := map[string]bool{}
	for _, d := range disks {
		keep[healthKey(d)] = true
	}
	for k := range m.disks {
		if !keep[k] {
			delete(m.disks, k)
		}
	}
}

// runHealth checks the last pass's disks every interval and whenever the
// kernel logs an error about one, and asks for a reconcile pass (which
// reports) when a disk's health changed.
func (a *Agent) runHealth(ctx context.Context) {
	m := a.health
	log := klog.FromContext(ctx)
	if a.deps.KernelLog != nil {
		kl, err := a.deps.KernelLog()
		if err != nil {
			log.Error(err, "cannot follow the kernel log; disk I/O errors are noticed only through their effects (read-only, error counts), at the next health check")
		} else {
			go func() {
				if err := kl.Follow(ctx, func(e discovery.KernelError) { a.kernelError(ctx, e) }); err != nil {
					log.Error(err, "stopped following the kernel log")
				}
			}()
		}
	}
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-m.kick:
		}
		if a.healthChanged(ctx) {
			a.enqueue()
		}
	}
}

// healthChanged runs a check of the last pass's disks and reports whether
// any disk's condition differs from what was last reported.
func (a *Agent) healthChanged(ctx context.Context) bool {
	m := a.health
	m.mu.Lock()
	targets := slices.Clone(m.targets)
	before := map[string]provisioner.Health{}
	for k, dh := range m.disks {
		before[k] = dh.health
	}
	m.mu.Unlock()
	if len(targets) == 0 {
		return false
	}
	after := a.checkHealth(ctx, targets)
	for k, h := range after {
		if b, ok := before[k]; !ok || !b.Same(h) || b.Message != h.Message {
			return true
		}
	}
	return false
}

// KernelLog follows the kernel's log of disk errors.
type KernelLog interface {
	Follow(ctx context.Context, fn func(discovery.KernelError)) error
}

var _ KernelLog = (*discovery.Kmsg)(nil)
