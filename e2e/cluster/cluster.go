package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// How long each start-up phase may take before Start gives up. The apiserver
// needs ~3 s on 2 cores; the margins absorb a loaded machine.
const (
	apiServerTimeout = 2 * time.Minute
	componentTimeout = 2 * time.Minute
	pollInterval     = 100 * time.Millisecond
)

// Config describes a local control plane.
type Config struct {
	// WorkDir holds all state: PKI, etcd data, kubeconfigs, logs/<name>.log.
	// Required; it must not already hold a cluster.
	WorkDir  string
	Binaries Binaries
	// Progress receives start-up milestones; nil discards them.
	Progress io.Writer
	// ControllerManagerFlags and SchedulerFlags are appended to the default
	// flags, so they may override them.
	ControllerManagerFlags []string
	SchedulerFlags         []string
	// RealNodes, when set, prepares the cluster for real nodes
	// (AddRealNode): kube-apiserver listens on an address pods reach, and
	// kube-proxy and a cluster DNS serve the pods. Nil: kwok nodes only.
	RealNodes *NodeBinaries
}

// Cluster is a running control plane: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kwok for simulated nodes.
type Cluster struct {
	// AdminKubeconfig is the path of a kubeconfig with system:masters rights.
	AdminKubeconfig string
	// Client is an admin clientset.
	Client kubernetes.Interface
	// WorkDir is Config.WorkDir made absolute.
	WorkDir string

	layout     layout
	real       *realNet // nil without real nodes
	restConfig *rest.Config
	caPEM      []byte

	mu       sync.Mutex
	procs    []*process // in start order
	stopOnce sync.Once
}

// Start brings up a control plane and returns once the controller-manager,
// the scheduler and kwok are healthy and the default ServiceAccount exists.
// On error everything already started is stopped again.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.WorkDir == "" {
		return nil, errors.New("start cluster: Config.WorkDir is required")
	}
	if err := cfg.Binaries.validate(); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	workDir, err := filepath.Abs(cfg.WorkDir)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	// Reusing etcd data with a fresh PKI would leave unusable tokens and
	// certificates behind; refuse rather than guess.
	if _, err := os.Stat(filepath.Join(workDir, "etcd")); err == nil {
		return nil, fmt.Errorf("start cluster: %s already holds a cluster; use an empty work dir", workDir)
	}
	if err := os.MkdirAll(filepath.Join(workDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}

	started := time.Now()
	pki, err := writePKI(filepath.Join(workDir, "pki"), serviceCIDR)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	pp, err := freePorts()
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	l := layout{workDir: workDir, pki: pki, ports: pp, adminKubeconfig: filepath.Join(workDir, "admin.kubeconfig"), apiHost: "127.0.0.1"}
	if cfg.RealNodes != nil {
		l.apiHost = hostAddress
		l.realNodes = true
	}
	restConfig, err := adminRESTConfig(l.apiServerURL(), pki)
	if err != nil {
		return nil, fmt.Errorf("start cluster: admin client config: %w", err)
	}
	c := &Cluster{AdminKubeconfig: l.adminKubeconfig, WorkDir: workDir, layout: l, restConfig: restConfig, caPEM: restConfig.CAData}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if cfg.RealNodes != nil {
		if err := c.startRealNet(ctx, *cfg.RealNodes, progress); err != nil {
			return nil, fmt.Errorf("start cluster: %w", err)
		}
		if err := c.writeRealNodePKI(); err != nil {
			return nil, fmt.Errorf("start cluster: %w", err)
		}
	}
	if err := writeKubeconfig(l.adminKubeconfig, l.apiServerURL(), c.caPEM, adminUser,
		credentials{certPEM: restConfig.CertData, keyPEM: restConfig.KeyData}); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	if c.Client, err = kubernetes.NewForConfig(restConfig); err != nil {
		return nil, fmt.Errorf("start cluster: admin client: %w", err)
	}
	adminHTTP, err := rest.HTTPClientFor(restConfig)
	if err != nil {
		return nil, fmt.Errorf("start cluster: admin http client: %w", err)
	}
	// Health endpoints of the other components serve self-signed certs and
	// allow anonymous access; only liveness matters here.
	healthHTTP := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // health checks only
	}

	env := processEnv(nil)
	if err := c.start("etcd", cfg.Binaries.Etcd, l.etcdArgs(), env); err != nil {
		return nil, err
	}
	if err := c.waitFor(ctx, "etcd", componentTimeout, httpOK(healthHTTP, l.etcdURL()+"/health")); err != nil {
		return nil, err
	}
	if err := c.start("kube-apiserver", cfg.Binaries.APIServer, l.apiServerArgs(), env); err != nil {
		return nil, err
	}
	if err := c.waitFor(ctx, "kube-apiserver /readyz", apiServerTimeout, httpOK(adminHTTP, l.apiServerURL()+"/readyz")); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "kube-apiserver ready at %s after %s\n", l.apiServerURL(), time.Since(started).Round(time.Millisecond))
	var realChecks []check
	if cfg.RealNodes != nil {
		if c.real.dns, err = startClusterDNS(c.Client, net.JoinHostPort(hostAddress, "53")); err != nil {
			return nil, fmt.Errorf("start cluster: %w", err)
		}
		health, err := c.startKubeProxy(ctx)
		if err != nil {
			return nil, fmt.Errorf("start cluster: %w", err)
		}
		realChecks = append(realChecks, check{"kube-proxy /livez", httpOK(healthHTTP, health)})
	}

	kwokEnv := processEnv([]string{"HOME=" + filepath.Join(workDir, "kwok-home")}) // keep ~/.kwok/kwok.yaml out
	if err := os.MkdirAll(filepath.Join(workDir, "kwok-home"), 0o755); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	for _, s := range []struct {
		name, binary string
		args, env    []string
	}{
		{"kube-controller-manager", cfg.Binaries.ControllerManager, l.controllerManagerArgs(cfg.ControllerManagerFlags), env},
		{"kube-scheduler", cfg.Binaries.Scheduler, l.schedulerArgs(cfg.SchedulerFlags), env},
		{"kwok", cfg.Binaries.Kwok, l.kwokArgs(), kwokEnv},
	} {
		if err := c.start(s.name, s.binary, s.args, s.env); err != nil {
			return nil, err
		}
	}
	checks := []check{
		{"kube-controller-manager /healthz", httpOK(healthHTTP, loopbackURL("https", pp.controllerManager)+"/healthz")},
		{"kube-scheduler /healthz", httpOK(healthHTTP, loopbackURL("https", pp.scheduler)+"/healthz")},
		{"kwok /healthz", httpOK(healthHTTP, loopbackURL("http", pp.kwok)+"/healthz")},
		// The ServiceAccount admission plugin rejects pods until it exists.
		{"the default ServiceAccount", func(ctx context.Context) error {
			_, err := c.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
			return err
		}},
	}
	checks = append(checks, realChecks...)
	for _, chk := range checks {
		if err := c.waitFor(ctx, chk.what, componentTimeout, chk.ready); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(progress, "control plane ready after %s (work dir %s)\n", time.Since(started).Round(time.Millisecond), workDir)
	return c, nil
}

