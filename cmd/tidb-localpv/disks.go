package main

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/tidb-localpv/tidb-localpv/provisioner"
)

func newDisksCommand() *cobra.Command {
	var (
		kube kubeFlags
		node string
	)
	cmd := &cobra.Command{
		Use:   "disks",
		Short: "Show every disk tidb-localpv manages: where it is, its PV, its claim, and the TiKV store or PD member that owns it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := kube.client("tidb-localpv-disks")
			if err != nil {
				return err
			}
			req, err := labels.NewRequirement(provisioner.LabelDisk, selection.Exists, nil)
			if err != nil {
				return err
			}
			sel := labels.NewSelector().Add(*req)
			if node != "" {
				sel = sel.Add(mustRequirement(provisioner.LabelNode, selection.Equals, node))
			}
			list, err := client.CoreV1().PersistentVolumes().List(cmd.Context(), metav1.ListOptions{LabelSelector: sel.String()})
			if err != nil {
				return fmt.Errorf("list PVs: %w", err)
			}
			return printDisks(cmd.OutOrStdout(), list.Items)
		},
	}
	kube.register(cmd)
	cmd.Flags().StringVar(&node, "node", "", "only this node's disks")
	return cmd
}

func mustRequirement(key string, op selection.Operator, v string) labels.Requirement {
	r, err := labels.NewRequirement(key, op, []string{v})
	if err != nil {
		panic(err) // keys are constants and values come from a flag validated by the API
	}
	return *r
}

// printDisks writes the operator's table, sorted by node and path.
func printDisks(w io.Writer, pvs []corev1.PersistentVolume) error {
	sort.Slice(pvs, func(i, j int) bool {
		a, b := pvs[i], pvs[j]
		if a.Labels[provisioner.LabelNode] != b.Labels[provisioner.LabelNode] {
			return a.Labels[provisioner.LabelNode] < b.Labels[provisioner.LabelNode]
		}
		return a.Spec.Local.Path < b.Spec.Local.Path
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tDISK\tCLASS\tCAPACITY\tPV\tSTATUS\tCLAIM\tOWNER\tSTORE\tSTATE")
	for _, pv := range pvs {
		if !provisioner.IsOurs(&pv) {
			continue
		}
		claim := "-"
		if ref := pv.Spec.ClaimRef; ref != nil {
			claim = ref.Namespace + "/" + ref.Name
		}
		store := dash(pv.Annotations[provisioner.AnnStoreID])
		if m := pv.Annotations[provisioner.AnnPDMember]; m != "" {
			store = "pd:" + m
		}
		status := string(pv.Status.Phase)
		if _, missing := pv.Annotations[provisioner.AnnDiskMissing]; missing {
			status += ",DiskMissing"
		}
		if pv.DeletionTimestamp != nil {
			status += ",Terminating"
		}
		capacity := pv.Spec.Capacity[corev1.ResourceStorage]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			pv.Labels[provisioner.LabelNode], pv.Spec.Local.Path, pv.Spec.StorageClassName, capacity.String(),
			pv.Name, status, claim, dash(pv.Annotations[provisioner.AnnOwnerPod]), store, dash(pv.Annotations[provisioner.AnnOwnerState]))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
