package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// How long a real node may take to come up; on this machine kubelet start
// → Ready takes about a second once containerd answers.
const (
	realNodeReadyTimeout = 2 * time.Minute
	containerdTimeout    = time.Minute
	powerOffTimeout      = 20 * time.Second
)

// nodePrivateDirs are mounted as a fresh tmpfs in each real node's mount
// namespace. Whatever kubelet, containerd, runc and the CNI plugins write
// there by default — /var/lib/cni, /var/lib/kubelet/device-plugins,
// /var/log/containers, /run/containerd (shim sockets) — stays the node's own
// and vanishes with it, and the node's hostPath directories get mount points
// without anything being created on the host.
var nodePrivateDirs = []string{"/run", "/var/lib", "/var/log", "/mnt"}

// RealNodeConfig describes one real node.
type RealNodeConfig struct {
	// Dirs maps a directory of the node (below one of /run, /var/lib,
	// /var/log, /mnt) to the host directory that backs it. Each is a shared
	// mount both ways: what a privileged pod mounts below it with
	// Bidirectional propagation appears on the host, and what the host
	// mounts below it appears in the node.
	Dirs map[string]string
	// Images are docker-archive tarballs imported into the node's containerd.
	Images []string
	// Labels are added to the Node through kubelet's --node-labels.
	Labels map[string]string
}

// RealNode is a kubelet with its own containerd, in a mount namespace of
// its own: a machine of the cluster as far as Kubernetes can tell.
type RealNode struct {
	Name string
	// Dir holds the node's state: containerd, kubelet, configs, pod logs.
	Dir string
	// Started is when its containerd was started, KubeletStarted when its
	// kubelet was (images imported), Ready when the Node first reported
	// Ready.
	Started, KubeletStarted, Ready time.Time

	c          *Cluster
	index      int
	cgroup     string
	bridge     string
	socket     string
	hostBinds  []string
	containerd *process
	kubelet    *process

	mu  sync.Mutex
	off bool
}

// realNet is the cluster's part of the host while it has real nodes.
type realNet struct {
	id      string // in every interface and cgroup name of this cluster
	bins    NodeBinaries
	unlock  func()
	sysctls sysctls
	dns     *clusterDNS
	// preexisting are the hostPathsNodesMustNotCreate that were there
	// before the cluster started (someone else's).
	preexisting map[string]bool

	mu    sync.Mutex
	nodes []*RealNode
	errs  []error // teardown failures, for Leftovers
}

// AddRealNode starts a real node and waits until its Node is Ready. The
// cluster must have been started with Config.RealNodes.
func (c *Cluster) AddRealNode(ctx context.Context, name string, cfg RealNodeConfig) (_ *RealNode, err error) {
	r := c.real
	if r == nil {
		return nil, errors.New("add real node: the cluster was started without Config.RealNodes")
	}
	for p := range cfg.Dirs {
		if !underPrivateDir(p) {
			return nil, fmt.Errorf("add real node %s: %s is not below one of %v", name, p, nodePrivateDirs)
		}
	}
	r.mu.Lock()
	n := &RealNode{
		Name:   name,
		Dir:    filepath.Join(c.WorkDir, realNodesDir, name),
		c:      c,
		index:  len(r.nodes),
		cgroup: "/" + linkPrefix + r.id + "-" + name,
		bridge: bridgeName(r.id, len(r.nodes)),
	}
	n.socket = filepath.Join(n.Dir, "containerd.sock")
	r.nodes = append(r.nodes, n)
	r.mu.Unlock()
	defer func() {
		if err != nil {
			err = fmt.Errorf("add real node %s: %w", name, err)
		}
	}()
	for _, d := range []string{"containerd/root", "containerd/state", "containerd/opt", "runc", "cni/net.d", "cni/ipam", "kubelet/root", "kubelet/pki", "pod-logs", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := n.writeConfigs(cfg); err != nil {
		return nil, err
	}
	if err := createCgroupRoot(n.cgroup); err != nil {
		return nil, err
	}
	// Sorted, so a directory is bound before one below it.
	for _, p := range slices.Sorted(maps.Keys(cfg.Dirs)) {
		if err := shareHostDir(cfg.Dirs[p]); err != nil {
			return nil, err
		}
		n.hostBinds = append(n.hostBinds, cfg.Dirs[p])
	}

	n.Started = time.Now()
	if err := n.startContainerd(ctx, cfg.Dirs); err != nil {
		return nil, err
	}
	for _, img := range cfg.Images {
		if err := n.ImportImage(ctx, img); err != nil {
			return nil, err
		}
	}
	n.KubeletStarted = time.Now()
	if err := n.startKubelet(cfg.Labels); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		return nil, err
	}
	// kubelet has rewritten its kernel tunables by now; put them back.
	if err := r.sysctls.restore(); err != nil {
		return nil, err
	}
	return n, nil
}

