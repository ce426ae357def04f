// Command build-image builds the tidb-localpv image without Docker
// (`make image`): a Debian base made once with debootstrap and cached
// outside the work tree, plus the static binary as a layer, written as a
// docker-archive tarball that `docker load`, `ctr images import` and
// `crane push` read.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/image"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

func main() {
	var (
		out, tag, version, cacheDir string
	)
	flag.StringVar(&out, "out", "bin/tidb-localpv-image.tar", "docker-archive to write")
	flag.StringVar(&tag, "tag", "", "image name (default tidb-localpv.local/tidb-localpv:<version>)")
	flag.StringVar(&version, "version", "dev", "version stamped into the binary")
	flag.StringVar(&cacheDir, "cache-dir", "", "where the Debian base is cached (default $"+cluster.CacheEnv+", else <user cache dir>/tidb-localpv)")
	flag.Parse()
	if tag == "" {
		tag = "tidb-localpv.local/tidb-localpv:" + version
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, out, tag, version, cacheDir); err != nil {
		fmt.Fprintln(os.Stderr, "build-image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, tag, version, cacheDir string) error {
	start := time.Now()
	if cacheDir == "" {
		var err error
		if cacheDir, err = cluster.DefaultCacheDir(); err != nil {
			return err
		}
	}
	root, err := sim.FindRepoRoot()
	if err != nil {
		return err
	}
	base, err := image.EnsureBase(ctx, image.BaseOptions{CacheDir: cacheDir, Progress: os.Stdout})
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "tidb-localpv-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "tidb-localpv")
	if err := image.BuildBinary(ctx, root, bin, version); err != nil {
		return err
	}
	if err := image.Build(image.Options{Base: base, Binary: bin, Refs: []string{tag}, Out: out}); err != nil {
		return err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Printf("image %s written to %s (%d MiB) in %s\n", tag, out, fi.Size()>>20, time.Since(start).Round(time.Millisecond))
	fmt.Printf("load it with: docker load -i %s   (or: ctr -n k8s.io images import %s)\n", out, out)
	return nil
}
