package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
	utilexec "k8s.io/utils/exec"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// applyInventory reads and validates the inventory ConfigMap, prepares the
// Filesystem devices it names, reports every problem, and returns the
// entries usable now. A document that does not parse keeps the last good
// inventory in force: a typo must not unpublish a node's disks.
func (a *Agent) applyInventory(ctx context.Context) []discovery.ValidEntry {
	log := klog.FromContext(ctx)
	a.mu.Lock()
	last := a.inventory
	a.mu.Unlock()

	cm, err := a.cmLister.ConfigMaps(a.cfg.InventoryNamespace).Get(a.cfg.InventoryName)
	if apierrors.IsNotFound(err) {
		log.V(4).Info("no inventory ConfigMap", "namespace", a.cfg.InventoryNamespace, "name", a.cfg.InventoryName)
		a.setInventory(nil, 0)
		return nil
	}
	if err != nil {
		log.Error(err, "read inventory; keeping the last one")
		return last
	}
	entries, problems, err := discovery.ParseInventory(cm.Data[discovery.InventoryKey])
	if err != nil {
		msg := fmt.Sprintf("node %s: %v; the previous inventory stays in force", a.cfg.NodeName, err)
		if a.events.once("cm/"+cm.ResourceVersion, cm, ReasonInventoryBroken, msg) {
			a.metrics.inventoryErrors.Inc()
			log.Error(err, "inventory does not parse; keeping the last one")
		}
		return last
	}
	ms, err := a.deps.Mounts.Mounts()
	if err != nil {
		log.Error(err, "read mount table; keeping the last inventory")
		return last
	}
	idx := discovery.IndexMounts(ms)
	v := discovery.Validator{Node: a.cfg.NodeName, Roots: a.cfg.Roots, DevDir: a.cfg.DevDir, Mounts: idx}
	valid, bad := v.Validate(entries)
	problems = append(problems, bad...)

	usable := make([]discovery.ValidEntry, 0, len(valid))
	wait, cancel := context.WithTimeout(ctx, a.io.timeout)
	defer cancel()
	for _, e := range valid {
		if e.Mode == corev1.PersistentVolumeFilesystem && e.Device != "" {
			if err := a.prepareBounded(ctx, e, cm, wait.Done()); err != nil {
				a.metrics.errors.WithLabelValues("prepare").Inc()
				problems = append(problems, discovery.Problem{Index: e.Index, Target: e.Target(), Message: err.Error()})
				continue
			}
		}
		usable = append(usable, e)
	}
	for _, p := range problems {
		msg := fmt.Sprintf("node %s: %s; the other entries still apply", a.cfg.NodeName, p)
		if a.events.once("cm/"+cm.ResourceVersion, cm, ReasonInvalidEntry, msg) {
			a.metrics.inventoryErrors.Inc()
			log.Info("inventory entry not applied", "entry", p.Index+1, "target", p.Target, "problem", p.Message)
		}
	}
	a.setInventory(usable, len(problems))
	return usable
}

func (a *Agent) setInventory(entries []discovery.ValidEntry, bad int) {
	a.mu.Lock()
	a.inventory = entries
	a.mu.Unlock()
	a.metrics.inventoryBad.Set(float64(bad))
}

// prepareBounded runs prepare with the device and its mount target claimed
// for the inventory step, and waits for it until deadline. A device a wipe
// or a probe holds is left alone this pass: the wipe unmounts and formats
// it and owns it until it is done, and a probed disk is mounted already.
// A prepare that misses the deadline (a large device's format, or a device
// whose I/O hangs) keeps its claim and finishes in the background; the
// entry waits for it and the pass goes on with the others.
func (a *Agent) prepareBounded(ctx context.Context, e discovery.ValidEntry, cm *corev1.ConfigMap, deadline <-chan struct{}) error {
	type result struct {
		msg string
		err error
	}
	// Whichever of the run and the wait settles second knows the other
	// side: a run finishing after the wait gave up asks for another pass.
	var settled atomic.Bool
	run, blocker := startProbe(a.io, holderInventory, diskKeys(e.MountTarget, e.Resolved), func() result {
		msg, err := a.prepare(ctx, e)
		if msg != "" {
			a.events.event(cm, corev1.EventTypeNormal, ReasonPrepared, fmt.Sprintf("node %s: %s", a.cfg.NodeName, msg))
		}
		if !settled.CompareAndSwap(false, true) {
			// The pass that started it has moved on: run another to
			// publish the disk, or to report why it was not prepared.
			a.enqueue()
		}
		return result{msg, err}
	})
	switch {
	case blocker == nil:
	case blocker.holder == holderInventory:
		return fmt.Errorf("preparing %s started %s and has not returned (formatting a large device can take this long; a device whose I/O hangs stays like this); the other disks proceed, and this one is taken up when it returns",
			e.Device, blocker.since.UTC().Format(time.RFC3339))
	default:
		klog.FromContext(ctx).V(2).Info("device held; not preparing it this pass", "device", e.Device, "holder", blocker.holder)
		return nil
	}
	res, ok := run.await(deadline)
	if !ok && settled.CompareAndSwap(false, true) {
		return fmt.Errorf("preparing %s has not finished within %s (formatting a large device can take this long; a device whose I/O hangs stays like this); the other disks proceed, and this one is taken up when it finishes",
			e.Device, a.io.timeout)
	}
	if !ok {
		res = <-run.out // it finished between the deadline and the swap
	}
	return res.err
}

