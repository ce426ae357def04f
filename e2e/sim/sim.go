// Package sim runs tidb-localpv on a real local control plane: kwok nodes,
// each with our real agent binary as a local process, real directories and
// (as root) real tmpfs mounts and loop devices as its disks. The e2e suite
// and the playground both use it.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
)

// Namespace and ServiceAccount of the agent, as in manifests/.
const (
	Namespace      = "tidb-localpv"
	AgentAccount   = "tidb-localpv-agent"
	InventoryName  = "tidb-localpv-inventory"
	agentDaemonSet = "manifests/agent-daemonset.yaml"
)

// Options configure an Env.
type Options struct {
	// RepoRoot is the repository (holding go.mod and manifests/).
	RepoRoot string
	// WorkDir holds everything; it is removed by Close.
	WorkDir  string
	Progress io.Writer
	// SchedulerFlags and ControllerManagerFlags pass through to the cluster.
	SchedulerFlags         []string
	ControllerManagerFlags []string
	// ExtraAgentArgs are appended to the DaemonSet's arguments (e.g. -v=4).
	ExtraAgentArgs []string
	// RealNodes prepares the env for real nodes (AddRealNode): host
	// packages, kubelet, containerd and kube-proxy, the image built from the
	// work tree, and manifests/ applied with that image.
	RealNodes bool
	// Overlay is a kustomization directory relative to RepoRoot (e.g.
	// "examples/prefixed") applied instead of manifests/, still with only
	// the image replaced; Env.Install then holds the names it renders.
	// Empty applies manifests/. It needs RealNodes: the process agents and
	// controllers of kwok nodes (StartController, SetInventory) know
	// manifests/' own names only.
	Overlay string
	// Binary is a tidb-localpv binary already built from RepoRoot (see
	// BuildBinary), shared by environments that run side by side; empty
	// builds one into WorkDir.
	Binary string
}

// Install names what the env installed: the namespace and the objects the
// agent and the controller run with and act on. An overlay may move them
// to another namespace and rename them (namePrefix); the CRD and the node
// host paths keep their names.
type Install struct {
	Namespace string
	// AgentDaemonSet and ControllerDeployment are the workloads.
	AgentDaemonSet, ControllerDeployment string
	// AgentAccount and ControllerAccount are their ServiceAccounts.
	AgentAccount, ControllerAccount string
	// Inventory is the agent's inventory ConfigMap, in Namespace.
	Inventory string
	// TiKVClass and PDClass are the StorageClasses the agent publishes
	// /mnt/tidb-localpv/tikv and /mnt/tidb-localpv/pd under.
	TiKVClass, PDClass string
	// Lease is the controller's leader-election Lease, in Namespace.
	Lease string
}

// DefaultInstall is manifests/ as written.
var DefaultInstall = Install{
	Namespace:            Namespace,
	AgentDaemonSet:       AgentDaemonSet,
	ControllerDeployment: ControllerDeployment,
	AgentAccount:         AgentAccount,
	ControllerAccount:    ControllerAccount,
	Inventory:            InventoryName,
	TiKVClass:            "tidb-localpv-tikv",
	PDClass:              "tidb-localpv-pd",
	Lease:                "tidb-localpv-controller",
}

// Env is a control plane with our manifests applied and simulated nodes.
type Env struct {
	Cluster *cluster.Cluster
	Host    *hostdisk.Host
	// Binary is our tidb-localpv binary, built from the work tree.
	Binary string
	// AgentArgs are the DaemonSet's container arguments, unrebased (of
	// the rendered overlay with Options.Overlay).
	AgentArgs []string
	// Install names the installed objects: DefaultInstall, or what
	// Options.Overlay renders.
	Install Install
	// AgentKubeconfig authenticates as the agent's ServiceAccount.
	AgentKubeconfig string
	// ImageArchive and TestImages are the docker-archives of the image
	// built from the work tree and of the test images (real nodes only).
	ImageArchive, TestImages string
	opts                     Options

	mu    sync.Mutex
	nodes []*Node
	procs []*cluster.Process
}

