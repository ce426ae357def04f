package cluster

import (
	"context"
	"path/filepath"
)

// DefaultContainerdVersion is the containerd the real nodes run. Version 2
// rather than Debian's 1.6: kubelet 1.35 accepts 1.6 only through a
// fallback that upstream removes in 1.37/1.38, and 2.x can keep network
// namespace mounts under its own state directory. It is built from the Go
// module proxy like the control plane (about 2.5 minutes cold), so no
// package of the host is needed for it and nothing starts a system-wide
// containerd.
const DefaultContainerdVersion = "v2.4.2"

// NodeBinaries are the executables of the real nodes besides the host's
// runc and CNI plugins (Debian packages, see HostPackages).
type NodeBinaries struct {
	Kubelet, KubeProxy         string
	Containerd, ContainerdShim string
	Ctr                        string
	// LockFile serializes real-node clusters on this machine: they share the
	// host's network stack (kube-proxy's nftables table, the host address).
	LockFile string
}

// NodeBuildOptions are BuildOptions plus the containerd version.
type NodeBuildOptions struct {
	BuildOptions
	ContainerdVersion string // default DefaultContainerdVersion
}

// nodeBinariesIn returns where the node binaries of these versions live.
func nodeBinariesIn(o BuildOptions, containerdVersion string) NodeBinaries {
	kubeDir := filepath.Join(o.CacheDir, "kube", o.KubeVersion)
	ctrDir := filepath.Join(o.CacheDir, "containerd", containerdVersion)
	return NodeBinaries{
		Kubelet:        filepath.Join(kubeDir, "kubelet"),
		KubeProxy:      filepath.Join(o.CacheDir, "kube-proxy", o.KubeVersion, "kube-proxy"),
		Containerd:     filepath.Join(ctrDir, "containerd"),
		ContainerdShim: filepath.Join(ctrDir, "containerd-shim-runc-v2"),
		Ctr:            filepath.Join(ctrDir, "ctr"),
		LockFile:       filepath.Join(o.CacheDir, "real-nodes.lock"),
	}
}

// EnsureNodeBinaries returns the control-plane binaries and those of the
// real nodes, building what is missing into the cache under the same lock
// as EnsureBinaries.
func EnsureNodeBinaries(ctx context.Context, opts NodeBuildOptions) (Binaries, NodeBinaries, error) {
	o, err := opts.BuildOptions.withDefaults()
	if err != nil {
		return Binaries{}, NodeBinaries{}, err
	}
	if opts.ContainerdVersion == "" {
		opts.ContainerdVersion = DefaultContainerdVersion
	}
	bins := binariesIn(o)
	nb := nodeBinariesIn(o, opts.ContainerdVersion)
	containerd := component{"containerd " + opts.ContainerdVersion, []string{nb.Containerd, nb.ContainerdShim, nb.Ctr},
		func(b *builder, ctx context.Context, outDir string) error {
			return b.buildContainerd(ctx, outDir, opts.ContainerdVersion)
		}}
	// kube-proxy comes from the same generated module as the kube
	// binaries: built after them it compiles almost nothing of its own.
	kubeProxy := component{"kube-proxy " + o.KubeVersion, []string{nb.KubeProxy}, (*builder).buildKubeProxy}
	if err := buildMissing(ctx, o, append(controlPlaneComponents(o, bins), containerd), []component{kubeProxy}); err != nil {
		return Binaries{}, NodeBinaries{}, err
	}
	return bins, nb, nil
}

// buildContainerd installs containerd, its runc shim and ctr from the
// module proxy. containerd's go.mod has no replace directives, so `go
// install pkg@version` works; the tags leave out snapshotters that need
// cgo or kernel features we do not use.
func (b *builder) buildContainerd(ctx context.Context, outDir, version string) error {
	const mod = "github.com/containerd/containerd/v2"
	args := []string{"install", "-v", "-trimpath", "-tags", "no_btrfs no_devmapper no_zfs",
		"-ldflags", "-s -w -X " + mod + "/version.Version=" + version}
	for _, cmd := range []string{"containerd", "containerd-shim-runc-v2", "ctr"} {
		args = append(args, mod+"/cmd/"+cmd+"@"+version)
	}
	return b.runGoLong(ctx, "containerd", outDir, []string{"GOBIN=" + outDir, "CGO_ENABLED=0"}, args...)
}

// buildKubeProxy builds kube-proxy from the same generated module as the
// control plane; it shares nearly all its packages with them, so on a warm
// Go build cache it is a relink. It is its own component so that adding it
// did not invalidate the cached control plane.
func (b *builder) buildKubeProxy(ctx context.Context, outDir string) error {
	return b.buildKubeCommands(ctx, "kube-proxy", outDir, []string{"k8s.io/kubernetes/cmd/kube-proxy"})
}
