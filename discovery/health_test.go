package discovery

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestReadMounts_ReadOnlyShowsInEitherTheMountOrTheSuperblockOptions(t *testing.T) {
	info := filepath.Join(t.TempDir(), "mountinfo")
	require.NoError(t, os.WriteFile(info, []byte(
		"41 26 7:0 / /mnt/a rw,relatime - ext4 /dev/loop0 rw,errors=remount-ro\n"+
			"42 26 7:1 / /mnt/b rw,relatime - ext4 /dev/loop1 rw,errors=remount-ro,emergency_ro\n"+
			"43 26 7:2 / /mnt/c ro,relatime - xfs /dev/loop2 rw,inode64\n"+
			"44 26 7:3 / /mnt/d rw,relatime - ext4 /dev/loop3 ro\n"+
			"45 26 0:50 / /mnt/e rw - tmpfs tmpfs rw,size=1024k\n"), 0o644))
	got, err := ReadMounts(info)
	require.NoError(t, err)
	tests := []struct {
		path string
		ro   bool
		why  string
	}{
		{"/mnt/a", false, ""},
		{"/mnt/b", true, "superblock option emergency_ro"},
		{"/mnt/c", true, "mount option ro"},
		{"/mnt/d", true, "superblock option ro"},
		{"/mnt/e", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			require.Equal(t, tt.ro, got[tt.path].ReadOnly)
			require.Equal(t, tt.why, got[tt.path].Options)
		})
	}
	require.Equal(t, MountState{ID: 41, Source: "/dev/loop0", FSType: "ext4", Major: 7, Minor: 0}, got["/mnt/a"])
}

// fakeSysfs lays out the parts of /sys the health readers look at.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	sys := t.TempDir()
	mk := func(path, content string) {
		p := filepath.Join(sys, path)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content+"\n"), 0o644))
	}
	link := func(dev, target string) {
		require.NoError(t, os.MkdirAll(filepath.Join(sys, "dev", "block"), 0o755))
		require.NoError(t, os.Symlink(filepath.Join(sys, target), filepath.Join(sys, "dev", "block", dev)))
	}
	mk("devices/virtual/block/loop3/size", "131072")
	link("7:3", "devices/virtual/block/loop3")
	mk("devices/virtual/block/loop4/size", "0")
	link("7:4", "devices/virtual/block/loop4")
	mk("devices/pci/nvme/nvme0n1/device/model", "x")
	mk("devices/pci/nvme/nvme0n1/nvme0n1p1/partition", "1")
	mk("devices/pci/nvme/nvme0n1/nvme0n1p1/size", "2048")
	link("259:1", "devices/pci/nvme/nvme0n1/nvme0n1p1")
	mk("devices/virtual/block/dm-0/size", "4096")
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "devices/virtual/block/dm-0/slaves/sdb"), 0o755))
	link("253:0", "devices/virtual/block/dm-0")
	mk("fs/ext4/loop3/errors_count", "2")
	mk("fs/ext4/loop3/first_error_time", "1796098405")
	mk("fs/ext4/loop3/last_error_time", "1796098500")
	mk("fs/ext4/loop3/first_error_func", "trigger_test_error")
	mk("fs/ext4/loop3/last_error_func", "ext4_lookup")
	mk("fs/ext4/loop5/errors_count", "0")
	return sys
}

