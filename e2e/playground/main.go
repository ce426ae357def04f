// Command playground runs tidb-localpv on a real local control plane with
// four simulated nodes, tells the life of a disk step by step — publish,
// bind, release, wipe, republish — then the volume-controller's stories
// against a simulated PD — owners recorded, a TiKV scale-in, a dead node —
// and leaves the cluster up to play with until Ctrl-C, when it tears
// everything down and checks nothing is left.
//
//	go run ./e2e/playground            # make demo
//	go run ./e2e/playground -exit      # the story only, for CI
//	go run ./e2e/playground -real-nodes   # make demo-real: the lifecycle on
//	                                      # real kubelets with containerd
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/hostdisk"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

type options struct {
	workDir   string
	exit      bool
	verbose   bool
	plainDirs bool
	realNodes bool
}

func main() {
	var o options
	flag.StringVar(&o.workDir, "work-dir", "", "directory for the cluster, the nodes' disks and all logs (default: a new temporary directory, removed at exit)")
	flag.BoolVar(&o.exit, "exit", false, "tell the story, tear down and exit (CI smoke test) instead of leaving the cluster up")
	flag.BoolVar(&o.verbose, "v", false, "show control-plane start-up progress and run the agents with -v=2")
	flag.BoolVar(&o.plainDirs, "plain-dirs", false, "use plain directories published through the inventory even as root (what a non-root run does)")
	flag.BoolVar(&o.realNodes, "real-nodes", false, "tell the disk's life on two real nodes (kubelet + containerd, the image built from the work tree, a pod writing real files) instead; needs root")
	flag.Parse()
	// client-go logs through klog; a cancelled request is not news here.
	// (With stderr off, SetOutput keeps klog from creating log files.)
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	if o.realNodes {
		os.Exit(runReal(o))
	}
	os.Exit(run(o))
}

func run(o options) int {
	started := time.Now()
	// The chronicle prints from watch goroutines while the story prints.
	out := &cluster.SyncWriter{W: os.Stdout}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopSignals := onSignal(cancel, out)
	defer stopSignals()

	root, err := sim.FindRepoRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "playground: run it from the repository: %v\n", err)
		return 2
	}
	work, owned, err := prepareWorkDir(o.workDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "playground: %v\n", err)
		return 2
	}
	progress := io.Discard
	var agentArgs []string
	if o.verbose {
		progress = prefixWriter{w: out, prefix: "    | "}
		agentArgs = []string{"-v=2"}
	}
	fmt.Fprintf(out, "tidb-localpv playground — work dir %s\n", work)
	fmt.Fprintln(out, "starting a real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) and applying manifests/ …")
	env, err := sim.Start(ctx, sim.Options{RepoRoot: root, WorkDir: work, Progress: progress, ExtraAgentArgs: agentArgs})
	if err != nil {
		// Start has stopped whatever it had started; check that it did.
		if ctx.Err() != nil {
			fmt.Fprintln(out, "interrupted during start-up")
		} else {
			fmt.Fprintf(out, "start failed: %v\n", err)
		}
		if verify(out, work, nil) && owned {
			_ = os.RemoveAll(work)
		}
		return 1
	}
	fmt.Fprintf(out, "control plane up and manifests applied after %s\n", since(started))

	code := 0
	s := &story{env: env, out: out, root: os.Geteuid() == 0 && !o.plainDirs, extraArgs: agentArgs}
	if err := s.tell(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(out, "\ninterrupted")
		} else {
			fmt.Fprintf(out, "\nthe story failed: %v\nagent and controller logs: %s\n", err, filepath.Join(work, "logs"))
			code = 1
		}
	} else {
		fmt.Fprintf(out, "\nready after %s (start to the end of the story)\n", since(started))
		if !o.exit {
			s.instructions()
			s.chron.live()
			<-ctx.Done()
			fmt.Fprintln(out)
		}
	}

	fmt.Fprintln(out, "tearing down …")
	s.closeTiDB()
	s.closeV2()
	adoptStrayMounts(out, env, work, s.mounted)
	if !verify(out, work, env.Close, s.pdLeftover()...) {
		code = 1
	}
	switch {
	case !owned:
	case code != 0:
		// The logs are what explains a failure: keep them.
		fmt.Fprintf(out, "keeping %s for its logs\n", work)
	default:
		if err := os.RemoveAll(work); err != nil {
			fmt.Fprintf(out, "remove %s: %v\n", work, err)
		}
	}
	return code
}

// onSignal cancels the story (or the wait) on the first SIGINT, SIGTERM,
// SIGHUP (the terminal went away) or SIGPIPE (stdout was piped into
// something that quit, e.g. head). Later signals are absorbed so a second
// Ctrl-C cannot cut the teardown short and strand mounts: the components
// would die with us anyway (Pdeathsig), the mounts would not.
func onSignal(cancel func(), out io.Writer) (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	done := make(chan struct{})
	go func() {
		first := true
		for {
			select {
			case <-done:
				return
			case <-sigs:
				if !first {
					fmt.Fprintln(out, "still tearing down; it takes a few seconds")
				}
				first = false
				cancel()
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}

func prepareWorkDir(dir string) (string, bool, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "tlpv-playground-")
		return d, true, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, err
	}
	return abs, false, os.MkdirAll(abs, 0o755)
}

// adoptStrayMounts hands mounts made by hand below the work dir while the
// cluster was up (the instructions suggest one) to the harness, which
// unmounts them with its own; the check after Close then holds everyone to
// the same standard.
func adoptStrayMounts(out io.Writer, env *sim.Env, work string, tracked map[string]bool) {
	mounts, _, err := hostdisk.Leftovers(work)
	if err != nil {
		return
	}
	for _, m := range mounts {
		if tracked[m] {
			continue
		}
		fmt.Fprintf(out, "  unmounting %s (mounted while you played)\n", m)
		env.Host.Track("unmount "+m, func() error { return hostdisk.Unmount(m) })
	}
}

// verify runs closeEnv (if any), then checks independently that no mount,
// loop device or process of the work dir is left, and says so. others are
// leftovers found otherwise (a PD simulator still listening).
func verify(out io.Writer, work string, closeEnv func() error, others ...string) bool {
	ok := true
	if closeEnv != nil {
		if err := closeEnv(); err != nil {
			fmt.Fprintf(out, "teardown reported: %v\n", err)
			ok = false
		}
	}
	mounts, loops, err := hostdisk.WaitLeftovers(work)
	procs, perr := sim.Stragglers(work)
	if err = errors.Join(err, perr); err != nil {
		fmt.Fprintf(out, "could not check for leftovers: %v\n", err)
		return false
	}
	fmt.Fprintf(out, "leftovers: %d processes, %d mounts, %d loop devices, %d listeners", len(procs), len(mounts), len(loops), len(others))
	if len(procs)+len(mounts)+len(loops)+len(others) == 0 {
		fmt.Fprintln(out, " — nothing left behind")
		return ok
	}
	fmt.Fprintln(out)
	for _, l := range slices.Concat(procs, mounts, loops, others) {
		fmt.Fprintf(out, "  left: %s\n", l)
	}
	return false
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

// prefixWriter indents another writer's lines.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	lines := strings.SplitAfter(string(b), "\n")
	for _, l := range lines {
		if l == "" {
			continue
		}
		if _, err := io.WriteString(p.w, p.prefix+l); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}