// FindRepoRoot walks up from the working directory to the directory with
// go.mod, so tests in any package find manifests/.
func FindRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Start builds what it needs, starts the control plane and applies the
// manifests for real (kubectl apply -k manifests/).
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	// Leftover checks compare paths: they must be absolute.
	if !filepath.IsAbs(opts.WorkDir) {
		abs, err := filepath.Abs(opts.WorkDir)
		if err != nil {
			return nil, err
		}
		opts.WorkDir = abs
	}
	if opts.Overlay != "" && !opts.RealNodes {
		return nil, fmt.Errorf("overlay %s needs RealNodes: the process agents and controllers of kwok nodes run with manifests/' names", opts.Overlay)
	}
	e := &Env{Host: &hostdisk.Host{}, Install: DefaultInstall, opts: opts}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	t0 := time.Now()
	var (
		bins     cluster.Binaries
		nodeBins *cluster.NodeBinaries
	)
	if opts.RealNodes {
		bins, nodeBins, err = e.prepareRealNodes(ctx)
	} else {
		bins, err = cluster.EnsureBinaries(ctx, cluster.BuildOptions{Progress: progress})
	}
	if err != nil {
		return nil, err
	}
	e.Binary = opts.Binary
	if e.Binary == "" {
		if e.Binary, err = BuildBinary(ctx, opts.RepoRoot, filepath.Join(opts.WorkDir, "bin")); err != nil {
			return nil, err
		}
	}
	if e.AgentArgs, err = ReadContainerArgs(filepath.Join(opts.RepoRoot, agentDaemonSet)); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "binaries ready in %s\n", time.Since(t0).Round(time.Millisecond))
	e.Cluster, err = cluster.Start(ctx, cluster.Config{
		WorkDir:                filepath.Join(opts.WorkDir, "cluster"),
		Binaries:               bins,
		Progress:               progress,
		SchedulerFlags:         opts.SchedulerFlags,
		ControllerManagerFlags: opts.ControllerManagerFlags,
		RealNodes:              nodeBins,
	})
	if err != nil {
		return nil, err
	}
	manifests := filepath.Join(opts.RepoRoot, "manifests")
	if opts.RealNodes {
		if manifests, err = e.manifestsOverlay(); err != nil {
			return nil, err
		}
	}
	if opts.Overlay != "" {
		// The names come from the render, not from the overlay's
		// kustomization: what the pods run with is what counts.
		if e.Install, e.AgentArgs, err = renderInstall(ctx, manifests); err != nil {
			return nil, err
		}
	}
	if out, err := e.Cluster.Kubectl(ctx, "apply", "-k", manifests); err != nil {
		return nil, fmt.Errorf("kubectl apply -k %s: %w: %s", manifests, err, out)
	}
	// The agent's kubeconfig is for agents run as processes (kwok nodes);
	// real nodes' agents use their pod's token. Under an overlay it is
	// still made for the overlay's agent account, so that whoever uses it
	// acts with the rights the overlay grants, never with a ServiceAccount
	// the overlay did not create.
	e.AgentKubeconfig = filepath.Join(opts.WorkDir, "agent.kubeconfig")
	if err := e.Cluster.ServiceAccountKubeconfig(ctx, e.Install.Namespace, e.Install.AgentAccount, e.AgentKubeconfig); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "control plane up and manifests applied in %s\n", time.Since(t0).Round(time.Millisecond))
	return e, nil
}

// BuildBinary builds cmd/tidb-localpv into dir.
func BuildBinary(ctx context.Context, repoRoot, dir string) (string, error) {
	out := filepath.Join(dir, "tidb-localpv")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/tidb-localpv")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build tidb-localpv: %w: %s", err, b)
	}
	return out, nil
}

// ReadContainerArgs reads the first container's args of a DaemonSet or
// Deployment manifest, so the harness runs exactly what users deploy. Like
// the kubelet, it expands $(VAR) from the container's env: literal values,
// and the pod's namespace (Namespace) for a metadata.namespace field ref.
func ReadContainerArgs(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ds appsv1.DaemonSet // Deployments share the pod template's shape
	if err := yaml.Unmarshal(data, &ds); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return containerArgs(path, ds.Spec.Template.Spec, Namespace)
}

