package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller"
	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

type controllerOptions struct {
	kube           kubeFlags
	namespace      string
	leaseName      string
	leaseDuration  time.Duration
	renewDeadline  time.Duration
	retryPeriod    time.Duration
	pdTemplate     string
	pdEndpoints    []string
	pollInterval   time.Duration
	pdTimeout      time.Duration
	pdRetries      int
	deadNodeGrace  time.Duration
	notReady       time.Duration
	stuckPodGrace  time.Duration
	workers        int
	metricsAddress string

	unresolvedGrace time.Duration
	failedDiskGrace time.Duration
}

func newControllerCommand() *cobra.Command {
	o := &controllerOptions{}
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the volume-controller: track which TiKV store or PD member owns each disk, release disks of Tombstone stores and dead nodes",
		Long: `The volume-controller records on every bound tidb-localpv PV the pod, TiDB
cluster and TiKV store (or PD member) that owns it, and releases the disk —
deletes its claim so the node agent wipes and republishes it — once PD says
the owner is gone. Run two replicas; one holds the lease and acts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runController(cmd, o) },
	}
	f := cmd.Flags()
	o.kube.register(cmd)
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "tidb-localpv"
	}
	f.StringVar(&o.namespace, "namespace", ns, "namespace of the leader-election Lease (default $POD_NAMESPACE, else tidb-localpv)")
	f.StringVar(&o.leaseName, "lease-name", "tidb-localpv-controller", "name of the leader-election Lease")
	f.DurationVar(&o.leaseDuration, "leader-elect-lease-duration", 15*time.Second, "how long a standby waits before taking over a lease that is not renewed")
	f.DurationVar(&o.renewDeadline, "leader-elect-renew-deadline", 10*time.Second, "how long the leader keeps trying to renew before it stops acting")
	f.DurationVar(&o.retryPeriod, "leader-elect-retry-period", 2*time.Second, "interval between lease renewals and acquisition attempts")
	f.StringVar(&o.pdTemplate, "pd-endpoint-template", pd.DefaultEndpointTemplate, "PD URL of a TiDB cluster; {namespace}, {instance} (label app.kubernetes.io/instance) and {label:<key>} are filled from the pod")
	f.StringArrayVar(&o.pdEndpoints, "pd-endpoint", nil, "<namespace>/<instance>=<url>: PD URL of one cluster, overriding the template (repeatable)")
	f.DurationVar(&o.pollInterval, "pd-poll-interval", 5*time.Second, "how often owners' states are read from PD (PD has no watch API)")
	f.DurationVar(&o.pdTimeout, "pd-timeout", 3*time.Second, "timeout of one PD request")
	f.IntVar(&o.pdRetries, "pd-retries", 2, "retries of a PD request that failed with a transport error or 5xx")
	f.DurationVar(&o.deadNodeGrace, "dead-node-grace", time.Minute, "how long a Node must stay deleted before its disks are acted on")
	f.DurationVar(&o.notReady, "node-notready-threshold", 0, "treat a node NotReady this long as dead (0: off; only deleted nodes count)")
	f.DurationVar(&o.stuckPodGrace, "stuck-pod-grace", 3*time.Minute, "how long a pod on a Tombstone store's disk may stay not Ready before its claim and the pod are deleted")
	f.DurationVar(&o.failedDiskGrace, "failed-disk-grace", 0, "treat a disk its agent reports Failed this long like a dead node for its TiKV store: offline the store once it stops being Up, release claim and pod once it is buried (0: off; failures are only reported)")
	f.DurationVar(&o.unresolvedGrace, "owner-unresolved-warning", 5*time.Minute, "report a TiKV or PD claim whose owner is still not confirmed in PD after this long (0: never)")
	f.IntVar(&o.workers, "workers", 4, "PVs reconciled in parallel")
	f.StringVar(&o.metricsAddress, "metrics-address", ":9501", "address for /metrics, /healthz and /readyz")
	return cmd
}

func (o *controllerOptions) config() (volumecontroller.Config, error) {
	for flag, v := range map[string]string{"--lease-name": o.leaseName, "--namespace": o.namespace} {
		if err := expanded(flag, v); err != nil {
			return volumecontroller.Config{}, err
		}
	}
	tmpl, err := pd.ParseEndpointTemplate(o.pdTemplate)
	if err != nil {
		return volumecontroller.Config{}, fmt.Errorf("--pd-endpoint-template: %w", err)
	}
	overrides := map[string]string{}
	for _, e := range o.pdEndpoints {
		key, url, ok := strings.Cut(e, "=")
		if !ok || strings.Count(key, "/") != 1 {
			return volumecontroller.Config{}, fmt.Errorf("--pd-endpoint %q: want <namespace>/<instance>=<url>", e)
		}
		if _, err := pd.New(url, pd.Options{}); err != nil {
			return volumecontroller.Config{}, fmt.Errorf("--pd-endpoint %q: %w", e, err)
		}
		overrides[key] = url
	}
	if o.pollInterval <= 0 || o.workers <= 0 || o.deadNodeGrace < 0 || o.notReady < 0 || o.stuckPodGrace < 0 || o.unresolvedGrace < 0 || o.failedDiskGrace < 0 {
		return volumecontroller.Config{}, fmt.Errorf("--pd-poll-interval and --workers must be positive, and the grace periods not negative")
	}
	if o.renewDeadline >= o.leaseDuration || o.retryPeriod >= o.renewDeadline {
		return volumecontroller.Config{}, fmt.Errorf("leader election needs retry-period < renew-deadline < lease-duration")
	}
	return volumecontroller.Config{
		Policy: volumecontroller.Policy{
			DeadNodeGrace: o.deadNodeGrace, NotReadyThreshold: o.notReady, StuckPodGrace: o.stuckPodGrace,
			UnresolvedGrace: o.unresolvedGrace, FailedDiskGrace: o.failedDiskGrace,
		},
		PDTemplate:   tmpl,
		PDOverrides:  overrides,
		PollInterval: o.pollInterval,
		PDCacheTTL:   min(time.Second, o.pollInterval/2),
		Workers:      o.workers,
	}, nil
}

func runController(cmd *cobra.Command, o *controllerOptions) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	restCfg, err := o.kube.config("tidb-localpv-controller")
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	// TiDB Operator v2's objects (Cluster, TiKV instances) have no typed
	// client here; the dynamic one reads and deletes them.
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	// The pod name (from the downward API) says which replica leads.
	id := os.Getenv("POD_NAME")
	if id == "" {
		id, _ = os.Hostname()
	}
	id += "_" + string(uuid.NewUUID())
	ctx := klog.NewContext(cmd.Context(), klog.Background().WithValues("identity", id))

	// Not cancelled with ctx: the events of the shutdown itself (the lease
	// released) must still go out; Shutdown below flushes them.
	broadcaster := record.NewBroadcaster(record.WithContext(context.WithoutCancel(ctx)))
	broadcaster.StartStructuredLogging(4)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "tidb-localpv-controller"})

	reg := newRegistry()
	var ctrl *volumecontroller.Controller
	dial := func(endpoint string) (volumecontroller.PD, error) {
		return pd.New(endpoint, pd.Options{Timeout: o.pdTimeout, Retries: o.pdRetries, Observer: ctrl.ObservePD})
	}
	ctrl, err = volumecontroller.New(cfg, volumecontroller.Deps{Client: client, Dynamic: dyn, Dial: dial, Recorder: recorder, Registry: reg})
	if err != nil {
		return err
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.namespace, o.leaseName,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id, EventRecorder: recorder})
	if err != nil {
		return fmt.Errorf("leader election lock: %w", err)
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHealth(ctx, o.metricsAddress, reg, ctrl.Ready) })
	g.Go(func() error {
		// Standbys sync their caches too, so a new leader acts at once.
		if err := ctrl.Start(ctx); err != nil {
			return err
		}
		lost := make(chan struct{})
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   o.leaseDuration,
			RenewDeadline:   o.renewDeadline,
			RetryPeriod:     o.retryPeriod,
			ReleaseOnCancel: true,
			Name:            o.leaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				// The leader context is cancelled the moment the lease is
				// lost; every worker and action stops with it.
				OnStartedLeading: ctrl.Run,
				OnStoppedLeading: func() { close(lost) },
				OnNewLeader: func(leader string) {
					klog.FromContext(ctx).Info("leader", "identity", leader, "self", leader == id)
				},
			},
		})
		select {
		case <-lost:
			if ctx.Err() != nil {
				return nil // shutting down: the lease was released on purpose
			}
			// Exit so that the Deployment restarts us as a clean standby.
			return fmt.Errorf("lost the leader lease")
		default:
			return nil
		}
	})
	return g.Wait()
}
