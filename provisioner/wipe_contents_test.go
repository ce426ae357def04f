package provisioner

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// fakeMounts is a mount table listing whatever the test says is mounted.
type fakeMounts []discovery.Mount

func (f fakeMounts) Mounts() ([]discovery.Mount, error) { return f, nil }

const testID = "fs-0123456789abcdef01234567"

// newDisk makes a directory that stands for a disk and gives it a marker.
func newDisk(t *testing.T, id string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "disk0")
	require.NoError(t, os.Mkdir(root, 0o755))
	if id != "" {
		require.NoError(t, discovery.WriteMarker(root, discovery.Marker{ID: id, State: discovery.StateReady, Created: time.Unix(1700000000, 0).UTC()}))
	}
	return root
}

func fsDisk(path string) discovery.Disk {
	return discovery.Disk{Class: "tidb-localpv-tikv", Name: filepath.Base(path), Path: path, Mode: corev1.PersistentVolumeFilesystem, MountPoint: true, Capacity: 1 << 30}
}

func contentsWiper(mounts ...discovery.Mount) *Wiper {
	return &Wiper{Mounts: fakeMounts(mounts), FSMode: FSWipeContents}
}

func write(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte("data of "+filepath.Base(path)), 0o644))
}

// tree lists every path below root, relative, directories with a trailing /.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			rel += "/"
		}
		out = append(out, rel)
		return nil
	})
	require.NoError(t, err)
	sort.Strings(out)
	return out
}

func marker(t *testing.T, root string) discovery.Marker {
	t.Helper()
	m, ok, err := discovery.ReadMarker(root)
	require.NoError(t, err)
	require.True(t, ok, "marker missing in %s", root)
	return m
}

func TestWipe_RemovesFilesNestedDirsDeepTreesAndOddNames(t *testing.T) {
	root := newDisk(t, testID)
	write(t, filepath.Join(root, "LOCK"))
	write(t, filepath.Join(root, "db", "000001.sst"))
	write(t, filepath.Join(root, "db", "MANIFEST-000001"))
	write(t, filepath.Join(root, "raft", "wal", "0001.log"))
	require.NoError(t, os.Mkdir(filepath.Join(root, "empty"), 0o755))
	deep := root
	for i := range 120 {
		deep = filepath.Join(deep, fmt.Sprintf("d%d", i))
	}
	write(t, filepath.Join(deep, "bottom"))
	for _, odd := range []string{
		"with space", "new\nline", "-leading-dash", "...", ".hidden", "back\\slash",
		"ünïcødé", "日本語", "tab\tand*glob?", strings.Repeat("n", 255),
		discovery.MarkerName + ".bak", "lost+found.old",
	} {
		write(t, filepath.Join(root, "odd", odd))
		write(t, filepath.Join(root, odd))
	}
	// A directory with more entries than one read batch.
	for i := range 4500 {
		require.NoError(t, os.WriteFile(filepath.Join(root, "db", fmt.Sprintf("%06d.log", i)), nil, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "unreadable"), []byte("x"), 0o000))
	require.NoError(t, os.Symlink("db/000001.sst", filepath.Join(root, "relative-link")))
	require.NoError(t, os.Symlink("/nonexistent/target", filepath.Join(root, "dangling-link")))

	res, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

	require.NoError(t, err)
	require.Equal(t, "contents", res.Method)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
	require.Equal(t, 2+1+1+1+2*12+4500+1+2, res.Files)
	require.Equal(t, 3+1+120+1, res.Dirs, "db, raft, raft/wal, empty, the deep chain and odd")
}

// The consumer owned the disk's root: data it left under lost+found or
// the marker's temporary name must not reach the next consumer.
func TestRemoveContents_KeepsOnlyTheMarkerAndAnEmptyLostFoundAtTheRoot(t *testing.T) {
	root := newDisk(t, testID)
	require.NoError(t, os.WriteFile(filepath.Join(root, discovery.MarkerName+".tmp"), []byte("{half"), 0o600))
	write(t, filepath.Join(root, discovery.LostFound, "#12345"))
	write(t, filepath.Join(root, discovery.LostFound, "stash", "secret"))
	write(t, filepath.Join(root, "sub", discovery.LostFound, "#12345"))
	write(t, filepath.Join(root, "sub", discovery.MarkerName))
	write(t, filepath.Join(root, "sub", discovery.MarkerName+".tmp"))

	st, err := removeContents(context.Background(), root, discovery.MountIndex{})

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName, discovery.LostFound + "/"}, tree(t, root),
		"only the marker is kept as is; lost+found is kept empty; below the root the names are user data")
	require.Equal(t, 6, st.Files)
	require.Equal(t, 3, st.Dirs, "stash, sub and sub/lost+found; the root's lost+found stays")
}

