package discovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

// hostileWait bounds calls that block forever on the old code (opening a
// FIFO for reading waits for a writer), so such a test fails, not hangs.
const hostileWait = 5 * time.Second

// plant puts something other than a marker file at dir/name. A pod using the
// disk owns its root and can make any of these.
type plant func(t *testing.T, path string)

func plantFIFO(t *testing.T, path string) {
	require.NoError(t, unix.Mkfifo(path, 0o644))
	// If a reader is stuck in open(2) on it, a writer's open lets it go.
	t.Cleanup(func() {
		if fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			unix.Close(fd)
		}
	})
}

func plantSocket(t *testing.T, path string) {
	// A socket node, as bind(2) leaves one; mknod makes it without
	// the 108-byte limit of socket addresses.
	require.NoError(t, unix.Mknod(path, unix.S_IFSOCK|0o644, 0))
}

func plantDir(t *testing.T, path string) {
	require.NoError(t, os.MkdirAll(filepath.Join(path, "inside"), 0o755))
}

func plantLink(t *testing.T, path string) {
	real := filepath.Join(t.TempDir(), "real-marker")
	require.NoError(t, os.WriteFile(real, []byte(`{"version":1,"id":"fs-0123456789abcdef01234567","state":"ready"}`), 0o644))
	require.NoError(t, os.Symlink(real, path))
}

// plantHuge writes a valid marker padded past any marker's size: only its
// start would ever be read, and that start parses.
func plantHuge(t *testing.T, path string) {
	marker := `{"version":1,"id":"fs-0123456789abcdef01234567","state":"ready"}`
	require.NoError(t, os.WriteFile(path, []byte(marker+strings.Repeat(" ", 1<<20)), 0o644))
}

func plantSparse(t *testing.T, path string) {
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(1<<40))
	require.NoError(t, f.Close())
}

func plantCharDevice(t *testing.T, path string) {
	hostdisk.RequireRoot(t, "make a device node")
	require.NoError(t, unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5)))) // /dev/zero's numbers
}

// hostilePlants are what a consumer can put in a marker's place, with what
// the refusal must call it.
var hostilePlants = []struct {
	name  string
	plant plant
	says  string
}{
	{"a FIFO", plantFIFO, "is a FIFO"},
	{"a socket", plantSocket, "is a socket"},
	{"a directory", plantDir, "is a directory"},
	{"a symbolic link to a valid marker", plantLink, "is a symbolic link"},
	{"a valid marker padded to a MiB", plantHuge, "1048640 bytes"},
	{"a sparse terabyte", plantSparse, "1099511627776 bytes"},
	{"a character device", plantCharDevice, "is a character device"},
}

// readWithin runs ReadMarker, failing the test instead of hanging with it.
func readWithin(t *testing.T, root string) (Marker, bool, error) {
	t.Helper()
	type result struct {
		m   Marker
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, ok, err := ReadMarker(root)
		done <- result{m, ok, err}
	}()
	select {
	case r := <-done:
		return r.m, r.ok, r.err
	case <-time.After(hostileWait):
		t.Fatalf("ReadMarker(%s) did not return within %s", root, hostileWait)
		return Marker{}, false, nil
	}
}

func TestReadMarker_RefusesAnythingButAMarkerSizedRegularFileWithoutBlocking(t *testing.T) {
	for _, c := range hostilePlants {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.plant(t, filepath.Join(root, MarkerName))

			_, ok, err := readWithin(t, root)

			require.ErrorIs(t, err, ErrUnsafeMarker)
			require.ErrorContains(t, err, c.says)
			require.False(t, ok)
		})
	}
}

func TestReadMarker_AcceptsAMarkerWithinTheSizeLimit(t *testing.T) {
	root := t.TempDir()
	marker := `{"version":1,"id":"fs-0123456789abcdef01234567","state":"wiping"}`
	require.NoError(t, os.WriteFile(filepath.Join(root, MarkerName), []byte(marker+strings.Repeat(" ", MaxMarkerSize-len(marker))), 0o600))

	m, ok, err := readWithin(t, root)

	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, StateWiping, m.State)
}

func TestContents_CountsWhatAConsumerLeftUnderTheDisksOwnNames(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, root string)
		want  []string
	}{
		{"an empty lost+found is the disk's", func(t *testing.T, root string) {
			require.NoError(t, os.Mkdir(filepath.Join(root, LostFound), 0o700))
		}, nil},
		{"a file in lost+found is data", func(t *testing.T, root string) {
			require.NoError(t, os.Mkdir(filepath.Join(root, LostFound), 0o700))
			require.NoError(t, os.WriteFile(filepath.Join(root, LostFound, "stash"), []byte("x"), 0o600))
		}, []string{LostFound}},
		{"a FIFO named lost+found is data, and is not opened", func(t *testing.T, root string) {
			plantFIFO(t, filepath.Join(root, LostFound))
		}, []string{LostFound}},
		{"a marker-sized temp file is an interrupted marker write", func(t *testing.T, root string) {
			require.NoError(t, os.WriteFile(filepath.Join(root, markerTemp+".0123456789abcdef"), []byte("{half"), 0o600))
		}, nil},
		{"a big file under a temp name is data", func(t *testing.T, root string) {
			plantHuge(t, filepath.Join(root, markerTemp+".0123456789abcdef"))
		}, []string{markerTemp + ".0123456789abcdef"}},
		{"a directory under the temp name is data", func(t *testing.T, root string) {
			plantDir(t, filepath.Join(root, markerTemp))
		}, []string{markerTemp}},
		{"the marker itself is judged by ReadMarker, whatever it is", func(t *testing.T, root string) {
			plantFIFO(t, filepath.Join(root, MarkerName))
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.setup(t, root)
			done := make(chan struct{})
			var (
				left []string
				err  error
			)
			go func() {
				defer close(done)
				left, err = Contents(root)
			}()
			select {
			case <-done:
			case <-time.After(hostileWait):
				t.Fatalf("Contents did not return within %s", hostileWait)
			}
			require.NoError(t, err)
			require.Equal(t, c.want, left)
		})
	}
}

// A fixed temporary name could be taken by the consumer and make every
// marker write fail, the wipe's "wiping" mark first: the disk could never
// be wiped again.
func TestWriteMarker_CannotBeBlockedByAnythingSquattingOnTheTempName(t *testing.T) {
	for _, c := range []struct {
		name  string
		plant plant
	}{{"a FIFO", plantFIFO}, {"a directory with files", plantDir}, {"a socket", plantSocket}} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			c.plant(t, filepath.Join(root, markerTemp))

			require.NoError(t, WriteMarker(root, Marker{ID: "fs-0123456789abcdef01234567", State: StateWiping}))

			m, ok, err := readWithin(t, root)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, StateWiping, m.State)
		})
	}
}

func TestWriteMarker_LeavesNoTemporaryFileBehind(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, WriteMarker(root, Marker{ID: "fs-0123456789abcdef01234567", State: StateReady}))
	require.NoError(t, WriteMarker(root, Marker{ID: "fs-0123456789abcdef01234567", State: StateWiping}))

	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, MarkerName, entries[0].Name())
}
