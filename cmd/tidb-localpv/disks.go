package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// Exit codes of the status commands, so scripts can tell what went wrong.
const (
	exitFailure      = 1 // anything else
	exitUsage        = 2 // bad flags or arguments
	exitUnreachable  = 3 // no kubeconfig, cluster unreachable, not authenticated
	exitNotInstalled = 4 // the LocalDisk CRD is not installed
	exitForbidden    = 5 // RBAC does not allow listing LocalDisks
)

// exitError carries the process exit code for main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitWith(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

type disksOptions struct {
	kube     kubeFlags
	node     string
	selector string
	output   string
}

func newDisksCommand() *cobra.Command {
	o := &disksOptions{}
	cmd := &cobra.Command{
		Use:   "disks",
		Short: "List every disk tidb-localpv manages, published or not, with why",
		Long: `List the LocalDisk objects: one per disk the node agents found, published
or not (foreign data, a path conflict, waiting to be wiped, missing, failed),
with the reason, its PV and claim, the TiKV store or PD member that owns it
(as confirmed in PD), and its health.

Installed as kubectl-tidb_localpv on the PATH, this is also
"kubectl tidb-localpv disks".

Exit codes: 0 listed; 2 bad flags; 3 cannot reach or authenticate to the
cluster; 4 tidb-localpv (its LocalDisk CRD) is not installed; 5 not allowed
to list LocalDisks; 1 anything else.`,
		Example: `  tidb-localpv disks
  tidb-localpv disks -o wide --node node-a
  tidb-localpv disks -l tidb-localpv.io/class=tidb-localpv-tikv -o yaml
  kubectl tidb-localpv disks --context prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	o.kube.register(cmd)
	f := cmd.Flags()
	f.StringVar(&o.node, "node", "", "only this node's disks")
	f.StringVarP(&o.selector, "selector", "l", "", "label selector (e.g. tidb-localpv.io/class=tidb-localpv-tikv)")
	f.StringVarP(&o.output, "output", "o", "", "output format: wide, json or yaml (default: a table)")
	return cmd
}

func (o *disksOptions) run(cmd *cobra.Command) error {
	switch o.output {
	case "", "wide", "json", "yaml":
	default:
		return exitWith(exitUsage, "--output %q: want wide, json or yaml", o.output)
	}
	sel, err := labels.Parse(o.selector)
	if err != nil {
		return exitWith(exitUsage, "--selector %q: %v", o.selector, err)
	}
	if o.node != "" {
		node, err := labels.Parse(provisioner.LabelNode + "=" + o.node)
		if err != nil {
			return exitWith(exitUsage, "--node %q: %v", o.node, err)
		}
		reqs, _ := node.Requirements()
		sel = sel.Add(reqs...)
	}
	cfg, err := o.kube.config("tidb-localpv-disks")
	if err != nil {
		return exitWith(exitUnreachable, "%v", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return exitWith(exitUnreachable, "%v", err)
	}
	list, err := dyn.Resource(v1alpha1.Resource).List(cmd.Context(), metav1.ListOptions{LabelSelector: sel.String()})
	switch {
	case apierrors.IsNotFound(err) || meta.IsNoMatchError(err):
		return exitWith(exitNotInstalled, "the LocalDisk API (localdisks.tidb-localpv.io) is not installed in this cluster: install or upgrade tidb-localpv (kubectl apply -k manifests/)")
	case apierrors.IsForbidden(err):
		return exitWith(exitForbidden, "not allowed to list localdisks.tidb-localpv.io: ask for get/list on it (the tidb-localpv-viewer ClusterRole grants it): %v", err)
	case apierrors.IsUnauthorized(err):
		return exitWith(exitUnreachable, "the cluster did not accept your credentials: %v", err)
	case err != nil:
		var status apierrors.APIStatus
		if errors.As(err, &status) {
			return exitWith(exitFailure, "list LocalDisks: %v", err)
		}
		return exitWith(exitUnreachable, "cannot reach the cluster at %s: %v", cfg.Host, err)
	}
	disks := make([]v1alpha1.LocalDisk, 0, len(list.Items))
	for _, u := range list.Items {
		var ld v1alpha1.LocalDisk
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ld); err != nil {
			return exitWith(exitFailure, "LocalDisk %s: %v", u.GetName(), err)
		}
		disks = append(disks, ld)
	}
	return printDisks(cmd.OutOrStdout(), disks, o.output, time.Now())
}

// printDisks writes the disks sorted by node and path, as a table (the
// default and "wide") or as a LocalDiskList in JSON or YAML.
func printDisks(w io.Writer, disks []v1alpha1.LocalDisk, output string, now time.Time) error {
	sort.Slice(disks, func(i, j int) bool {
		a, b := disks[i], disks[j]
		if a.Spec.NodeName != b.Spec.NodeName {
			return a.Spec.NodeName < b.Spec.NodeName
		}
		return a.Spec.Path < b.Spec.Path
	})
	switch output {
	case "json", "yaml":
		list := v1alpha1.LocalDiskList{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: v1alpha1.ListKind}, Items: disks}
		data, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return err
		}
		if output == "yaml" {
			if data, err = yaml.JSONToYAML(data); err != nil {
				return err
			}
		}
		_, err = fmt.Fprintln(w, strings.TrimRight(string(data), "\n"))
		return err
	}
	wide := output == "wide"
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "NODE\tPATH\tCLASS\tCAPACITY\tPHASE\tCLAIM\tOWNER\tSTATE\tHEALTH\tREASON"
	if wide {
		head += "\tPV\tDISK-ID\tPD-CLUSTER\tLAST-WIPE\tSINCE\tMESSAGE"
	}
	fmt.Fprintln(tw, head)
	for _, d := range disks {
		owner, state := "-", "-"
		if o := d.Status.Owner; o != nil {
			owner, state = o.Name, dash(o.State)
			if o.Pod != "" {
				owner += " (" + o.Pod + ")"
			}
		}
		health := "-"
		if h := d.Status.Health; h != nil {
			health = h.State
		}
		phase := string(d.Status.Phase)
		if d.Status.NodeLost != nil {
			phase += ",NodeLost"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s",
			d.Spec.NodeName, d.Spec.Path, d.Spec.StorageClassName, dash(d.Status.Capacity), dash(phase),
			dash(d.Status.Claim), owner, state, health, dash(d.Status.Reason))
		if wide {
			cluster, wipe, since := "-", "-", "-"
			if o := d.Status.Owner; o != nil && o.PDClusterID != "" {
				cluster = o.PDClusterID
			}
			if lw := d.Status.LastWipe; lw != nil {
				wipe = fmt.Sprintf("%s %s, %s ago", lw.Method, lw.Duration.Round(time.Millisecond), now.Sub(lw.Time.Time).Round(time.Second))
			}
			if d.Status.Since != nil {
				since = now.Sub(d.Status.Since.Time).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\t%s\t%s", dash(d.Status.PersistentVolume), dash(d.Spec.DiskID), cluster, wipe, since, dash(d.Status.Message))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
