package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func sampleDisks() []v1alpha1.LocalDisk {
	at := metav1.NewTime(now.Add(-time.Hour))
	return []v1alpha1.LocalDisk{
		{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: v1alpha1.LocalDiskSpec{NodeName: "node-b", Path: "/mnt/tidb-localpv/tikv/disk0", StorageClassName: "tidb-localpv-tikv", DiskID: "fs-2"},
			Status: v1alpha1.LocalDiskStatus{Phase: v1alpha1.PhaseForeign, Reason: "HoldsDataWithoutIdentity", Message: "empty the disk to have it published", Since: &at}},
		{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: v1alpha1.LocalDiskSpec{NodeName: "node-a", Path: "/mnt/tidb-localpv/tikv/disk0", StorageClassName: "tidb-localpv-tikv", DiskID: "fs-1"},
			Status: v1alpha1.LocalDiskStatus{Phase: v1alpha1.PhaseBound, Reason: "Bound", Capacity: "10Gi", PersistentVolume: "tlpv-node-a-disk0-1", Claim: "tidb/tikv-demo-tikv-0",
				Owner:    &v1alpha1.Owner{Name: "TiKV store 7", Component: "tikv", Pod: "tidb/demo-tikv-0", ClaimUID: "u", StoreID: 7, PDClusterID: "7714128303309438701", State: "Up"},
				Health:   &v1alpha1.Health{State: "Healthy", Since: at},
				LastWipe: &v1alpha1.Wipe{Method: "reformat", Duration: metav1.Duration{Duration: 812 * time.Millisecond}, Time: at}}},
	}
}

func TestPrintDisks_ShowsEveryDiskSortedByNodeWithWhyItIsNotPublished(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, printDisks(&out, sampleDisks(), "", now))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	require.Equal(t, []string{"NODE", "PATH", "CLASS", "CAPACITY", "PHASE", "CLAIM", "OWNER", "STATE", "HEALTH", "REASON"}, strings.Fields(lines[0]))
	require.Equal(t, []string{"node-a", "/mnt/tidb-localpv/tikv/disk0", "tidb-localpv-tikv", "10Gi", "Bound", "tidb/tikv-demo-tikv-0", "TiKV", "store", "7", "(tidb/demo-tikv-0)", "Up", "Healthy", "Bound"}, strings.Fields(lines[1]))
	require.Contains(t, lines[2], "Foreign")
	require.Contains(t, lines[2], "HoldsDataWithoutIdentity")
}

func TestPrintDisks_WideAddsThePVIdentityClusterAndLastWipe(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, printDisks(&out, sampleDisks(), "wide", now))
	s := out.String()
	for _, want := range []string{"PV", "DISK-ID", "PD-CLUSTER", "LAST-WIPE", "tlpv-node-a-disk0-1", "7714128303309438701", "reformat 812ms, 1h0m0s ago", "empty the disk to have it published"} {
		require.Contains(t, s, want)
	}
}

func TestPrintDisks_YAMLIsALocalDiskList(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, printDisks(&out, sampleDisks(), "yaml", now))
	var list v1alpha1.LocalDiskList
	require.NoError(t, yaml.Unmarshal(out.Bytes(), &list))
	require.Equal(t, "LocalDiskList", list.Kind)
	require.Len(t, list.Items, 2)
	require.Equal(t, uint64(7), list.Items[0].Status.Owner.StoreID)
}

func TestDisks_BadFlagsExitWithTheUsageCode(t *testing.T) {
	for _, args := range [][]string{{"disks", "-o", "table"}, {"disks", "-l", "a=(b"}} {
		root := newRootCommand()
		root.SetArgs(args)
		root.SetOut(&bytes.Buffer{})
		err := root.Execute()
		var e *exitError
		require.ErrorAs(t, err, &e, "%v", args)
		require.Equal(t, exitUsage, e.code)
	}
}

func TestDisks_AnUnreachableClusterExitsWithItsOwnCode(t *testing.T) {
	root := newRootCommand()
	root.SetArgs([]string{"disks", "--kubeconfig", t.TempDir() + "/none"})
	err := root.Execute()
	var e *exitError
	require.ErrorAs(t, err, &e)
	require.Equal(t, exitUnreachable, e.code)
}