func TestRemoveContents_RemovesATempMarkerThatIsADirectoryAndALostFoundThatIsNot(t *testing.T) {
	root := newDisk(t, testID)
	write(t, filepath.Join(root, discovery.MarkerName+".tmp", "kept-by-the-consumer"))
	write(t, filepath.Join(root, discovery.LostFound))

	_, err := removeContents(context.Background(), root, discovery.MountIndex{})

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
}

func TestWipe_LeavesOnlyTheMarkerAndLostFound(t *testing.T) {
	root := newDisk(t, testID)
	// A marker write interrupted before its rename leaves the temp file; the
	// wipe's own marker write replaces it.
	require.NoError(t, os.WriteFile(filepath.Join(root, discovery.MarkerName+".tmp"), []byte("{half"), 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(root, discovery.LostFound), 0o700))
	write(t, filepath.Join(root, "sub", discovery.LostFound, "#12345"))

	_, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName, discovery.LostFound + "/"}, tree(t, root))
	left, err := discovery.Contents(root)
	require.NoError(t, err)
	require.Empty(t, left)
}

func TestWipe_RemovesSymlinksToOutsideButNeverWhatTheyPointAt(t *testing.T) {
	outside := t.TempDir()
	write(t, filepath.Join(outside, "dir", "precious"))
	write(t, filepath.Join(outside, "dir", "sub", "precious"))
	write(t, filepath.Join(outside, "file"))
	before := tree(t, outside)

	root := newDisk(t, testID)
	require.NoError(t, os.Symlink(filepath.Join(outside, "dir"), filepath.Join(root, "link-to-dir")))
	require.NoError(t, os.Symlink(filepath.Join(outside, "file"), filepath.Join(root, "link-to-file")))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "a", "b"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(outside, "dir"), filepath.Join(root, "a", "b", "link-to-dir")))
	require.NoError(t, os.Symlink("/", filepath.Join(root, "a", "link-to-slash")))

	res, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
	require.Equal(t, before, tree(t, outside), "the links' targets are untouched")
	data, err := os.ReadFile(filepath.Join(outside, "file"))
	require.NoError(t, err)
	require.Equal(t, "data of file", string(data))
	require.Equal(t, 4, res.Files, "each link counts as one removed file")
}

func TestWipe_KeepsAndReportsAMountPointBelowTheRootAndRemovesEverythingElse(t *testing.T) {
	root := newDisk(t, testID)
	nested := filepath.Join(root, "data", "mnt")
	write(t, filepath.Join(nested, "inner", "file"))
	write(t, filepath.Join(root, "data", "sibling"))
	write(t, filepath.Join(root, "other", "file"))
	w := contentsWiper(
		discovery.Mount{MountPoint: filepath.Dir(root), Source: "/dev/vda", FSType: "ext4"},
		discovery.Mount{MountPoint: root, Source: "/dev/sdb", FSType: "ext4"},
		discovery.Mount{MountPoint: nested, Source: "/dev/sdc", FSType: "ext4"},
	)

	_, err := w.Wipe(context.Background(), fsDisk(root), testID)

	require.ErrorIs(t, err, ErrNestedMount)
	require.ErrorContains(t, err, nested, "the error names the mount point to unmount")
	require.Equal(t, []string{discovery.MarkerName, "data/", "data/mnt/", "data/mnt/inner/", "data/mnt/inner/file"}, tree(t, root))
	require.Equal(t, discovery.StateWiping, marker(t, root).State, "a disk with a nested mount is not clean and must not be published")
}

func TestRemoveContents_ReportsEachKeptMountPointOnce(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"m1", "x/m2", "x/y/m3"} {
		write(t, filepath.Join(root, d, "f"))
	}
	idx := discovery.IndexMounts([]discovery.Mount{
		{MountPoint: root}, {MountPoint: filepath.Join(root, "m1")},
		{MountPoint: filepath.Join(root, "x", "m2")}, {MountPoint: filepath.Join(root, "x", "y", "m3")},
	})

	st, err := removeContents(context.Background(), root, idx)

	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(root, "m1"), filepath.Join(root, "x", "m2"), filepath.Join(root, "x", "y", "m3")}, st.KeptMounts)
}

func TestWipe_RefusesADiskThatIsNotTheOneThePVNames(t *testing.T) {
	cases := []struct {
		name   string
		marker string // "" writes none
		raw    string // written as the marker file verbatim when set
		want   error
	}{
		{name: "another disk's marker", marker: "fs-ffffffffffffffffffffffff", want: ErrIdentityMismatch},
		{name: "no marker at all", want: ErrIdentityMismatch},
		{name: "a corrupt marker", raw: `{"id":"../../etc","state":"ready"}`, want: discovery.ErrCorruptMarker},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := newDisk(t, c.marker)
			if c.raw != "" {
				require.NoError(t, os.WriteFile(filepath.Join(root, discovery.MarkerName), []byte(c.raw), 0o600))
			}
			write(t, filepath.Join(root, "db", "000001.sst"))
			write(t, filepath.Join(root, "LOCK"))
			before := snapshot(t, root)

			_, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

			require.ErrorIs(t, err, c.want)
			require.Equal(t, before, snapshot(t, root), "a refused wipe touches nothing, the marker included")
		})
	}
}

