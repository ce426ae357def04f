package provisioner

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/tidb-localpv/tidb-localpv/discovery"
)

func TestPVName_IsDeterministicAndReadable(t *testing.T) {
	a := PVName("node-a", "nvme0", "fs-0123456789abcdef01234567")
	require.Equal(t, a, PVName("node-a", "nvme0", "fs-0123456789abcdef01234567"))
	require.True(t, strings.HasPrefix(a, "tlpv-node-a-nvme0-"), a)
	require.Len(t, a, len("tlpv-node-a-nvme0-")+8)
}

func TestPVName_DiffersForDifferentDiskIDsAtTheSamePath(t *testing.T) {
	ids := []string{
		"fs-0123456789abcdef01234567",
		"fs-0123456789abcdef01234568",
		"fs-ffffffffffffffffffffffff",
		"blk-0123456789abcdef01234567",
	}
	seen := map[string]string{}
	for _, id := range ids {
		name := PVName("node-a", "disk0", id)
		require.NotContains(t, seen, name, "ids %s and %s share a PV name", id, seen[name])
		seen[name] = id
	}
}

func TestPVName_IsAValidDNSSubdomainForOddNodeAndDiskNames(t *testing.T) {
	long := strings.Repeat("abcdefghij", 40)
	cases := []struct{ node, disk string }{
		{"node-a", "disk0"},
		{"Node_A.Example.COM", "Disk 0"},
		{"ip-10-0-0-1.ec2.internal", "nvme0n1"},
		{"", ""},
		{"-.-", ".."},
		{"a", "..hidden"},
		{"a", "disk..1"},
		{"a", "disk.-1"},
		{"a", "disk-.1"},
		{"a", "disk_0.-.-.x"},
		{"ünïcødé", "日本語"},
		{"a", "-leading-and-trailing-"},
		{long, long},
		{strings.Repeat("a.", 200), strings.Repeat("-.", 200) + "z"},
		{"a", strings.Repeat("x", 99) + ".-y"},
	}
	for _, c := range cases {
		name := PVName(c.node, c.disk, "fs-0123456789abcdef01234567")
		require.Empty(t, validation.IsDNS1123Subdomain(name), "node %q disk %q gave %q", c.node, c.disk, name)
		require.Equal(t, name, PVName(c.node, c.disk, "fs-0123456789abcdef01234567"))
	}
}

func testDisk() discovery.Disk {
	return discovery.Disk{
		Class: "tidb-localpv-tikv", Name: "disk0", Path: "/mnt/tikv/disk0",
		Mode: corev1.PersistentVolumeFilesystem, FSType: "ext4", MountPoint: true,
		Source: discovery.SourceDiscovery, Capacity: 10 << 30,
	}
}

func testClass(reclaim *corev1.PersistentVolumeReclaimPolicy, opts ...string) *storagev1.StorageClass {
	return &storagev1.StorageClass{
		ObjectMeta:    metav1.ObjectMeta{Name: "tidb-localpv-tikv"},
		Provisioner:   "kubernetes.io/no-provisioner",
		ReclaimPolicy: reclaim,
		MountOptions:  opts,
	}
}

func TestRenderPV_FollowsThePVContract(t *testing.T) {
	node := Node{Name: "node-a", Hostname: "node-a.example.com"}
	pv, err := RenderPV(testDisk(), Identity{ID: "fs-0123456789abcdef01234567"}, node, testClass(nil, "noatime", "nodiscard"))
	require.NoError(t, err)

	require.Equal(t, PVName("node-a", "disk0", "fs-0123456789abcdef01234567"), pv.Name)
	require.Equal(t, map[string]string{
		LabelHostname: "node-a.example.com",
		LabelNode:     "node-a",
		LabelDisk:     "fs-0123456789abcdef01234567",
	}, pv.Labels, "the hostname label is the node's hostname label, the node label its name")
	require.Equal(t, map[string]string{AnnProvisionedBy: Name}, pv.Annotations)
	require.Equal(t, "/mnt/tikv/disk0", pv.Spec.Local.Path)
	require.Equal(t, resource.NewQuantity(10<<30, resource.BinarySI).String(), pv.Spec.Capacity.Storage().String())
	require.Equal(t, corev1.PersistentVolumeFilesystem, *pv.Spec.VolumeMode)
	require.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, pv.Spec.AccessModes)
	require.Equal(t, "tidb-localpv-tikv", pv.Spec.StorageClassName)
	require.Equal(t, []string{"noatime", "nodiscard"}, pv.Spec.MountOptions)
	require.Equal(t, corev1.PersistentVolumeReclaimDelete, pv.Spec.PersistentVolumeReclaimPolicy)
	require.Equal(t, &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
			Key: LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{"node-a.example.com"},
		}}}},
	}}, pv.Spec.NodeAffinity, "the scheduler matches the hostname label, not the node name")
	require.True(t, IsOurs(pv))
}