// containerArgs expands the first container's args of a pod template as
// the kubelet would for a pod in namespace; path names the template in
// errors.
func containerArgs(path string, spec corev1.PodSpec, namespace string) ([]string, error) {
	cs := spec.Containers
	if len(cs) == 0 || len(cs[0].Args) == 0 {
		return nil, fmt.Errorf("%s: no container args", path)
	}
	vars := map[string]string{}
	for _, e := range cs[0].Env {
		switch {
		case e.ValueFrom == nil:
			vars[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			vars[e.Name] = namespace
		}
	}
	args := make([]string, len(cs[0].Args))
	for i, a := range cs[0].Args {
		var unknown []string
		args[i] = envRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := ref[2 : len(ref)-1]
			v, ok := vars[name]
			if !ok {
				unknown = append(unknown, name)
			}
			return v
		})
		if len(unknown) > 0 {
			return nil, fmt.Errorf("%s: argument %q refers to %v, which the container's env does not define", path, a, unknown)
		}
	}
	return args, nil
}

// envRef is a $(VAR) reference in a container argument.
var envRef = regexp.MustCompile(`\$\([A-Za-z_][A-Za-z0-9_]*\)`)

// Rebase moves every absolute host path in args under root and gives the
// metrics listener a free loopback port, so several agents share one machine.
func Rebase(args []string, root string) ([]string, error) {
	out := make([]string, 0, len(args))
	for _, a := range args {
		name, val, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(name, "--") {
			out = append(out, a)
			continue
		}
		if name == "--metrics-address" {
			port, err := FreePort()
			if err != nil {
				return nil, err
			}
			out = append(out, fmt.Sprintf("%s=127.0.0.1:%d", name, port))
			continue
		}
		// Values are "/path" or "key=/path".
		if k, p, ok := strings.Cut(val, "="); ok && strings.HasPrefix(p, "/") {
			val = k + "=" + filepath.Join(root, p)
		} else if strings.HasPrefix(val, "/") {
			val = filepath.Join(root, val)
		}
		out = append(out, name+"="+val)
	}
	return out, nil
}

// FreePort picks a free loopback port (cluster.FreePorts says how).
func FreePort() (int, error) {
	p, err := cluster.FreePorts(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// Close stops every process, the control plane and the host disks, and
// reports anything left behind: mounts below the work dir, loop devices
// backed by files in it, and processes whose command line names it.
func (e *Env) Close() error {
	e.mu.Lock()
	nodes, procs := e.nodes, e.procs
	e.nodes, e.procs = nil, nil
	e.mu.Unlock()
	for _, n := range nodes {
		n.StopAgent()
	}
	for _, p := range procs {
		p.Stop()
	}
	var real []string
	if e.Cluster != nil {
		e.Cluster.Stop()
		real = e.Cluster.RealNodeLeftovers()
	}
	err := e.Host.Close()
	if len(real) > 0 {
		err = errors.Join(err, fmt.Errorf("real nodes left behind: %s", strings.Join(real, "; ")))
	}
	mounts, loops, lerr := hostdisk.WaitLeftovers(e.opts.WorkDir)
	switch {
	case lerr != nil:
		err = errors.Join(err, lerr)
	case len(mounts) > 0 || len(loops) > 0:
		err = errors.Join(err, fmt.Errorf("left behind: mounts %v, loop devices %v", mounts, loops))
	}
	left, perr := waitNoStragglers(e.opts.WorkDir)
	switch {
	case perr != nil:
		err = errors.Join(err, perr)
	case len(left) > 0:
		err = errors.Join(err, fmt.Errorf("left behind: processes %s", strings.Join(left, "; ")))
	}
	return err
}

// progress is where start-up progress goes.
func (e *Env) progress() io.Writer {
	if e.opts.Progress == nil {
		return io.Discard
	}
	return e.opts.Progress
}

// pdListenAddress is where the PD simulator listens: loopback, or with
// real nodes the host address their pods reach.
func (e *Env) pdListenAddress() string {
	if e.opts.RealNodes {
		return net.JoinHostPort(cluster.HostAddress, "0")
	}
	return ""
}

// WorkDir is the directory that holds everything of this env.
func (e *Env) WorkDir() string { return e.opts.WorkDir }

// StartProcess runs one more program (a controller, the PD simulator) that
// Close stops.
func (e *Env) StartProcess(name, binary string, args, env []string) (*cluster.Process, error) {
	logDir := filepath.Join(e.opts.WorkDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	p, err := cluster.StartProcess(name, binary, args, env, logDir)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}
