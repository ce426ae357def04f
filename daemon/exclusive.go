package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

// defaultProbeTimeout bounds how long a reconcile pass waits for one disk's
// identification (marker read, root listing, statfs, blkid). Healthy disks
// answer in milliseconds; a disk saturated by compaction or a writeback
// storm can take seconds to return a cold inode, and ext4 commits its
// journal every 5 s, so a bound under that would report healthy but busy
// disks. Above 10 s, a stuck disk would hold up the publishing of the
// others for longer than an operator expects a node to react. A disk that
// misses the bound is only skipped for that pass, so erring short is cheap.
const defaultProbeTimeout = 10 * time.Second

// Who holds a disk, in messages and to tell the holders apart.
const (
	holderProbe     = "identification"
	holderInventory = "the inventory step"
	holderWipe      = "a wipe"
)

// diskIO is how the agent touches its disks: one actor per disk at a time,
// the disk known both by its mount path and by its device, and every probe
// bounded in time.
//
// A wipe that unmounts a path and formats the device below it owns both
// from its start to its end: the inventory step would otherwise see the
// target unmounted and mount the old filesystem again (mkfs then fails "in
// use by the system", the wipe's own mount "already mounted"), or see the
// device blank mid-mkfs and run its own mkfs on it. A probe holding a file
// open on the disk would make the unmount fail, and one reading the
// filesystem mid-reformat would take the blank disk for a new one.
type diskIO struct {
	timeout time.Duration

	mu   sync.Mutex
	held map[string]*claim // by key: "path:<mount path>", "dev:<resolved device>"

	// readMarker, contents and sizer are what a probe does to a disk:
	// seams that let a test make one disk hang.
	readMarker func(root string) (discovery.Marker, bool, error)
	contents   func(root string) ([]string, error)
}

func newDiskIO() *diskIO {
	return &diskIO{
		timeout:    defaultProbeTimeout,
		held:       map[string]*claim{},
		readMarker: discovery.ReadMarker,
		contents:   discovery.Contents,
	}
}

// claim is one actor's hold on a disk.
type claim struct {
	holder  string
	since   time.Time
	done    chan struct{} // closed when released
	release func()
}

func (c *claim) String() string {
	return fmt.Sprintf("%s (since %s)", c.holder, c.since.UTC().Format(time.RFC3339))
}

// diskKeys names a disk by where it is mounted and by its device, so that
// two actors reaching the same disk by different routes (the inventory
// step by its device, a wipe by its path) still meet.
func diskKeys(path, device string) []string {
	keys := []string{"path:" + filepath.Clean(path)}
	if device != "" {
		if real, err := filepath.EvalSymlinks(device); err == nil {
			device = real
		}
		keys = append(keys, "dev:"+device)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// try takes every key at once, or none and returns the claim in the way.
func (dio *diskIO) try(holder string, keys []string) (mine, blocker *claim) {
	dio.mu.Lock()
	defer dio.mu.Unlock()
	for _, k := range keys {
		if c := dio.held[k]; c != nil {
			return nil, c
		}
	}
	c := &claim{holder: holder, since: time.Now(), done: make(chan struct{})}
	for _, k := range keys {
		dio.held[k] = c
	}
	c.release = sync.OnceFunc(func() {
		dio.mu.Lock()
		defer dio.mu.Unlock()
		for _, k := range keys {
			if dio.held[k] == c {
				delete(dio.held, k)
			}
		}
		close(c.done)
	})
	return c, nil
}

// wait takes the keys, waiting for the claims in the way to be released,
// until ctx ends. Only wipes wait, and only one wipe runs per disk (the
// busy set by disk ID), so two waiters never hold each other up; the keys
// are taken in order as they come free, so later probes cannot starve it.
func (dio *diskIO) wait(ctx context.Context, holder string, keys []string) (release func(), err error) {
	mine := &claim{holder: holder, since: time.Now(), done: make(chan struct{})}
	var taken []string
	giveBack := func() {
		dio.mu.Lock()
		defer dio.mu.Unlock()
		for _, k := range taken {
			if dio.held[k] == mine {
				delete(dio.held, k)
			}
		}
		close(mine.done)
	}
	for _, k := range keys {
		for {
			dio.mu.Lock()
			c := dio.held[k]
			if c == nil {
				dio.held[k] = mine
				taken = append(taken, k)
			}
			dio.mu.Unlock()
			if c == nil {
				break
			}
			select {
			case <-c.done:
			case <-ctx.Done():
				giveBack()
				return nil, fmt.Errorf("disk is held by %s: %w", c, ctx.Err())
			}
		}
	}
	return sync.OnceFunc(giveBack), nil
}

// claimForWipe is the Wiper's Claim: a wipe waits for a probe or an
// inventory step on its disk to end (each is bounded, but a stuck one may
// never return, hence the limit) and then owns the disk to its end.
func (dio *diskIO) claimForWipe(ctx context.Context, d discovery.Disk) (func(), error) {
	ctx, cancel := context.WithTimeout(ctx, 2*dio.timeout)
	defer cancel()
	return dio.wait(ctx, holderWipe, diskKeys(d.Path, d.Device))
}

// probeRun is one bounded run of fn on a disk, started under a claim.
type probeRun[T any] struct {
	claim *claim
	out   chan T
}

// startProbe runs fn under a claim on keys in its own goroutine, or returns
// the claim in the way. The claim lasts until fn returns, however long
// that is: a stuck disk is never probed twice at once.
func startProbe[T any](dio *diskIO, holder string, keys []string, fn func() T) (*probeRun[T], *claim) {
	mine, blocker := dio.try(holder, keys)
	if blocker != nil {
		return nil, blocker
	}
	r := &probeRun[T]{claim: mine, out: make(chan T, 1)}
	go func() {
		defer mine.release()
		r.out <- fn()
	}()
	return r, nil
}

// await returns fn's result, or ok=false if it has not come by deadline;
// a late result is dropped.
func (r *probeRun[T]) await(deadline <-chan struct{}) (res T, ok bool) {
	select {
	case res = <-r.out:
		return res, true
	case <-deadline:
	}
	select {
	case res = <-r.out:
		return res, true
	default:
		return res, false
	}
}
