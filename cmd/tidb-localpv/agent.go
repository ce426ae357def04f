package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/daemon"
	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

type agentOptions struct {
	kube             kubeFlags
	nodeName         string
	discoveryDirs    []string
	inventory        string
	stateDir         string
	resync           time.Duration
	fsWipe           string
	blockWipeCommand string
	metricsAddress   string
	mountInfo        string
	devDir           string
	byIDDir          string
	sysBlockDir      string
	deleteWorkers    int
	missingRetention time.Duration
}

func newAgentCommand() *cobra.Command {
	o := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent (the DaemonSet): publish this node's disks as local PVs, wipe and recycle them",
		Long: `The node agent finds this node's disks — every mount point directly under a
discovery directory, plus the devices and paths the inventory ConfigMap names —
and publishes each as a local PersistentVolume. When a PV is released with
reclaimPolicy Delete it wipes the disk and publishes it again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd, o) },
	}
	f := cmd.Flags()
	o.kube.register(cmd)
	f.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node's Node object (default $NODE_NAME, set from the downward API)")
	f.StringArrayVar(&o.discoveryDirs, "discovery-dir", []string{"tidb-localpv-tikv=/mnt/tidb-localpv/tikv", "tidb-localpv-pd=/mnt/tidb-localpv/pd"},
		"<storage-class>=<directory>: every mount point directly under the directory is a disk of that class (repeatable)")
	f.StringVar(&o.inventory, "inventory", "tidb-localpv/tidb-localpv-inventory", "<namespace>/<name> of the inventory ConfigMap (key "+discovery.InventoryKey+")")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/tidb-localpv", "host directory for wipe records of block disks; must survive agent restarts")
	f.DurationVar(&o.resync, "resync-period", time.Minute, "full rescan interval; only a safety net, changes are picked up from fsnotify, mount events and the API")
	f.StringVar(&o.fsWipe, "fs-wipe", string(provisioner.FSWipeAuto), "how to wipe filesystem disks: auto (reformat disks the agent formatted, delete contents otherwise), contents, reformat")
	f.StringVar(&o.blockWipeCommand, "block-wipe-command", "", `command that wipes a Block disk, "{device}" replaced by its path (e.g. "shred -n1 {device}"); empty: blkdiscard, falling back to erasing signatures`)
	f.StringVar(&o.metricsAddress, "metrics-address", ":9500", "address for /metrics, /healthz and /readyz")
	f.StringVar(&o.mountInfo, "mountinfo", discovery.DefaultMountInfo, "mount table to read and watch")
	f.StringVar(&o.devDir, "dev-dir", "/dev", "directory inventory devices must be in")
	f.StringVar(&o.byIDDir, "by-id-dir", "/dev/disk/by-id", "directory of stable device links, for Block disk identity")
	f.StringVar(&o.sysBlockDir, "sys-block-dir", "/sys/class/block", "sysfs block directory, for Block disk identity")
	f.IntVar(&o.deleteWorkers, "delete-workers", 2, "released PVs wiped in parallel")
	f.DurationVar(&o.missingRetention, "missing-disk-retention", 24*time.Hour, "how long the LocalDisk of a disk that is gone (and has no PV) is kept before it is removed")
	for _, hidden := range []string{"mountinfo", "dev-dir", "by-id-dir", "sys-block-dir"} {
		_ = f.MarkHidden(hidden)
	}
	return cmd
}

func (o *agentOptions) config() (daemon.Config, error) {
	cfg := daemon.Config{
		NodeName: o.nodeName, StateDir: o.stateDir, ResyncPeriod: o.resync,
		MountInfo: o.mountInfo, DevDir: o.devDir, ByIDDir: o.byIDDir, SysBlockDir: o.sysBlockDir,
		DeleteWorkers: o.deleteWorkers, MissingDiskRetention: o.missingRetention,
	}
	if cfg.NodeName == "" {
		return cfg, fmt.Errorf("--node-name is empty and NODE_NAME is not set; the DaemonSet sets it from spec.nodeName")
	}
	for _, s := range o.discoveryDirs {
		if err := expanded("--discovery-dir", s); err != nil {
			return cfg, err
		}
		r, err := discovery.ParseRoot(s)
		if err != nil {
			return cfg, fmt.Errorf("--discovery-dir: %w", err)
		}
		// The mount table lists real paths; a root behind a symlink would
		// never match it.
		if real, err := filepath.EvalSymlinks(r.Dir); err == nil {
			r.Dir = real
		}
		cfg.Roots = append(cfg.Roots, r)
	}
	if err := cfg.Roots.Validate(); err != nil {
		return cfg, fmt.Errorf("--discovery-dir: %w", err)
	}
	if err := expanded("--inventory", o.inventory); err != nil {
		return cfg, err
	}
	ns, name, ok := strings.Cut(o.inventory, "/")
	if !ok || ns == "" || name == "" {
		return cfg, fmt.Errorf("--inventory %q: want <namespace>/<name>", o.inventory)
	}
	cfg.InventoryNamespace, cfg.InventoryName = ns, name
	mode, err := provisioner.ParseFSWipeMode(o.fsWipe)
	if err != nil {
		return cfg, fmt.Errorf("--fs-wipe: %w", err)
	}
	cfg.FSWipe = mode
	if o.blockWipeCommand != "" {
		cfg.BlockWipeCommand = strings.Fields(o.blockWipeCommand)
		if !strings.Contains(o.blockWipeCommand, "{device}") {
			return cfg, fmt.Errorf("--block-wipe-command %q does not mention {device}", o.blockWipeCommand)
		}
	}
	if o.resync <= 0 {
		return cfg, fmt.Errorf("--resync-period must be positive")
	}
	if o.missingRetention <= 0 {
		return cfg, fmt.Errorf("--missing-disk-retention must be positive")
	}
	if !filepath.IsAbs(o.stateDir) {
		return cfg, fmt.Errorf("--state-dir %q must be absolute", o.stateDir)
	}
	return cfg, nil
}

func runAgent(cmd *cobra.Command, o *agentOptions) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	restCfg, err := o.kube.config("tidb-localpv-agent")
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	ctx := klog.NewContext(cmd.Context(), klog.Background().WithValues("node", cfg.NodeName))
	reg := newRegistry()
	deps := daemon.OSDeps(client, cfg, reg)
	deps.Dynamic = dyn
	agent, err := daemon.New(cfg, deps)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHealth(ctx, o.metricsAddress, reg, agent.Ready) })
	g.Go(func() error { return agent.Run(ctx) })
	return g.Wait()
}

// expanded rejects a flag value that still holds a $(VAR) reference: the
// kubelet leaves one it cannot resolve as it is, and the agent would then
// watch a namespace or class literally named "$(VAR)" and never say why.
func expanded(flag, value string) error {
	if i := strings.Index(value, "$("); i >= 0 {
		ref, _, _ := strings.Cut(value[i:], ")")
		return fmt.Errorf("%s %q holds %s) unexpanded: define %s in the container's env (see manifests/)", flag, value, ref, strings.TrimPrefix(ref, "$("))
	}
	return nil
}
