package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// zeroSpan is how much is zeroed at each end of a device when discard is
// unavailable: enough to cover the signatures of common filesystems, LVM,
// RAID superblocks and GPT (primary and backup).
const zeroSpan = 1 << 20

func (w *Wiper) wipeBlock(ctx context.Context, d discovery.Disk, id string) (Result, error) {
	log := klog.FromContext(ctx)
	if err := w.recordBlockWiping(id); err != nil {
		return Result{}, err
	}
	dev := d.Path
	method := "command"
	var err error
	if len(w.BlockCommand) > 0 {
		err = w.runBlockCommand(ctx, dev)
	} else {
		method = "discard"
		err = w.run(ctx, "blkdiscard", "-f", dev)
		if err != nil {
			log.Info("discard failed; zeroing signatures instead", "device", dev, "err", err.Error())
			method = "zero-signatures"
			err = w.zeroSignatures(ctx, dev)
		}
	}
	res := Result{Method: method}
	if err != nil {
		return res, fmt.Errorf("wipe %s: %w", dev, err)
	}
	format, err := w.Mounter.GetDiskFormat(dev)
	if err != nil {
		return res, fmt.Errorf("verify %s: %w", dev, err)
	}
	if format != "" {
		return res, fmt.Errorf("%w: %s still carries a %s signature", ErrNotClean, dev, format)
	}
	if err := os.Remove(w.blockRecord(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("clear wipe record: %w", err)
	}
	return res, nil
}

func (w *Wiper) recordBlockWiping(id string) error {
	dir := filepath.Dir(w.blockRecord(id))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create wipe record directory: %w", err)
	}
	f, err := os.OpenFile(w.blockRecord(id), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("record wipe of %s: %w", id, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record wipe of %s: %w", id, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("record wipe of %s: %w", id, err)
	}
	defer d.Close()
	return d.Sync()
}

func (w *Wiper) runBlockCommand(ctx context.Context, dev string) error {
	args := make([]string, len(w.BlockCommand))
	for i, a := range w.BlockCommand {
		args[i] = strings.ReplaceAll(a, "{device}", dev)
	}
	return w.run(ctx, args[0], args[1:]...)
}

func (w *Wiper) run(ctx context.Context, name string, args ...string) error {
	out, err := w.Exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// zeroSignatures erases every signature wipefs knows, then zeroes both ends
// of the device for those it does not.
func (w *Wiper) zeroSignatures(ctx context.Context, dev string) error {
	if err := w.run(ctx, "wipefs", "-a", "-f", dev); err != nil {
		return err
	}
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size %s: %w", dev, err)
	}
	zero := make([]byte, zeroSpan)
	for _, off := range []int64{0, max(0, size-zeroSpan)} {
		n := min(int64(zeroSpan), size)
		if _, err := f.WriteAt(zero[:n], off); err != nil {
			return fmt.Errorf("zero %s at %d: %w", dev, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	return nil
}
