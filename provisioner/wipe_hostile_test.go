package provisioner

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

// hangBound is how long a wipe that would block forever on a FIFO (opened
// for reading, it waits for a writer) gets before the test fails instead of
// hanging with it.
const hangBound = 10 * time.Second

func wipeWithin(t *testing.T, w *Wiper, root string) (Result, error) {
	t.Helper()
	type out struct {
		res Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := w.Wipe(context.Background(), fsDisk(root), testID)
		done <- out{res, err}
	}()
	select {
	case o := <-done:
		return o.res, o.err
	case <-time.After(hangBound):
		t.Fatalf("the wipe of %s did not return within %s", root, hangBound)
		return Result{}, nil
	}
}

// fifo makes a FIFO; a reader stuck in open(2) on it is let go at cleanup.
func fifo(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, unix.Mkfifo(path, 0o644))
	t.Cleanup(func() {
		if fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			unix.Close(fd)
		}
	})
}

func TestWipe_UnlinksFIFOsAndSocketsWithoutOpeningThem(t *testing.T) {
	root := newDisk(t, testID)
	fifo(t, filepath.Join(root, "top-fifo"))
	fifo(t, filepath.Join(root, "db", "deep", "fifo"))
	fifo(t, filepath.Join(root, discovery.LostFound))
	fifo(t, filepath.Join(root, discovery.MarkerName+".tmp"))
	require.NoError(t, unix.Mknod(filepath.Join(root, "db", "socket"), unix.S_IFSOCK|0o644, 0))

	res, err := wipeWithin(t, contentsWiper(), root)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
	require.Equal(t, 5, res.Files)
}

func TestWipe_UnlinksDeviceNodesWithoutOpeningThem(t *testing.T) {
	hostdisk.RequireRoot(t, "make device nodes")
	root := newDisk(t, testID)
	// The numbers of /dev/zero and /dev/loop-control: opening either is
	// harmless, but a wipe has no business opening any device.
	require.NoError(t, os.Mkdir(filepath.Join(root, "dev"), 0o755))
	require.NoError(t, unix.Mknod(filepath.Join(root, "dev", "zero"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))))
	require.NoError(t, unix.Mknod(filepath.Join(root, "dev", "loop-control"), unix.S_IFCHR|0o600, int(unix.Mkdev(10, 237))))
	require.NoError(t, unix.Mknod(filepath.Join(root, discovery.LostFound), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))))

	res, err := wipeWithin(t, contentsWiper(), root)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
	require.Equal(t, 3, res.Files)
}

func TestWipe_RefusesADiskWhoseMarkerIsAFIFOAndTouchesNothing(t *testing.T) {
	root := newDisk(t, "")
	fifo(t, filepath.Join(root, discovery.MarkerName))
	write(t, filepath.Join(root, "db", "000001.sst"))
	before := tree(t, root)

	_, err := wipeWithin(t, contentsWiper(), root)

	require.ErrorIs(t, err, discovery.ErrUnsafeMarker)
	require.ErrorContains(t, err, "is a FIFO")
	require.Equal(t, before, tree(t, root))
}
