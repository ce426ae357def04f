package provisioner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
// reformatting (reformat), each on a tree synced before the wipe and on a
// freshly written one (fresh: the consumer just stopped, its dirty pages
// still in memory, so the wipe pays for or discards their writeback).
// Filling the disk is outside the timer. Run it as root with -benchtime=1x
// or 3x; it reports files/s and wipe-ms, and makes no claims about either.
func BenchmarkWipe100kFiles(b *testing.B) {
	hostdisk.RequireRoot(b, "attach, format and mount loop devices")
	for _, mode := range []FSWipeMode{FSWipeContents, FSWipeReformat} {
		for _, synced := range []bool{true, false} {
			tree := "fresh"
			if synced {
				tree = "synced"
			}
			b.Run(string(mode)+"/"+tree, func(b *testing.B) { benchmarkWipe(b, mode, synced) })
		}
	}
}

func benchmarkWipe(b *testing.B, mode FSWipeMode, synced bool) {
	base := b.TempDir()
	h := hostdisk.ForTest(b)
	dev, disk := agentDisk(b, h, base, benchDiskMiB)
	w := hostWiper(mode)
	d := fsDisk(disk)
	d.Device = dev

	var (
		files  int
		wiping time.Duration
	)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		files += fillTikvLike(b, disk, synced)
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

// fillTikvLike writes 100 directories of 1000 files of 1–4 KiB; synced
// writes them back before the wipe starts, so the wipe does not pay for the
// fill's writeback.
func fillTikvLike(b *testing.B, root string, synced bool) int {
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
	if synced {
		unix.Sync()
	}
	return n
}