func underPrivateDir(p string) bool {
	for _, d := range nodePrivateDirs {
		if strings.HasPrefix(filepath.Clean(p), d+"/") {
			return true
		}
	}
	return false
}

// shareHostDir makes dir a mount of its own in a peer group of its own, so
// that node namespaces binding it propagate mounts both ways with the host
// (and with nothing else: / may itself be shared on other hosts).
func shareHostDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{{"--bind", dir, dir}, {"--make-private", dir}, {"--make-shared", dir}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("mount %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// nodeNamespaceScript prepares the node's mount namespace (the shell runs
// in it, made by unshare) and execs containerd. The parent mount of each
// private dir is made private first, so nothing mounted here propagates to
// the host; the bound host dirs keep their own shared peer groups.
//
// The namespace starts as a copy of the host's mounts, and a copy holds a
// filesystem alive: a loop device another test environment mounted below
// foreignRoot could not be reformatted or detached by its owner while this
// node runs. So the private mounts below foreignRoot are dropped from the
// copy (lazily: only this namespace loses them), except those below keep —
// the node's own. Shared mounts stay: unmounting one would propagate to
// its peers on the host.
func nodeNamespaceScript(dirs map[string]string, foreignRoot string, keep []string, containerd []string) string {
	var b strings.Builder
	b.WriteString("set -e\n")
	if foreignRoot != "" {
		b.WriteString("findmnt -rn -o TARGET,PROPAGATION | while read -r target prop; do\n")
		fmt.Fprintf(&b, "\tcase \"$target\" in %s/*) ;; *) continue ;; esac\n", shellQuote(filepath.Clean(foreignRoot)))
		for _, k := range keep {
			k = shellQuote(filepath.Clean(k))
			fmt.Fprintf(&b, "\tcase \"$target\" in %s|%s/*) continue ;; esac\n", k, k)
		}
		// A mount below one already dropped went with it.
		b.WriteString("\t[ \"$prop\" = private ] && umount -l \"$target\" 2>/dev/null || true\n")
		b.WriteString("done\n")
	}
	for _, d := range nodePrivateDirs {
		fmt.Fprintf(&b, "mount --make-private \"$(findmnt -n -o TARGET --target %s)\"\n", d)
		fmt.Fprintf(&b, "mount -t tmpfs -o mode=0755,size=256m tlpv-node %s\n", d)
	}
	for _, p := range slices.Sorted(maps.Keys(dirs)) {
		fmt.Fprintf(&b, "mkdir -p %s\nmount --bind %s %s\n", shellQuote(p), shellQuote(dirs[p]), shellQuote(p))
	}
	// kubelet allows HostToContainer propagation (the DaemonSet's /dev)
	// only from a shared or slave mount; a machine with systemd has /dev
	// shared, this VM's is private. Only the node's copy changes.
	b.WriteString("mount --make-shared /dev\n")
	b.WriteString("exec")
	for _, a := range containerd {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (n *RealNode) startContainerd(ctx context.Context, dirs map[string]string) error {
	bins := n.c.real.bins
	keep := []string{n.c.WorkDir}
	for _, d := range dirs {
		keep = append(keep, d)
	}
	slices.Sort(keep)
	script := nodeNamespaceScript(dirs, os.TempDir(), keep, []string{bins.Containerd, "--config", filepath.Join(n.Dir, "containerd.toml")})
	env := processEnv([]string{"PATH=" + filepath.Dir(bins.ContainerdShim) + ":" + os.Getenv("PATH")})
	p, err := startProcess("containerd-"+n.Name, "unshare", []string{"--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", script}, env, filepath.Join(n.c.WorkDir, "logs"))
	if err != nil {
		return err
	}
	n.containerd = p
	return n.c.waitForProcess(ctx, p, "containerd of "+n.Name, containerdTimeout, func(ctx context.Context) error {
		_, err := n.Ctr(ctx, "version")
		return err
	})
}

// Ctr runs ctr against the node's containerd in the CRI namespace.
func (n *RealNode) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, n.c.real.bins.Ctr, append([]string{"--address", n.socket, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// ImportImage imports a docker-archive into the node's containerd.
func (n *RealNode) ImportImage(ctx context.Context, archive string) error {
	_, err := n.Ctr(ctx, "images", "import", archive)
	return err
}

func (n *RealNode) startKubelet(labels map[string]string) error {
	r := n.c.real
	args := []string{
		"--mount=/proc/" + strconv.Itoa(n.containerd.pid()) + "/ns/mnt", "--",
		r.bins.Kubelet,
		"--config=" + filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig=" + filepath.Join(n.Dir, "kubelet.kubeconfig"),
		"--root-dir=" + filepath.Join(n.Dir, "kubelet/root"),
		"--cert-dir=" + filepath.Join(n.Dir, "kubelet/pki"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + hostAddress,
	}
	if len(labels) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			kv = append(kv, k+"="+labels[k])
		}
		args = append(args, "--node-labels="+strings.Join(kv, ","))
	}
	p, err := startProcess("kubelet-"+n.Name, "nsenter", args, processEnv(nil), filepath.Join(n.c.WorkDir, "logs"))
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

func (n *RealNode) waitReady(ctx context.Context) error {
	return n.c.waitForProcess(ctx, n.kubelet, "node "+n.Name+" Ready", realNodeReadyTimeout, func(ctx context.Context) error {
		if n.containerd.exited() {
			return errStop{n.containerd.exitError()}
		}
		node, err := n.c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				n.Ready = time.Now()
				return nil
			}
		}
		return errors.New("not Ready yet")
	})
}

// PodLogsDir is where kubelet keeps the pods' container logs
// (<namespace>_<pod>_<uid>/<container>/<restart>.log).
func (n *RealNode) PodLogsDir() string { return filepath.Join(n.Dir, "pod-logs") }

// KubeletLog and ContainerdLog are the daemons' logs.
func (n *RealNode) KubeletLog() string    { return n.kubelet.logPath }
func (n *RealNode) ContainerdLog() string { return n.containerd.logPath }

// PowerOff ends the node the way pulling its plug would: every container
// of it, its shims, containerd and kubelet are killed at once. Its Node
// object stays (a dead machine does not deregister); its mounts below the
// shared host dirs stay too, as they would on the disks of a dead machine.
func (n *RealNode) PowerOff() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.off {
		return nil
	}
	n.off = true
	var errs []error
	if n.kubelet != nil {
		killGroup(n.kubelet.pid(), syscall.SIGKILL)
		<-n.kubelet.done
	}
	errs = append(errs, killCgroup(n.cgroup, powerOffTimeout))
	killShims(n.socket)
	if n.containerd != nil {
		killGroup(n.containerd.pid(), syscall.SIGKILL)
		<-n.containerd.done
	}
	// A shim started while we were killing would still be there.
	killShims(n.socket)
	errs = append(errs, killCgroup(n.cgroup, powerOffTimeout))
	return errors.Join(errs...)
}

// killShims kills the containerd shims serving the containerd at socket.
// They daemonize, so no process group or parent death reaches them; their
// command line names the socket.
func killShims(socket string) {
	for _, pid := range processesNaming(socket) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// processesNaming lists the processes whose command line contains s.
func processesNaming(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(raw, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

// teardown powers the node off and removes what it had on the host:
// mounts below the shared dirs (the agent's, too), the bind mounts, the
// cgroups, the bridge.
func (n *RealNode) teardown() error {
	errs := []error{n.PowerOff()}
	for i := len(n.hostBinds) - 1; i >= 0; i-- {
		errs = append(errs, unmountTree(n.hostBinds[i]))
	}
	errs = append(errs, removeCgroupRoot(n.cgroup, powerOffTimeout), deleteLink(n.bridge))
	return errors.Join(errs...)
}

// unmountTree unmounts every mount at or below dir on the host, deepest
// first.
func unmountTree(dir string) error {
	var errs []error
	for {
		mounts := mountsBelow(dir)
		if len(mounts) == 0 {
			return errors.Join(errs...)
		}
		slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
		progressed := false
		for _, m := range mounts {
			if err := syscall.Unmount(m, 0); err == nil {
				progressed = true
			} else if err := syscall.Unmount(m, syscall.MNT_DETACH); err == nil {
				progressed = true
			} else {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
		if !progressed {
			return errors.Join(errs...)
		}
	}
}

// mountsBelow lists the mount points at or below dir in our mount table.
func mountsBelow(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := unescapeMountPath(f[4])
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// errStop ends a waitForProcess at once.
type errStop struct{ err error }

func (e errStop) Error() string { return e.err.Error() }

// waitForProcess is waitFor that also gives up when p exits.
func (c *Cluster) waitForProcess(ctx context.Context, p *process, what string, timeout time.Duration, ready func(context.Context) error) error {
	return c.waitFor(ctx, what, timeout, func(ctx context.Context) error {
		if p.exited() {
			return errStop{p.exitError()}
		}
		return ready(ctx)
	})
}

// Pids lists every process running in the node's containers (its cgroup
// tree), for measuring them.
func (n *RealNode) Pids() []int { return cgroupProcs(n.cgroup) }
