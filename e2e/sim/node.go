package sim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
)

// Node is a simulated node: a kwok Node object, a host root directory that
// stands for its filesystem, and our agent running against it.
type Node struct {
	Name string
	// Root stands for the node's "/": the agent's host paths live below it.
	Root string
	// Real is the kubelet node when the node is real (AddRealNode); nil
	// for a kwok node, whose agent runs as a local process.
	Real *cluster.RealNode
	env  *Env

	mu          sync.Mutex
	agent       *cluster.Process
	runs        int
	metricsAddr string // host:port of the current agent's /metrics, /readyz
}

// AddNode creates a kwok node and its host root; the agent is not started.
func (e *Env) AddNode(ctx context.Context, name string) (*Node, error) {
	if _, err := e.Cluster.AddNode(ctx, name, nil); err != nil {
		return nil, err
	}
	n := &Node{Name: name, Root: filepath.Join(e.opts.WorkDir, "nodes", name), env: e}
	if err := os.MkdirAll(n.Root, 0o755); err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.nodes = append(e.nodes, n)
	e.mu.Unlock()
	return n, nil
}

// Path is where a host path of this node lives on the machine.
func (n *Node) Path(hostPath string) string { return filepath.Join(n.Root, hostPath) }

// ClassDir is the discovery directory of a StorageClass on this node, as
// the DaemonSet configures it.
func (n *Node) ClassDir(class string) string {
	for _, a := range n.env.AgentArgs {
		if v, ok := strings.CutPrefix(a, "--discovery-dir="); ok {
			if c, dir, _ := strings.Cut(v, "="); c == class {
				return n.Path(dir)
			}
		}
	}
	return n.Path("/mnt/tidb-localpv/" + class)
}

// StartAgent runs the agent with the DaemonSet's arguments, rebased under
// the node's root, as the agent's ServiceAccount.
func (n *Node) StartAgent(ctx context.Context) error {
	args, err := Rebase(n.env.AgentArgs, n.Root)
	if err != nil {
		return err
	}
	args = append(args, "--kubeconfig="+n.env.AgentKubeconfig, "--resync-period=5m")
	args = append(args, n.env.opts.ExtraAgentArgs...)
	env := append(os.Environ(), "NODE_NAME="+n.Name)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent != nil && !n.agent.Exited() {
		return fmt.Errorf("agent of %s is already running", n.Name)
	}
	n.runs++
	logDir := filepath.Join(n.env.opts.WorkDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	p, err := cluster.StartProcess(fmt.Sprintf("agent-%s-%d", n.Name, n.runs), n.env.Binary, args, env, logDir)
	if err != nil {
		return err
	}
	n.agent = p
	n.metricsAddr = flagValue(args, "--metrics-address")
	return nil
}

func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// StopAgent stops the agent gracefully.
func (n *Node) StopAgent() {
	n.mu.Lock()
	p := n.agent
	n.mu.Unlock()
	if p != nil {
		p.Stop()
	}
}

// KillAgent kills the agent with SIGKILL, as a crash would.
func (n *Node) KillAgent() {
	n.mu.Lock()
	p := n.agent
	n.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// AgentLog is the current agent's log file.
func (n *Node) AgentLog() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil {
		return ""
	}
	return n.agent.LogPath()
}

// MountDisk mounts a tmpfs disk of size (e.g. "64m") at <class dir>/<name>.
func (n *Node) MountDisk(class, name, size string) (string, error) {
	dir := filepath.Join(n.ClassDir(class), name)
	return dir, n.env.Host.MountTmpfs(dir, size)
}
