package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// writeConfigs writes the node's containerd config, CNI network, kubelet
// configuration and kubeconfig.
func (n *RealNode) writeConfigs(cfg RealNodeConfig) error {
	ports, err := FreePorts(2)
	if err != nil {
		return err
	}
	creds, err := n.c.issueClientCert("system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"containerd.toml":            []byte(containerdConfig(n.Dir, n.socket)),
		"cni/net.d/10-tlpv.conflist": cniConfig(n.bridge, nodeSubnet(n.index), filepath.Join(n.Dir, "cni/ipam")),
	}
	kc, err := kubeletConfig(n, ports[0], ports[1])
	if err != nil {
		return err
	}
	files["kubelet.yaml"] = kc
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(n.Dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return writeKubeconfig(filepath.Join(n.Dir, "kubelet.kubeconfig"), n.c.layout.apiServerURL(), n.c.caPEM, "system:node:"+n.Name, creds)
}

// containerdConfig is containerd 2.4's configuration (version 4) for one
// node: every path its own, and the two settings this VM needs —
// restrict_oom_score_adj (no CAP_SYS_RESOURCE: kubelet's negative
// oom_score_adj for sandboxes would fail every pod) and cgroupfs.
func containerdConfig(dir, socket string) string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	return strings.Join([]string{
		`version = 4`,
		`root = ` + q(filepath.Join(dir, "containerd/root")),
		`state = ` + q(filepath.Join(dir, "containerd/state")),
		// Tracing and NRI are not used; NRI would open a socket in /var/run.
		`disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]`,
		``,
		// Version 4 configures the servers as plugins.
		`[plugins.'io.containerd.server.v1.grpc']`,
		`  address = ` + q(socket),
		`[plugins.'io.containerd.server.v1.ttrpc']`,
		`  address = ` + q(socket+".ttrpc"),
		`[plugins.'io.containerd.internal.v1.opt']`,
		`  path = ` + q(filepath.Join(dir, "containerd/opt")),
		`[plugins.'io.containerd.cri.v1.runtime']`,
		`  restrict_oom_score_adj = true`,
		`  netns_mounts_under_state_dir = true`,
		`  enable_selinux = false`,
		`  disable_apparmor = true`,
		`[plugins.'io.containerd.cri.v1.runtime'.containerd]`,
		`  default_runtime_name = "runc"`,
		`[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]`,
		`  runtime_type = "io.containerd.runc.v2"`,
		`[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]`,
		`  BinaryName = ` + q(runcPath),
		`  Root = ` + q(filepath.Join(dir, "runc")),
		`  SystemdCgroup = false`,
		`[plugins.'io.containerd.cri.v1.runtime'.cni]`,
		`  bin_dirs = [` + q(cniBinDir) + `]`,
		`  conf_dir = ` + q(filepath.Join(dir, "cni/net.d")),
		`[plugins.'io.containerd.cri.v1.images'.pinned_images]`,
		`  sandbox = ` + q(PauseImage),
		`[plugins.'io.containerd.grpc.v1.cri']`,
		`  stream_server_address = "127.0.0.1"`,
		`  stream_server_port = "0"`,
		``,
	}, "\n")
}

// PauseImage is the sandbox image the real nodes' containerd runs; the
// e2e image package builds it (nothing is pulled).
const PauseImage = "tidb-localpv.local/pause:e2e"

// cniConfig is one bridge per node with its own /24. ipMasq stays off:
// pods only talk to the host and to each other, so no NAT rule is needed.
func cniConfig(bridge, subnet, ipamDir string) []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "tlpv",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": subnet}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": ipamDir,
				},
			},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return b
}

// kubeletConfig is the node's KubeletConfiguration, with the settings the
// VM needs (cgroup v1, cgroupfs) and everything kept below the node's dir.
func kubeletConfig(n *RealNode, port, healthzPort int) ([]byte, error) {
	c := map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            hostAddress,
		"port":               port,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        healthzPort,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": n.c.layout.pki.CACert},
		},
		"authorization":            map[string]any{"mode": "Webhook"},
		"containerRuntimeEndpoint": "unix://" + n.socket,
		"cgroupDriver":             "cgroupfs",
		"cgroupRoot":               n.cgroup,
		"failCgroupV1":             false,
		"failSwapOn":               false,
		"podLogsDir":               n.PodLogsDir(),
		"volumePluginDir":          filepath.Join(n.Dir, "volume-plugins"),
		"rotateCertificates":       false,
		"serverTLSBootstrap":       false,
		// Status every 2 s, so Ready and NotReady show quickly.
		"nodeStatusUpdateFrequency": "2s",
		"nodeStatusReportFrequency": "10s",
		"clusterDNS":                []string{hostAddress},
		"clusterDomain":             clusterDomain,
		// Pods see only the cluster DNS, not the host's resolvers.
		"resolvConf": "",
		// The images were imported, not pulled: they must never be
		// collected, and a nearly full disk of the build machine must not
		// evict the agent.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%", "imagefs.available": "1%",
		},
		// kubelet's iptables canary chains are not ours to add.
		"makeIPTablesUtilChains": false,
		"shutdownGracePeriod":    "0s",
		"syncFrequency":          "10s",
	}
	return yaml.Marshal(c)
}