// snapshot maps every path below root to its content (directories to "").
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, rel := range tree(t, root) {
		if strings.HasSuffix(rel, "/") {
			out[rel] = ""
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, rel))
		require.NoError(t, err)
		out[rel] = string(data)
	}
	return out
}

func TestWipe_MarksTheDiskReadyAgainAndKeepsItsIdentity(t *testing.T) {
	root := newDisk(t, "")
	orig := discovery.Marker{ID: testID, State: discovery.StateReady, FSType: "ext4", Created: time.Unix(1700000000, 0).UTC()}
	require.NoError(t, discovery.WriteMarker(root, orig))
	write(t, filepath.Join(root, "db", "000001.sst"))

	_, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

	require.NoError(t, err)
	m := marker(t, root)
	orig.Version = 1
	require.Equal(t, orig, m)
}

func TestWipe_FinishesAnInterruptedWipeOfADiskAlreadyMarkedWiping(t *testing.T) {
	root := newDisk(t, "")
	require.NoError(t, discovery.WriteMarker(root, discovery.Marker{ID: testID, State: discovery.StateWiping}))
	write(t, filepath.Join(root, "db", "half-removed"))

	_, err := contentsWiper().Wipe(context.Background(), fsDisk(root), testID)

	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
	require.Equal(t, discovery.StateReady, marker(t, root).State)
}

// cancelAfter is a context whose Err turns to Canceled after n calls, so a
// wipe can be interrupted at a chosen point of its walk without timing.
type cancelAfter struct {
	context.Context
	n atomic.Int64
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestWipe_LeavesTheDiskMarkedWipingWhenInterrupted(t *testing.T) {
	root := newDisk(t, testID)
	for d := range 50 {
		for f := range 20 {
			write(t, filepath.Join(root, fmt.Sprintf("dir%02d", d), fmt.Sprintf("f%02d", f)))
		}
	}
	ctx := &cancelAfter{Context: context.Background()}
	ctx.n.Store(20) // the walker checks the context once per directory batch

	res, err := contentsWiper().Wipe(ctx, fsDisk(root), testID)

	require.ErrorIs(t, err, context.Canceled)
	require.Positive(t, res.Files, "the wipe was under way")
	left, err := discovery.Contents(root)
	require.NoError(t, err)
	require.NotEmpty(t, left, "the wipe was cut short")
	require.Equal(t, discovery.StateWiping, marker(t, root).State, "an interrupted wipe is never mistaken for a clean disk")

	_, err = contentsWiper().Wipe(context.Background(), fsDisk(root), testID)
	require.NoError(t, err)
	require.Equal(t, []string{discovery.MarkerName}, tree(t, root))
	require.Equal(t, discovery.StateReady, marker(t, root).State)
}

func TestWipe_ReformatModeRefusesADiskTheAgentDidNotFormatAndRemovesNothing(t *testing.T) {
	root := newDisk(t, testID)
	write(t, filepath.Join(root, "db", "000001.sst"))
	w := &Wiper{Mounts: fakeMounts{{MountPoint: root, Source: "/dev/sdb", FSType: "ext4"}}, FSMode: FSWipeReformat}

	_, err := w.Wipe(context.Background(), fsDisk(root), testID)

	require.ErrorContains(t, err, "--fs-wipe=auto")
	require.Equal(t, []string{discovery.MarkerName, "db/", "db/000001.sst"}, tree(t, root))
	require.Equal(t, discovery.StateWiping, marker(t, root).State, "a disk whose wipe was refused is not published either")
}

func TestParseFSWipeMode_AcceptsTheThreeModesOnly(t *testing.T) {
	for _, s := range []string{"auto", "contents", "reformat"} {
		m, err := ParseFSWipeMode(s)
		require.NoError(t, err)
		require.Equal(t, FSWipeMode(s), m)
	}
	_, err := ParseFSWipeMode("shred")
	require.ErrorContains(t, err, "use auto, contents or reformat")
}

func TestMkfsArgs_LabelTheFilesystemAndForceOnlyWhenAsked(t *testing.T) {
	require.Equal(t, []string{"-m0", "-L", discovery.FilesystemLabel, "/dev/sdb"}, MkfsArgs("ext4", "/dev/sdb", false))
	require.Equal(t, []string{"-F", "-m0", "-L", discovery.FilesystemLabel, "/dev/sdb"}, MkfsArgs("ext4", "/dev/sdb", true))
	require.Equal(t, []string{"-L", discovery.FilesystemLabel, "/dev/sdb"}, MkfsArgs("xfs", "/dev/sdb", false))
	require.Equal(t, []string{"-f", "-L", discovery.FilesystemLabel, "/dev/sdb"}, MkfsArgs("xfs", "/dev/sdb", true))
}