// prepare formats (if allowed and blank) and mounts a Filesystem device at
// its mount target. It returns what it did, for an event, or "" when the
// device was already in place. It reads the mount table itself, under the
// caller's claim: a table read before the claim may predate a wipe's
// remount, and mounting the device again over it would stack a second
// mount on the target.
func (a *Agent) prepare(ctx context.Context, e discovery.ValidEntry) (string, error) {
	ms, err := a.deps.Mounts.Mounts()
	if err != nil {
		return "", fmt.Errorf("read mount table: %w", err)
	}
	idx := discovery.IndexMounts(ms)
	target := e.MountTarget
	if _, ok := idx[target]; ok {
		return "", nil // the validator checked it is this device
	}
	for mp, m := range idx {
		if src, err := filepath.EvalSymlinks(m.Source); err == nil && src == e.Resolved {
			return "", fmt.Errorf("%s is already mounted at %s; unmount it, or list that path as a path entry instead", e.Device, mp)
		}
	}
	sig, err := a.probe(ctx, e.Resolved)
	if err != nil {
		return "", err
	}
	format := false
	switch {
	case sig.blank():
		if !e.Format {
			return "", fmt.Errorf("%s is blank; set format: true to let the agent format it as %s", e.Device, e.FSType)
		}
		format = true
	case sig.Type == e.FSType && sig.Label == discovery.FilesystemLabel && sig.PTType == "":
		// A filesystem the agent made earlier (e.g. before a reboot).
	case sig.Type != "" && sig.Label == discovery.FilesystemLabel && sig.PTType == "":
		return "", fmt.Errorf("%s holds a %s filesystem made by tidb-localpv but the entry says fsType %s; fix fsType", e.Device, sig.Type, e.FSType)
	default:
		if !e.Force {
			return "", fmt.Errorf("%s carries %s; tidb-localpv formats only blank devices: wipe it yourself (wipefs -a), or set force: true and node: %s on this entry to let the agent erase it (destroys its data)", e.Device, sig, a.cfg.NodeName)
		}
		if out, err := a.deps.Exec.CommandContext(ctx, "wipefs", "-a", "-f", e.Resolved).CombinedOutput(); err != nil {
			return "", fmt.Errorf("erase signatures of %s (force): %w: %s", e.Device, err, strings.TrimSpace(string(out)))
		}
		klog.FromContext(ctx).Info("erased device signatures (force)", "device", e.Device, "was", sig.String())
		format = true
	}

	created, err := makeMountDir(target)
	if err != nil {
		return "", err
	}
	err = a.deps.Mounter.FormatAndMountSensitiveWithFormatOptions(e.Resolved, target, e.FSType, nil, nil, []string{"-L", discovery.FilesystemLabel})
	if err != nil {
		if created {
			_ = os.Remove(target) // only the empty directory we made
		}
		return "", fmt.Errorf("format and mount %s at %s: %w", e.Device, target, err)
	}
	if !format {
		return fmt.Sprintf("mounted %s (its tidb-localpv %s filesystem) at %s", e.Device, e.FSType, target), nil
	}
	id, err := discovery.NewID()
	if err != nil {
		return "", err
	}
	m := discovery.Marker{ID: id, State: discovery.StateReady, FormattedDevice: e.Resolved, FSType: e.FSType, Created: time.Now().UTC()}
	if err := discovery.WriteMarker(target, m); err != nil {
		return "", err
	}
	return fmt.Sprintf("formatted %s as %s and mounted it at %s", e.Device, e.FSType, target), nil
}

// makeMountDir creates the mount directory, refusing one with contents: a
// mount would hide them, and they are not ours.
func makeMountDir(dir string) (created bool, err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(dir, 0o755); err != nil {
			return false, fmt.Errorf("create mount directory %s: %w", dir, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("mount directory %s: %w", dir, err)
	case len(entries) > 0:
		return false, fmt.Errorf("mount directory %s is not empty; move its contents away or choose another name", dir)
	}
	return false, nil
}

// signature is what blkid finds on a device.
type signature struct {
	Type, PTType, Label string
}

func (s signature) blank() bool { return s.Type == "" && s.PTType == "" }

func (s signature) String() string {
	var parts []string
	if s.Type != "" {
		parts = append(parts, "a "+s.Type+" filesystem")
	}
	if s.PTType != "" {
		parts = append(parts, "a "+s.PTType+" partition table")
	}
	if s.Label != "" {
		parts = append(parts, "label "+s.Label)
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// probe reads the device's signatures with low-level probing (-p), which
// looks at the device itself rather than blkid's cache.
func (a *Agent) probe(ctx context.Context, dev string) (signature, error) {
	out, err := a.deps.Exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev).CombinedOutput()
	var exit utilexec.ExitError
	if errors.As(err, &exit) && exit.ExitStatus() == 2 {
		return signature{}, nil // nothing found: blank
	}
	if err != nil {
		return signature{}, fmt.Errorf("probe %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	var s signature
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "TYPE":
			s.Type = v
		case "PTTYPE":
			s.PTType = v
		case "LABEL":
			s.Label = v
		}
	}
	if s.blank() {
		// blkid found something it could not name (it exits 0): treat it
		// as data, never as blank.
		s.Type = "unknown signature"
	}
	return s, nil
}

// formattedByAgent reports whether the filesystem on dev carries our label.
func (a *Agent) formattedByAgent(ctx context.Context, dev, fsType string) bool {
	s, err := a.probe(ctx, dev)
	return err == nil && s.Label == discovery.FilesystemLabel && s.Type == fsType
}
