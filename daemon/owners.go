package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

// The agent keeps the volume-controller's ownership record of each disk in
// its state directory, keyed by the disk's identity: on the host, where no
// pod using the disk can reach it (the disk's root belongs to the tenant),
// and apart from the PV, which a `kubectl label` or `kubectl delete pv`
// can strip. A disk with a record is wiped only with the controller's
// approval for the recorded claim, whatever happened to its PV.

const ownersDir = "owners"

func (a *Agent) ownerPath(diskID string) string {
	return filepath.Join(a.cfg.StateDir, ownersDir, diskID+".json")
}

// ownerRecord returns the record kept for a disk.
func (a *Agent) ownerRecord(diskID string) (provisioner.Ownership, bool, error) {
	data, err := os.ReadFile(a.ownerPath(diskID))
	if errors.Is(err, os.ErrNotExist) {
		return provisioner.Ownership{}, false, nil
	}
	if err != nil {
		return provisioner.Ownership{}, false, fmt.Errorf("read ownership record of disk %s: %w", diskID, err)
	}
	rec, err := provisioner.UnmarshalRecord(data)
	if err != nil {
		// A record we cannot read still says the disk was owned: callers
		// must not take the error for "no record".
		return provisioner.Ownership{}, false, fmt.Errorf("ownership record of disk %s: %w", diskID, err)
	}
	return rec, true, nil
}

// keepOwner stores the record the controller wrote on one of this node's
// PVs, when it is new or changed; it is written atomically and durably.
func (a *Agent) keepOwner(ctx context.Context, pv *corev1.PersistentVolume) error {
	rec, ok := provisioner.OwnershipOf(pv)
	if !ok || !provisioner.Owned(pv) {
		return nil
	}
	if provisioner.ReleaseApproved(pv) {
		// The controller found the owner gone: the record has done its
		// work. Kept now — from a cache that still shows the PV after
		// its disk was wiped and the record forgotten — it would name a
		// dead owner on whatever the disk holds next.
		return nil
	}
	// The time the owner was last seen changes with every PD poll; the
	// state it was seen in changes rarely and is kept: only an owner last
	// seen buried may later count as gone.
	rec.Seen = time.Time{}
	data, err := rec.MarshalRecord()
	if err != nil {
		return err
	}
	path := a.ownerPath(pv.Labels[provisioner.LabelDisk])
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := writeFileDurably(path, data); err != nil {
		return fmt.Errorf("keep ownership record of PV %s: %w", pv.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("kept ownership record", "pv", pv.Name, "disk", pv.Labels[provisioner.LabelDisk], "owner", rec.Owner(), "claim", rec.Claim)
	return nil
}

// forgetOwner drops a disk's record once its data is wiped.
func (a *Agent) forgetOwner(diskID string) error {
	err := os.Remove(a.ownerPath(diskID))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget ownership record of disk %s: %w", diskID, err)
	}
	return nil
}

// writeFileDurably replaces path with data: temp file, fsync, rename, fsync
// of the directory, so a crash leaves the old record or the new one.
func writeFileDurably(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