// RESTConfig returns a copy of the admin client config.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Stop terminates the components in reverse start order and waits for them.
// It is idempotent and safe to call concurrently (from a signal handler and
// t.Cleanup): later calls wait for the first to finish.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		procs := append([]*process(nil), c.procs...)
		c.mu.Unlock()
		if c.real != nil {
			c.real.mu.Lock()
			nodes := slices.Clone(c.real.nodes)
			c.real.mu.Unlock()
			for _, n := range nodes {
				if err := n.teardown(); err != nil {
					c.real.mu.Lock()
					c.real.errs = append(c.real.errs, fmt.Errorf("node %s: %w", n.Name, err))
					c.real.mu.Unlock()
				}
			}
		}
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
		if c.real != nil {
			c.stopRealNet()
		}
	})
}

// check is one readiness condition of Start.
type check struct {
	what  string
	ready func(context.Context) error
}

// pids returns the process ids of every component started, in start order.
func (c *Cluster) pids() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.procs))
	for _, p := range c.procs {
		out = append(out, p.pid())
	}
	return out
}

func (c *Cluster) start(name, binary string, args, env []string) error {
	p, err := startProcess(name, binary, args, env, filepath.Join(c.WorkDir, "logs"))
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
}

// waitFor polls ready until it succeeds, failing early, with the log tail,
// if any component has exited meanwhile.
func (c *Cluster) waitFor(ctx context.Context, what string, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if p := c.firstExited(); p != nil {
			return fmt.Errorf("wait for %s: %w", what, p.exitError())
		}
		last := ready(ctx)
		if last == nil {
			return nil
		}
		var stop errStop
		if errors.As(last, &stop) {
			return fmt.Errorf("wait for %s: %w", what, stop.err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last check: %v)", what, ctx.Err(), last)
		case <-ticker.C:
		}
	}
}

func (c *Cluster) firstExited() *process {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if p.exited() {
			return p
		}
	}
	return nil
}

// httpOK returns a check that GETs url and wants 200 OK.
func httpOK(client *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	}
}

// processEnv is the environment of every component: ours without ETCD_*,
// which etcd would read as flags, with overrides appended (later wins).
func processEnv(overrides []string) []string {
	env := dropEnv(os.Environ(), func(k string) bool { return strings.HasPrefix(k, "ETCD_") })
	return append(env, overrides...)
}

// validate checks that every binary is set.
func (b Binaries) validate() error {
	for name, p := range map[string]string{
		"Etcd": b.Etcd, "APIServer": b.APIServer, "ControllerManager": b.ControllerManager,
		"Scheduler": b.Scheduler, "Kwok": b.Kwok,
	} {
		if p == "" {
			return fmt.Errorf("Binaries.%s is empty (use EnsureBinaries)", name)
		}
	}
	return nil
}
