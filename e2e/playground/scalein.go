package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidb-localpv/tidb-localpv/daemon"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
)

// scaleIn is TiDB Operator's scale-in with the controller doing the rest:
// the store of the highest ordinal is removed from PD, and once it is
// Tombstone the StatefulSet shrinks; nobody touches the claim, yet the disk
// is wiped and Available again.
func (s *story) scaleIn(ctx context.Context) error {
	owners, err := s.waitOwners(ctx, tikvReplicas)
	if err != nil {
		return err
	}
	v := owners[tikvReplicas-1]
	disk := v.pv.Spec.Local.Path
	data, err := writeTiKVData(disk, v.store)
	if err != nil {
		return err
	}
	claim := sim.ClaimName("tikv", s.sts.Name, tikvReplicas-1)
	s.say("TiDB Operator scales TiKV in from the highest ordinal: %s on %s, store %d,", v.pod, v.node, v.store)
	s.say("claim %s, PV %s. TiKV wrote %s.", claim, v.pv.Name, s.chron.short(data))
	s.say("The Operator offlines the store in PD, waits for Tombstone, then shrinks the StatefulSet;")
	s.say("it never deletes the claim here — the volume-controller does, once PD says the data is gone.")

	zero := s.chron.mark()
	s.chron.say("TiDB Operator: DELETE %s/pd/api/v1/store/%d", s.pd.URL, v.store)
	if err := s.pdc.DeleteStore(ctx, v.store); err != nil {
		return fmt.Errorf("offline store %d: %w", v.store, err)
	}
	tomb, err := s.waitStoreState(ctx, v.store, "Tombstone")
	if err != nil {
		return err
	}
	s.chron.say("TiDB Operator: store %d is Tombstone; scaling %s to %d", v.store, s.sts.Name, tikvReplicas-1)
	if err := s.scale(ctx, tikvReplicas-1); err != nil {
		return err
	}
	var fresh corev1.PersistentVolume
	if err := s.waitFor(ctx, "the disk of store "+fmt.Sprint(v.store)+" to be Available again", func() (bool, error) {
		pvs, err := s.pvs(ctx, map[string]string{provisioner.LabelDisk: v.pv.Labels[provisioner.LabelDisk]})
		if err != nil {
			return false, err
		}
		for _, pv := range pvs {
			if pv.UID != v.pv.UID && pv.Status.Phase == corev1.VolumeAvailable {
				fresh = pv
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return err
	}
	available := time.Now()
	s.chron.say("disk %s is Available again as PV %s", v.pv.Labels[provisioner.LabelDisk], fresh.Name)
	// The timeline above must have told the release and the wipe; the
	// Events follow their actions by a few milliseconds.
	if err := s.waitEvents(ctx, []string{"PersistentVolume/" + v.pv.Name + "#" + string(v.pv.UID)}, volumecontroller.ReasonReleased, daemon.ReasonWiped); err != nil {
		return err
	}

	_, err = s.env.Cluster.Client.CoreV1().PersistentVolumeClaims(s.sts.Namespace).Get(ctx, claim, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("claim %s of the buried store should be gone (get: %v)", claim, err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		return fmt.Errorf("%s survived the wipe (stat: %v)", data, err)
	}
	s.say("\nclaim %s is gone, %s with it; the disk holds: %s", claim, filepath.Base(data), s.listing(disk))
	s.say("  DELETE store → Tombstone:     %s", tomb.Sub(zero).Round(time.Millisecond))
	s.say("  Tombstone → disk Available:   %s   (scale-in, claim released, wiped, republished)", available.Sub(tomb).Round(time.Millisecond))
	return s.table(ctx)
}

// writeTiKVData plays TiKV writing to its disk (kwok runs no containers)
// and returns the file.
func writeTiKVData(disk string, store uint64) (string, error) {
	data := filepath.Join(disk, "db", "000107.sst")
	if err := os.MkdirAll(filepath.Dir(data), 0o755); err != nil {
		return "", fmt.Errorf("write TiKV's data: %w", err)
	}
	if err := os.WriteFile(data, fmt.Appendf(nil, "regions of store %d\n", store), 0o644); err != nil {
		return "", fmt.Errorf("write TiKV's data: %w", err)
	}
	return data, nil
}
