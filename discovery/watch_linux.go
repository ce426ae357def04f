package discovery

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Watcher signals when what Scan would return may have changed: a directory
// created or removed under a discovery root (fsnotify), or any mount or
// unmount in the agent's mount namespace (POLLPRI on mountinfo). Mounting
// onto an existing directory changes no directory, so fsnotify alone would
// miss the most common way a disk appears.
type Watcher struct {
	Roots     Roots
	MountInfo string
	// Notify receives a signal per batch of changes; sends never block, so a
	// slow consumer sees one pending signal rather than a backlog.
	Notify chan struct{}
}

// NewWatcher returns a Watcher with a one-slot notify channel.
func NewWatcher(roots Roots, mountInfo string) *Watcher {
	if mountInfo == "" {
		mountInfo = DefaultMountInfo
	}
	return &Watcher{Roots: roots, MountInfo: mountInfo, Notify: make(chan struct{}, 1)}
}

func (w *Watcher) signal() {
	select {
	case w.Notify <- struct{}{}:
	default:
	}
}

// Run watches until ctx ends. The discovery roots are created if missing so
// that a root made later is not silently unwatched.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("start fsnotify: %w", err)
	}
	defer fw.Close()
	for _, r := range w.Roots {
		if err := os.MkdirAll(r.Dir, 0o755); err != nil {
			return fmt.Errorf("create discovery directory %s: %w", r.Dir, err)
		}
		if err := fw.Add(r.Dir); err != nil {
			return fmt.Errorf("watch discovery directory %s: %w", r.Dir, err)
		}
	}
	mountErr := make(chan error, 1)
	go func() { mountErr <- w.watchMounts(ctx) }()

	log := klog.FromContext(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-mountErr:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch mount table: %w", err)
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("fsnotify closed its event channel")
			}
			if ev.Op&(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
				log.V(4).Info("discovery directory changed", "path", ev.Name, "op", ev.Op.String())
				w.signal()
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("fsnotify closed its error channel")
			}
			// An overflow loses events, so rescan rather than trust the gap.
			log.Error(err, "fsnotify error; rescanning")
			w.signal()
		}
	}
}

// watchMounts blocks in poll(2) on mountinfo; the kernel raises POLLPRI (with
// POLLERR) on every change of the namespace's mount table. A pipe closed on
// cancellation wakes the poll so no timeout loop is needed.
func (w *Watcher) watchMounts(ctx context.Context) error {
	// A raw descriptor, not os.Open: os.Open registers a pollable file with
	// the Go runtime's epoll, whose readiness checks call the kernel's
	// mountinfo poll too and consume the change before poll(2) below sees
	// it, so mounts went unnoticed.
	mfd, err := unix.Open(w.MountInfo, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", w.MountInfo, err)
	}
	defer unix.Close(mfd)
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

	fds := []unix.PollFd{
		{Fd: int32(mfd), Events: unix.POLLPRI},
		{Fd: int32(p[0]), Events: unix.POLLIN},
	}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll %s: %w", w.MountInfo, err)
		}
		if fds[1].Revents != 0 {
			return nil
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			w.signal()
		}
	}
}
