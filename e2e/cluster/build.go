package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Default versions of the control-plane components; the kube version matches
// the k8s.io libraries in go.mod so the tests speak the same API.
const (
	DefaultKubeVersion = "v1.35.4"
	DefaultEtcdVersion = "v3.6.5"
	DefaultKwokVersion = "v0.7.0"
)

// CacheEnv names the environment variable that overrides the cache directory.
const CacheEnv = "TIDB_LOCALPV_CACHE"

// Binaries holds absolute paths to the control-plane executables.
type Binaries struct {
	Etcd, APIServer, ControllerManager, Scheduler, Kwok string
	// Kubelet runs the real nodes.
	Kubelet string
}

// BuildOptions selects component versions and where built binaries are cached.
type BuildOptions struct {
	KubeVersion string // default DefaultKubeVersion
	EtcdVersion string // default DefaultEtcdVersion
	KwokVersion string // default DefaultKwokVersion
	// CacheDir defaults to $TIDB_LOCALPV_CACHE, else <user cache dir>/tidb-localpv.
	CacheDir string
	// Progress receives human-readable build progress; nil discards it.
	Progress io.Writer
}

// withDefaults fills unset fields; the environment is read here, once, and
// nowhere else.
func (o BuildOptions) withDefaults() (BuildOptions, error) {
	if o.KubeVersion == "" {
		o.KubeVersion = DefaultKubeVersion
	}
	if o.EtcdVersion == "" {
		o.EtcdVersion = DefaultEtcdVersion
	}
	if o.KwokVersion == "" {
		o.KwokVersion = DefaultKwokVersion
	}
	if o.CacheDir == "" {
		o.CacheDir = os.Getenv(CacheEnv)
	}
	if o.CacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return o, fmt.Errorf("find user cache dir (set %s): %w", CacheEnv, err)
		}
		o.CacheDir = filepath.Join(base, "tidb-localpv")
	}
	abs, err := filepath.Abs(o.CacheDir)
	if err != nil {
		return o, fmt.Errorf("resolve cache dir: %w", err)
	}
	o.CacheDir = abs
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o, nil
}

// binariesIn returns where each binary of these versions lives in the cache.
func binariesIn(o BuildOptions) Binaries {
	kubeDir := filepath.Join(o.CacheDir, "kube", o.KubeVersion)
	return Binaries{
		Etcd:              filepath.Join(o.CacheDir, "etcd", o.EtcdVersion, "etcd"),
		APIServer:         filepath.Join(kubeDir, "kube-apiserver"),
		ControllerManager: filepath.Join(kubeDir, "kube-controller-manager"),
		Scheduler:         filepath.Join(kubeDir, "kube-scheduler"),
		Kubelet:           filepath.Join(kubeDir, "kubelet"),
		Kwok:              filepath.Join(o.CacheDir, "kwok", o.KwokVersion, "kwok"),
	}
}

// component is one unit of building: all of its outputs appear together.
type component struct {
	name    string
	outputs []string
	build   func(b *builder, ctx context.Context, outDir string) error // a (*builder) method expression
}

// EnsureBinaries returns the control-plane binaries for opts, building the
// missing ones from Go modules into the cache. Concurrent callers (parallel
// test binaries) serialize on a file lock so each binary is built once.
func EnsureBinaries(ctx context.Context, opts BuildOptions) (Binaries, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Binaries{}, err
	}
	bins := binariesIn(opts)
	if err := buildMissing(ctx, opts, controlPlaneComponents(opts, bins)); err != nil {
		return Binaries{}, err
	}
	return bins, nil
}

// controlPlaneComponents are the builds behind bins.
func controlPlaneComponents(opts BuildOptions, bins Binaries) []component {
	return []component{
		{"etcd " + opts.EtcdVersion, []string{bins.Etcd}, (*builder).buildEtcd},
		{"kwok " + opts.KwokVersion, []string{bins.Kwok}, (*builder).buildKwok},
		{"kube " + opts.KubeVersion, []string{bins.APIServer, bins.ControllerManager, bins.Scheduler, bins.Kubelet}, (*builder).buildKube},
	}
}

// buildMissing builds the components that are missing, under the cache's
// build lock. The components of one stage build side by side: a go build
// leaves a core idle in its downloads, its links and its longest
// single-package compiles, and one build at a time made a cold
// `make e2e-prepare` take 18 minutes on two cores. The stages go one after
// another, so that a later one reuses an earlier one's compiled packages.
func buildMissing(ctx context.Context, opts BuildOptions, stages ...[]component) error {
	var all []component
	for _, stage := range stages {
		all = append(all, stage...)
	}
	// The common case, a warm cache, needs no lock: binaries only ever
	// appear by rename, complete.
	if allBuilt(all) {
		reportCached(opts.Progress, all)
		return nil
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return fmt.Errorf("create cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(opts.CacheDir, "build.lock"), opts.Progress)
	if err != nil {
		return err
	}
	defer unlock()

	opts.Progress = &SyncWriter{W: opts.Progress}
	b := &builder{opts: opts}
	for _, stage := range stages {
		errs := make([]error, len(stage))
		var wg sync.WaitGroup
		for i, c := range stage {
			// Another process may have built it while we waited for the lock.
			if allExist(c.outputs) {
				reportCached(opts.Progress, []component{c})
				continue
			}
			wg.Go(func() {
				if err := buildComponent(ctx, b, c); err != nil {
					errs[i] = fmt.Errorf("build %s: %w", c.name, err)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

// SyncWriter serializes writes to W, so that goroutines side by side (the
// builds here, the playground's chapters) share one progress writer and
// each Write lands whole.
type SyncWriter struct {
	mu sync.Mutex
	W  io.Writer
}

func (s *SyncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.W.Write(p)
}

// buildComponent builds into a temporary directory next to the final paths
// and renames each output into place, so a reader never sees a partial file.
func buildComponent(ctx context.Context, b *builder, c component) error {
	dir := filepath.Dir(c.outputs[0])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".build-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	fmt.Fprintf(b.opts.Progress, "building %s into %s\n", c.name, dir)
	if err := c.build(b, ctx, tmp); err != nil {
		return err
	}
	for _, out := range c.outputs {
		built := filepath.Join(tmp, filepath.Base(out))
		if _, err := os.Stat(built); err != nil {
			return fmt.Errorf("build produced no %s: %w", filepath.Base(out), err)
		}
		if err := os.Rename(built, out); err != nil {
			return err
		}
	}
	fmt.Fprintf(b.opts.Progress, "built %s in %s\n", c.name, time.Since(start).Round(time.Second))
	return nil
}

func allBuilt(cs []component) bool {
	for _, c := range cs {
		if !allExist(c.outputs) {
			return false
		}
	}
	return true
}

func reportCached(w io.Writer, cs []component) {
	for _, c := range cs {
		fmt.Fprintf(w, "using cached %s (%s)\n", c.name, filepath.Dir(c.outputs[0]))
	}
}

func allExist(paths []string) bool {
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait (a blocking flock cannot be interrupted).
func lockFile(ctx context.Context, path string, progress io.Writer) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	announced := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the fd releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !announced {
			fmt.Fprintf(progress, "waiting for %s: another process is building\n", path)
			announced = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for build lock: %w", ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// DefaultCacheDir is the cache directory BuildOptions use when none is
// given: $TIDB_LOCALPV_CACHE, else <user cache dir>/tidb-localpv.
func DefaultCacheDir() (string, error) {
	o, err := BuildOptions{}.withDefaults()
	return o.CacheDir, err
}