func TestRenderPV_TakesReclaimPolicyFromTheStorageClass(t *testing.T) {
	retain, del := corev1.PersistentVolumeReclaimRetain, corev1.PersistentVolumeReclaimDelete
	cases := []struct {
		name  string
		class *corev1.PersistentVolumeReclaimPolicy
		want  corev1.PersistentVolumeReclaimPolicy
	}{
		{"unset means Delete, as for any StorageClass", nil, del},
		{"Delete", &del, del},
		{"Retain", &retain, retain},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pv, err := RenderPV(testDisk(), Identity{ID: "fs-0123456789abcdef01234567"}, Node{Name: "n"}, testClass(c.class))
			require.NoError(t, err)
			require.Equal(t, c.want, pv.Spec.PersistentVolumeReclaimPolicy)
		})
	}
}

func TestRenderPV_UsesTheNodeNameWhenTheNodeHasNoHostnameLabel(t *testing.T) {
	pv, err := RenderPV(testDisk(), Identity{ID: "fs-0123456789abcdef01234567"}, Node{Name: "node-b"}, testClass(nil))
	require.NoError(t, err)
	require.Equal(t, "node-b", pv.Labels[LabelHostname])
	require.Equal(t, []string{"node-b"}, pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values)
}

func TestRenderPV_PublishesBlockDisksWithTheirIdentitySource(t *testing.T) {
	d := discovery.Disk{Class: "tidb-localpv-tikv", Name: "sdb", Path: "/dev/sdb", Mode: corev1.PersistentVolumeBlock, Device: "/dev/sdb", Capacity: 20 << 30}
	pv, err := RenderPV(d, Identity{ID: "blk-0123456789abcdef01234567", Source: "by-id:wwn-0x5000"}, Node{Name: "n"}, testClass(nil))
	require.NoError(t, err)
	require.Equal(t, corev1.PersistentVolumeBlock, *pv.Spec.VolumeMode)
	require.Equal(t, "/dev/sdb", pv.Spec.Local.Path)
	require.Equal(t, "by-id:wwn-0x5000", pv.Annotations[AnnDiskSource])
	require.Equal(t, int64(20<<30), pv.Spec.Capacity.Storage().Value())
}

func TestRenderPV_RefusesADiskWithoutCapacity(t *testing.T) {
	d := testDisk()
	d.Capacity = 0
	_, err := RenderPV(d, Identity{ID: "fs-0123456789abcdef01234567"}, Node{Name: "n"}, testClass(nil))
	require.ErrorContains(t, err, "no capacity")
}

func TestIsOurs_NeedsOurAnnotationADiskLabelAndALocalSource(t *testing.T) {
	ours := func() *corev1.PersistentVolume {
		pv, err := RenderPV(testDisk(), Identity{ID: "fs-0123456789abcdef01234567"}, Node{Name: "n"}, testClass(nil))
		require.NoError(t, err)
		return pv
	}
	cases := []struct {
		name   string
		change func(*corev1.PersistentVolume)
		want   bool
	}{
		{"rendered by us", func(*corev1.PersistentVolume) {}, true},
		{"another provisioner", func(pv *corev1.PersistentVolume) { pv.Annotations[AnnProvisionedBy] = "local-volume-provisioner" }, false},
		{"no provisioned-by annotation", func(pv *corev1.PersistentVolume) { pv.Annotations = nil }, false},
		{"no disk label", func(pv *corev1.PersistentVolume) { delete(pv.Labels, LabelDisk) }, false},
		{"not a local volume", func(pv *corev1.PersistentVolume) {
			pv.Spec.PersistentVolumeSource = corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/mnt/tikv/disk0"}}
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pv := ours()
			c.change(pv)
			require.Equal(t, c.want, IsOurs(pv))
		})
	}
}
