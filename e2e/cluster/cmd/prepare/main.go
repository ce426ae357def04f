// Command prepare builds the local control-plane binaries into the cache so
// that later test runs start at once (`make e2e-prepare`).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/image"
)

func main() {
	var opts cluster.BuildOptions
	flag.StringVar(&opts.CacheDir, "cache-dir", "", "binary cache (default $"+cluster.CacheEnv+", else <user cache dir>/tidb-localpv)")
	flag.StringVar(&opts.KubeVersion, "kube-version", cluster.DefaultKubeVersion, "kubernetes version to build")
	flag.StringVar(&opts.EtcdVersion, "etcd-version", cluster.DefaultEtcdVersion, "etcd version to build")
	flag.StringVar(&opts.KwokVersion, "kwok-version", cluster.DefaultKwokVersion, "kwok version to build")
	flag.Parse()
	opts.Progress = os.Stdout

	// Cancelling the context kills the go commands; the build lock and temp
	// dirs are released on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	// As root, the Debian packages real nodes need are installed when
	// missing, so a fresh machine needs nothing by hand.
	if err := cluster.InstallHostPackages(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "prepare:", err)
		os.Exit(1)
	}
	// The image's Debian base (debootstrap needs root; without it the
	// real-node tests skip anyway) is made while the binaries build: it
	// waits mostly on Debian's mirror.
	baseDone := make(chan error, 1)
	if os.Geteuid() == 0 {
		go func() {
			cache, err := cluster.DefaultCacheDir()
			if opts.CacheDir != "" {
				cache, err = opts.CacheDir, nil
			}
			if err == nil {
				_, err = image.EnsureBase(ctx, image.BaseOptions{CacheDir: cache, Progress: os.Stdout})
			}
			baseDone <- err
		}()
	} else {
		baseDone <- nil
	}
	// The real nodes' binaries (containerd, kube-proxy) too: a cold CI run
	// builds everything here, with progress, rather than inside a test.
	bins, nodes, err := cluster.EnsureNodeBinaries(ctx, cluster.NodeBuildOptions{BuildOptions: opts})
	if err != nil {
		stop() // cancels debootstrap
		<-baseDone
		fmt.Fprintln(os.Stderr, "prepare:", err)
		os.Exit(1)
	}
	if err := <-baseDone; err != nil {
		fmt.Fprintln(os.Stderr, "prepare:", err)
		os.Exit(1)
	}
	fmt.Printf("etcd:                    %s\n", bins.Etcd)
	fmt.Printf("kube-apiserver:          %s\n", bins.APIServer)
	fmt.Printf("kube-controller-manager: %s\n", bins.ControllerManager)
	fmt.Printf("kube-scheduler:          %s\n", bins.Scheduler)
	fmt.Printf("kubelet:                 %s\n", bins.Kubelet)
	fmt.Printf("kwok:                    %s\n", bins.Kwok)
	fmt.Printf("kube-proxy:              %s\n", nodes.KubeProxy)
	fmt.Printf("containerd:              %s\n", nodes.Containerd)
	fmt.Printf("ready in %s\n", time.Since(start).Round(time.Millisecond))
}
