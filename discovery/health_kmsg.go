package discovery

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultKmsg is the kernel log device.
const DefaultKmsg = "/dev/kmsg"

// KernelErrorKind is what a kernel log line says went wrong.
type KernelErrorKind string

// Kinds of kernel errors about a disk.
const (
	// KernelIOError: the block layer or a filesystem reports a failed I/O.
	KernelIOError KernelErrorKind = "IOErrors"
	// KernelFSError: a filesystem found its own structures inconsistent.
	KernelFSError KernelErrorKind = "FilesystemErrors"
	// KernelFSShutdown: a filesystem shut itself down (xfs).
	KernelFSShutdown KernelErrorKind = "FilesystemShutdown"
	// KernelDeviceGone: a device's capacity dropped to nothing (a disk
	// pulled, a loop device cut off from its file). It is a state the
	// next check reads, not a fault of its own: the line only makes the
	// check come at once.
	KernelDeviceGone KernelErrorKind = "DeviceGone"
)

// KernelError is one kernel log line about a device.
type KernelError struct {
	// Device is the kernel name the line gives (loop3, sda, nvme0n1p1).
	Device string
	Kind   KernelErrorKind
	Text   string
}

// failedStatuses are the block layer's names (blk_errors in block/blk-core.c)
// of statuses that mean the I/O failed. Left out: "operation not
// supported" (a discard or write-zeroes the device cannot do, e.g. during
// a wipe), "nonblocking retry", "kernel resource" (the kernel's memory,
// not the disk) and "reservation conflict" (another host's reservation).
var failedStatuses = map[string]bool{
	"I/O": true, "critical medium": true, "critical target": true, "timeout": true,
	"recoverable transport": true, "critical space allocation": true, "device offline": true,
	"protection": true, "duration limit exceeded": true, "invalid": true,
}

var kernelPatterns = []struct {
	re   *regexp.Regexp
	kind KernelErrorKind
	// status is the index of a block-layer status group to check, 0 if none.
	status int
}{
	// blk_print_req_error (blk_update_request: on kernels before 5.x).
	{regexp.MustCompile(`^(?:blk_update_request: )?(.+?) error, dev ([^,\s]+), sector `), KernelIOError, 1},
	{regexp.MustCompile(`^Buffer I/O error on dev(?:ice)? ([^,\s]+)`), KernelIOError, 0},
	{regexp.MustCompile(`^EXT4-fs error \(device ([^)\s]+)\)`), KernelFSError, 0},
	{regexp.MustCompile(`^EXT4-fs warning \(device ([^)\s]+)\): .*I/O error`), KernelIOError, 0},
	{regexp.MustCompile(`^XFS \(([^)\s]+)\): .*(?:[Ss]hutting down filesystem|[Ff]ilesystem has been shut down)`), KernelFSShutdown, 0},
	{regexp.MustCompile(`^XFS \(([^)\s]+)\): .*(?:metadata|log) I/O error`), KernelIOError, 0},
	{regexp.MustCompile(`^XFS \(([^)\s]+)\): (?:Corruption|Metadata corruption)`), KernelFSError, 0},
	{regexp.MustCompile(`^(\S+): detected capacity change from \d+ to 0$`), KernelDeviceGone, 0},
}

// ParseKmsg reads one /dev/kmsg record ("pri,seq,usec,flags;text" and
// continuation lines starting with a space). Only records of the kernel
// facility count: anything a process writes to /dev/kmsg gets the user
// facility, so no pod can fake a disk error.
func ParseKmsg(record string) (KernelError, bool) {
	head, text, ok := strings.Cut(record, ";")
	if !ok {
		return KernelError{}, false
	}
	pri, _, _ := strings.Cut(head, ",")
	n, err := strconv.Atoi(pri)
	if err != nil || n>>3 != 0 {
		return KernelError{}, false
	}
	text, _, _ = strings.Cut(text, "\n")
	return ParseKernelLine(text)
}

// ParseKernelLine reads one kernel log message (without the record header).
func ParseKernelLine(text string) (KernelError, bool) {
	text = strings.TrimSpace(text)
	for _, p := range kernelPatterns {
		m := p.re.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		dev := m[len(m)-1]
		if p.status != 0 {
			if !failedStatuses[m[p.status]] {
				return KernelError{}, false
			}
			dev = m[2]
		}
		return KernelError{Device: dev, Kind: p.kind, Text: text}, true
	}
	return KernelError{}, false
}

// Kmsg follows the kernel log from its end.
type Kmsg struct {
	fd int
}

// OpenKmsg opens the kernel log and skips what is already in it: earlier
// errors are in the filesystems' own records (ext4's errors_count), and
// the ring buffer may hold hours-old lines about a device that has since
// been replaced.
func OpenKmsg(path string) (*Kmsg, error) {
	if path == "" {
		path = DefaultKmsg
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil && !errors.Is(err, unix.ESPIPE) {
		unix.Close(fd)
		return nil, fmt.Errorf("seek to the end of %s: %w", path, err)
	}
	return &Kmsg{fd: fd}, nil
}

// Follow calls fn for every disk error the kernel logs until ctx ends.
// Reads never block: the descriptor is non-blocking and polled together
// with a pipe that closes when ctx ends.
func (k *Kmsg) Follow(ctx context.Context, fn func(KernelError)) error {
	defer unix.Close(k.fd)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("create wake pipe: %w", err)
	}
	defer unix.Close(p[0])
	stop := context.AfterFunc(ctx, func() { unix.Close(p[1]) })
	defer func() {
		if stop() {
			unix.Close(p[1])
		}
	}()
	// A record is at most about 1 KiB of text plus its dictionary; a
	// buffer too small makes read fail with EINVAL.
	buf := make([]byte, 16<<10)
	fds := []unix.PollFd{
		{Fd: int32(k.fd), Events: unix.POLLIN},
		{Fd: int32(p[0]), Events: unix.POLLIN},
	}
	for {
		for {
			n, err := unix.Read(k.fd, buf)
			switch {
			case errors.Is(err, unix.EAGAIN):
			case errors.Is(err, unix.EPIPE):
				// We fell behind and the ring buffer overwrote records;
				// the next read returns the oldest one still there.
				continue
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				return fmt.Errorf("read kernel log: %w", err)
			case n == 0:
			default:
				for _, rec := range splitRecords(string(buf[:n])) {
					if e, ok := ParseKmsg(rec); ok {
						fn(e)
					}
				}
				continue
			}
			break
		}
		fds[0].Revents, fds[1].Revents = 0, 0
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll kernel log: %w", err)
		}
		if fds[1].Revents != 0 {
			return nil
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 && fds[0].Revents&unix.POLLIN == 0 {
			return fmt.Errorf("kernel log: poll events %#x", fds[0].Revents)
		}
	}
}

// splitRecords splits what one read returned into records: /dev/kmsg
// returns one per read, a pipe or file (in tests) may return several.
// Continuation lines (starting with a space) belong to the record before.
func splitRecords(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, " ") && len(out) > 0 {
			out[len(out)-1] += "\n" + line
			continue
		}
		out = append(out, line)
	}
	return out
}
