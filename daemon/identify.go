package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// identify reads each disk's identity. A filesystem disk without a marker
// gets one only if it is empty: data without our identity belongs to
// someone else and is neither published nor wiped.
func (a *Agent) identify(ctx context.Context, disks []discovery.Disk) []found {
	out := make([]found, 0, len(disks))
	for _, d := range disks {
		f := found{Disk: d}
		if d.Mode == corev1.PersistentVolumeBlock {
			a.identifyBlock(&f)
		} else {
			a.identifyFilesystem(ctx, &f)
		}
		if f.Problem != "" {
			a.metrics.errors.WithLabelValues("identify").Inc()
			a.events.once("disk/"+d.Path, a.nodeRef(), ReasonBadDisk, f.Problem)
		}
		out = append(out, f)
	}
	return out
}

func (a *Agent) identifyFilesystem(ctx context.Context, f *found) {
	m, ok, err := discovery.ReadMarker(f.Path)
	if err != nil {
		f.Problem = fmt.Sprintf("%s: %v; not published. Inspect the marker file %s; remove it only if the disk holds nothing you need", f.Path, err, discovery.MarkerName)
		return
	}
	contents, err := discovery.Contents(f.Path)
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

func firstFew(names []string) string {
	if len(names) > 3 {
		return strings.Join(names[:3], ", ") + ", …"
	}
	return strings.Join(names, ", ")
}
