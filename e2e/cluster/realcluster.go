package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"sigs.k8s.io/yaml"
)

// hostPathsNodesMustNotCreate are where kubelet, containerd, runc and the CNI
// plugins write by default. The node namespaces hide them behind tmpfs
// mounts; teardown checks that none of them appeared on the host.
var hostPathsNodesMustNotCreate = []string{
	"/var/lib/kubelet", "/var/lib/cni", "/var/lib/containerd", "/var/log/containers", "/var/log/pods",
	"/run/containerd", "/var/run/netns", "/opt/containerd", "/etc/cni", "/mnt/tidb-localpv", "/var/lib/tidb-localpv",
}

// startRealNet prepares the host for real nodes: the machine-wide lock,
// a sweep of what a crashed run may have left, the host address.
func (c *Cluster) startRealNet(ctx context.Context, bins NodeBinaries, progress io.Writer) error {
	if missing := Preflight(); len(missing) > 0 {
		return fmt.Errorf("real nodes need: %s", strings.Join(missing, "; "))
	}
	if err := os.MkdirAll(filepath.Dir(bins.LockFile), 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, bins.LockFile, progress)
	if err != nil {
		return err
	}
	idb := make([]byte, 2)
	_, _ = rand.Read(idb)
	r := &realNet{id: hex.EncodeToString(idb), bins: bins, unlock: unlock, sysctls: readSysctls()}
	r.preexisting = map[string]bool{}
	for _, p := range hostPathsNodesMustNotCreate {
		if _, err := os.Lstat(p); err == nil {
			r.preexisting[p] = true
		}
	}
	c.real = r
	// Holding the lock, anything of ours on the host is a crashed run's:
	// its shims (and their containers) first, then what they used.
	for _, pid := range processesNaming(realNodesDir + "/") {
		if isShim(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	var errs []error
	for _, l := range ourLinks(linkPrefix) {
		errs = append(errs, deleteLink(l))
	}
	for _, cg := range cgroupLeftovers(linkPrefix) {
		// Containers of a crashed run may still be running in it.
		name := strings.TrimPrefix(cg, filepath.Dir(cg))
		errs = append(errs, killCgroup(name, powerOffTimeout), removeCgroupRoot(name, powerOffTimeout))
	}
	errs = append(errs, deleteKubeProxyTables(), addHostAddress())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("prepare the host for real nodes: %w", err)
	}
	return nil
}

// realNodesDir is the directory of the work dir that holds the real
// nodes; a shim's -address names a socket below it.
const realNodesDir = "real-nodes"

// isShim reports whether pid runs containerd's runc shim.
func isShim(pid int) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && filepath.Base(exe) == "containerd-shim-runc-v2"
}

// issueClientCert issues a client certificate from the cluster CA.
func (c *Cluster) issueClientCert(user string, groups ...string) (credentials, error) {
	ca, err := loadCA(c.layout.pki)
	if err != nil {
		return credentials{}, err
	}
	return issueClient(ca, user, groups...)
}

// startKubeProxy runs kube-proxy in nftables mode for the host all real
// nodes share: it makes the kubernetes Service's ClusterIP (and every other
// Service) reach its endpoints from pods, as on any cluster.
func (c *Cluster) startKubeProxy(ctx context.Context) (healthURL string, err error) {
	dir := c.layout.path("kube-proxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	creds, err := c.issueClientCert("system:kube-proxy")
	if err != nil {
		return "", err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.layout.apiServerURL(), c.caPEM, "system:kube-proxy", creds); err != nil {
		return "", err
	}
	ports, err := FreePorts(2)
	if err != nil {
		return "", err
	}
	zero := "0s"
	conf := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]any{"kubeconfig": kubeconfig},
		"mode":               "nftables",
		"clusterCIDR":        podCIDR,
		"bindAddress":        hostAddress,
		"healthzBindAddress": net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		"metricsBindAddress": net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		"hostnameOverride":   "tidb-localpv-host",
		"nodePortAddresses":  []string{hostAddress + "/32"},
		// Zero leaves the host's conntrack sysctls alone.
		"conntrack": map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": zero, "tcpCloseWaitTimeout": zero, "udpTimeout": zero, "udpStreamTimeout": zero},
	}
	data, err := yaml.Marshal(conf)
	if err != nil {
		return "", err
	}
	confPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(confPath, data, 0o644); err != nil {
		return "", err
	}
	if err := c.start("kube-proxy", c.real.bins.KubeProxy, []string{"--config=" + confPath}, processEnv(nil)); err != nil {
		return "", err
	}
	return loopbackURL("http", ports[0]) + "/livez", nil
}

// stopRealNet undoes startRealNet once every process is stopped.
func (c *Cluster) stopRealNet() {
	r := c.real
	var errs []error
	if r.dns != nil {
		r.dns.stop()
	}
	for _, l := range ourLinks(linkPrefix + r.id) {
		errs = append(errs, deleteLink(l))
	}
	errs = append(errs, deleteKubeProxyTables(), removeHostAddress(), r.sysctls.restore())
	r.mu.Lock()
	r.errs = append(r.errs, errs...)
	r.mu.Unlock()
	r.unlock()
}

// RealNodeLeftovers lists what the real nodes left on the host after Stop:
// teardown failures, interfaces, cgroups, kube-proxy's nftables table, the
// host address, changed sysctls, shims, and default paths that appeared
// outside the work dir. (Mounts, loop devices and processes naming the
// work dir are what the harness already checks for every cluster.) It is
// empty for a cluster without real nodes.
func (c *Cluster) RealNodeLeftovers() []string {
	r := c.real
	if r == nil {
		return nil
	}
	var out []string
	r.mu.Lock()
	for _, err := range r.errs {
		if err != nil {
			out = append(out, "teardown: "+err.Error())
		}
	}
	nodes := slices.Clone(r.nodes)
	r.mu.Unlock()
	for _, l := range ourLinks(linkPrefix + r.id) {
		out = append(out, "interface "+l)
	}
	for _, cg := range cgroupLeftovers(linkPrefix + r.id) {
		out = append(out, "cgroup "+cg)
	}
	if tables, err := nftTables(); err != nil {
		out = append(out, err.Error())
	} else {
		for _, t := range tables {
			if strings.HasSuffix(t, " "+kubeProxyTable) {
				out = append(out, "nftables table "+t)
			}
		}
	}
	if hasAddress(hostAddress) {
		out = append(out, "address "+hostAddress+" on lo")
	}
	for _, d := range r.sysctls.diff() {
		out = append(out, "sysctl "+d)
	}
	for _, n := range nodes {
		for _, pid := range processesNaming(n.socket) {
			out = append(out, fmt.Sprintf("process %d naming %s", pid, n.socket))
		}
	}
	for _, p := range hostPathsNodesMustNotCreate {
		if _, err := os.Lstat(p); err == nil && !r.preexisting[p] {
			out = append(out, "file "+p)
		}
	}
	return out
}

// writeRealNodePKI adds what real nodes need to the cluster's PKI: the
// host address in the serving certificate and the apiserver's client
// certificate towards kubelets.
func (c *Cluster) writeRealNodePKI() error {
	ip, err := firstIP(serviceCIDR)
	if err != nil {
		return err
	}
	if err := reissueServing(c.layout.pki, ip, hostAddress); err != nil {
		return err
	}
	creds, err := c.issueClientCert("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return err
	}
	cert, key := c.layout.kubeletClient()
	return writeCredentials(creds, cert, key)
}