func TestReadBlockDevice_FindsNamesSizeAndWhetherTheDeviceIsThere(t *testing.T) {
	sys := fakeSysfs(t)
	tests := []struct {
		name         string
		major, minor int
		want         BlockDevice
	}{
		{"loop", 7, 3, BlockDevice{Name: "loop3", Present: true, Sectors: 131072}},
		{"no medium", 7, 4, BlockDevice{Name: "loop4", Present: true}},
		{"partition of a physical disk", 259, 1, BlockDevice{Name: "nvme0n1p1", Parent: "nvme0n1", Present: true, Sectors: 2048, Physical: true}},
		{"device-mapper over a disk", 253, 0, BlockDevice{Name: "dm-0", Slaves: []string{"sdb"}, Present: true, Sectors: 4096}},
		{"gone", 8, 16, BlockDevice{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadBlockDevice(sys, tt.major, tt.minor)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
	got, _ := ReadBlockDevice(sys, 259, 1)
	require.Equal(t, []string{"nvme0n1p1", "nvme0n1"}, got.Names(), "the block layer names the whole disk")
}

func TestReadExt4Errors_ReadsTheSuperblocksErrorRecord(t *testing.T) {
	sys := fakeSysfs(t)
	got, ok, err := ReadExt4Errors(sys, "loop3")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, Ext4Errors{Count: 2, First: time.Unix(1796098405, 0).UTC(), Last: time.Unix(1796098500, 0).UTC(),
		FirstFunc: "trigger_test_error", LastFunc: "ext4_lookup"}, got)

	got, ok, err = ReadExt4Errors(sys, "loop5")
	require.NoError(t, err)
	require.True(t, ok)
	require.Zero(t, got.Count)

	_, ok, err = ReadExt4Errors(sys, "sda1")
	require.NoError(t, err)
	require.False(t, ok, "not an ext4 filesystem")
}

func TestParseKmsg_KnowsTheKernelsDiskErrorLinesAndNothingElse(t *testing.T) {
	tests := []struct {
		name   string
		record string
		want   KernelError
		ok     bool
	}{
		{"block layer I/O error", "3,1234,6144767563,-;I/O error, dev loop3, sector 28674 op 0x1:(WRITE) flags 0x800 phys_seg 12 prio class 2",
			KernelError{Device: "loop3", Kind: KernelIOError}, true},
		{"backing file full", "3,1235,1,-;critical space allocation error, dev loop0, sector 31234 op 0x1:(WRITE) flags 0x800 phys_seg 12 prio class 2",
			KernelError{Device: "loop0", Kind: KernelIOError}, true},
		{"medium error", "3,1,1,-;critical medium error, dev sdb, sector 88 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0",
			KernelError{Device: "sdb", Kind: KernelIOError}, true},
		{"old kernels", "3,1,1,-;blk_update_request: I/O error, dev sdc, sector 0",
			KernelError{Device: "sdc", Kind: KernelIOError}, true},
		{"discard not supported is no fault", "3,1,1,-;operation not supported error, dev sdb, sector 0 op 0x3:(DISCARD) flags 0x0 phys_seg 1 prio class 0", KernelError{}, false},
		{"buffer I/O error (dev)", "3,1,1,-;Buffer I/O error on dev loop0, logical block 8451, lost async page write",
			KernelError{Device: "loop0", Kind: KernelIOError}, true},
		{"buffer I/O error (device)", "3,1,1,-;Buffer I/O error on device nvme0n1p1, logical block 14337",
			KernelError{Device: "nvme0n1p1", Kind: KernelIOError}, true},
		{"ext4 error", "2,1,1,-;EXT4-fs error (device loop0): trigger_test_error:129: comm bash: 1",
			KernelError{Device: "loop0", Kind: KernelFSError}, true},
		{"ext4 write-back I/O error", "4,1,1,-;EXT4-fs warning (device loop0): ext4_end_bio:368: I/O error 3 writing to inode 12 starting block 15617)",
			KernelError{Device: "loop0", Kind: KernelIOError}, true},
		{"xfs shutdown", "1,1,1,-;XFS (loop0): Log I/O Error (0x6) detected at xfs_fs_goingdown+0x63/0xb0 (fs/xfs/xfs_fsops.c:475).  Shutting down filesystem.",
			KernelError{Device: "loop0", Kind: KernelFSShutdown}, true},
		{"xfs metadata I/O error", "3,1,1,-;XFS (sdb1): metadata I/O error in \"xfs_buf_ioend+0x1\" at daddr 0x2 len 1 error 5",
			KernelError{Device: "sdb1", Kind: KernelIOError}, true},
		{"with a dictionary", "3,9,1,-;I/O error, dev sda, sector 1 op 0x0:(READ)\n SUBSYSTEM=block\n DEVICE=b8:0",
			KernelError{Device: "sda", Kind: KernelIOError}, true},
		{"capacity gone", "6,1,1,-;loop2: detected capacity change from 131072 to 0",
			KernelError{Device: "loop2", Kind: KernelDeviceGone}, true},
		{"capacity grown", "6,1,1,-;loop2: detected capacity change from 0 to 131072", KernelError{}, false},
		{"written by a process (user facility)", "11,1,1,-;I/O error, dev loop3, sector 1", KernelError{}, false},
		{"ext4 mount message", "6,1,1,-;EXT4-fs (loop0): mounted filesystem r/w with ordered data mode.", KernelError{}, false},
		{"not a record", "I/O error, dev loop3, sector 1", KernelError{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseKmsg(tt.record)
			require.Equal(t, tt.ok, ok)
			if ok {
				require.Equal(t, tt.want.Device, got.Device)
				require.Equal(t, tt.want.Kind, got.Kind)
				require.NotEmpty(t, got.Text)
			}
		})
	}
}

func TestKmsg_FollowsNewRecordsWithoutBlockingAndStopsWithItsContext(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "kmsg")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	k, err := OpenKmsg(fifo)
	require.NoError(t, err)
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer w.Close()

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan KernelError, 10)
	done := make(chan error, 1)
	go func() { done <- k.Follow(ctx, func(e KernelError) { got <- e }) }()

	_, err = w.WriteString("6,1,1,-;EXT4-fs (loop0): mounted filesystem\n3,2,2,-;I/O error, dev loop7, sector 9\n SUBSYSTEM=block\n")
	require.NoError(t, err)
	select {
	case e := <-got:
		require.Equal(t, "loop7", e.Device)
	case <-time.After(10 * time.Second):
		t.Fatal("no record")
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not stop with its context")
	}
	require.Empty(t, got)
}

func TestParseSmartctl_ReadsOverallHealthNVMeWarningsAndFailingAttributes(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want SmartReport
	}{
		{"healthy NVMe", `{"smartctl":{"exit_status":0},"smart_status":{"passed":true},"nvme_smart_health_information_log":{"critical_warning":0}}`,
			SmartReport{Known: true}},
		{"NVMe read-only", `{"smartctl":{"exit_status":8},"smart_status":{"passed":false},"nvme_smart_health_information_log":{"critical_warning":8}}`,
			SmartReport{Known: true, Failing: true, CriticalWarning: NVMeReadOnly}},
		{"ATA prefailure", `{"smartctl":{"exit_status":16},"smart_status":{"passed":true},"ata_smart_attributes":{"table":[{"name":"Reallocated_Sector_Ct","when_failed":"now"},{"name":"Power_On_Hours","when_failed":""}]}}`,
			SmartReport{Known: true, FailingAttributes: []string{"Reallocated_Sector_Ct"}}},
		{"cannot open the device", `{"smartctl":{"exit_status":2}}`, SmartReport{}},
		{"no SMART on a virtual disk", `{"smartctl":{"exit_status":4}}`, SmartReport{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSmartctl([]byte(tt.out))
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
	_, err := ParseSmartctl([]byte("smartctl: command not found"))
	require.Error(t, err)
	require.Equal(t, "spare capacity below threshold, media placed in read-only mode", DescribeNVMeWarning(NVMeSpareLow|NVMeReadOnly))
}
