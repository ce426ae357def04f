package provisioner

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

const (
	benchDirs        = 100
	benchFilesPerDir = 1000
	// benchDiskMiB leaves room for 100k inodes at mkfs.ext4's default ratio
	// of one inode per 16 KiB, which the agent's own reformat uses.
	benchDiskMiB = 2048
)

// BenchmarkWipe100kFiles wipes a loop-backed ext4 disk holding 100,000
// small files in a TiKV-like tree, file by file (contents) and by
// reformatting (reformat). Filling the disk is outside the timer. Run it as
// root with -benchtime=1x or 3x; it reports files/s and wipe-ms, and makes no
// claims about either.
func BenchmarkWipe100kFiles(b *testing.B) {
	hostdisk.RequireRoot(b, "attach, format and mount loop devices")
	for _, mode := range []FSWipeMode{FSWipeContents, FSWipeReformat} {
		b.Run(string(mode), func(b *testing.B) { benchmarkWipe(b, mode) })
	}
}

func benchmarkWipe(b *testing.B, mode FSWipeMode) {
	base := b.TempDir()
	h := hostdisk.ForTest(b)
	dev := hostdisk.Loop(b, h, benchDiskMiB)
	args := append([]string{"-q"}, MkfsArgs("ext4", dev, true)...)
	if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
		b.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	disk := filepath.Join(base, "tikv", "disk0")
	if err := h.Mount(dev, disk, "ext4"); err != nil {
		b.Fatal(err)
	}
	m := discovery.Marker{ID: testID, State: discovery.StateReady, FormattedDevice: dev, FSType: "ext4", Created: time.Now().UTC()}
	if err := discovery.WriteMarker(disk, m); err != nil {
		b.Fatal(err)
	}
	ex := utilexec.New()
	w := &Wiper{
		Mounts:  discovery.ProcMountTable{},
		Mounter: &mount.SafeFormatAndMount{Interface: mount.NewWithoutSystemd(""), Exec: ex},
		Exec:    ex,
		FSMode:  mode,
	}
	d := fsDisk(disk)
	d.Device = dev

	var (
		files  int
		wiping time.Duration
	)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		files += fillTikvLike(b, disk)
		b.StartTimer()
		res, err := w.Wipe(context.Background(), d, testID)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if res.Method != string(mode) {
			b.Fatalf("wiped by %s, want %s", res.Method, mode)
		}
		if left, err := discovery.Contents(disk); err != nil || len(left) > 0 {
			b.Fatalf("disk not empty after wipe: %v %v", left, err)
		}
		wiping += res.Duration
	}
	b.ReportMetric(float64(files)/wiping.Seconds(), "files/s")
	b.ReportMetric(float64(wiping.Milliseconds())/float64(b.N), "wipe-ms")
}

// fillTikvLike writes 100 directories of 1000 files of 1–4 KiB and syncs,
// so that the wipe does not pay for the fill's writeback.
func fillTikvLike(b *testing.B, root string) int {
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	n := 0
	for d := range benchDirs {
		dir := filepath.Join(root, fmt.Sprintf("db-%03d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range benchFilesPerDir {
			size := 1024 + (d*benchFilesPerDir+f)%3073
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%06d.sst", f)), buf[:size], 0o644); err != nil {
				b.Fatal(err)
			}
			n++
		}
	}
	unix.Sync()
	return n
}
