//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/tidb-localpv/tidb-localpv/discovery"
	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
	"github.com/tidb-localpv/tidb-localpv/provisioner"
	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// Issue 9: the base applied through a namespace: + namePrefix: overlay
// (examples/prefixed) runs the whole lifecycle. Only real nodes prove it:
// there the DaemonSet and the Deployment run as the overlay renders them,
// and every name the agent and the controller use reaches them through the
// $(VAR) references of their arguments, as the kubelet expands them. The
// chapters share one environment and run in order.
func TestPrefixedOverlay_RunsTheWholeLifecycle(t *testing.T) {
	t.Parallel()
	re := startOverlayEnv(t, "examples/prefixed", "node-a")
	ctx := t.Context()
	c := re.env.Cluster.Client
	in := re.env.Install
	a := re.nodes["node-a"]
	te := &tidbEnv{env: re.env, nodes: re.nodes, pd: re.pd}

	// The names are spelled out rather than taken from the harness: the
	// harness reads them from the render, and a render that lost the
	// prefix somewhere must fail here, not be followed.
	require.Equal(t, sim.Install{
		Namespace:            "storage-system",
		AgentDaemonSet:       "acme-tidb-localpv-agent",
		ControllerDeployment: "acme-tidb-localpv-controller",
		AgentAccount:         "acme-tidb-localpv-agent",
		ControllerAccount:    "acme-tidb-localpv-controller",
		Inventory:            "acme-tidb-localpv-inventory",
		TiKVClass:            "acme-tidb-localpv-tikv",
		PDClass:              "acme-tidb-localpv-pd",
		Lease:                "acme-tidb-localpv-controller",
	}, in, "the names examples/prefixed gives the install")

	require.True(t, t.Run("the agent and the controller run in storage-system under their prefixed names, and the controller leads through the prefixed Lease", func(t *testing.T) {
		agent, err := a.AgentPod(ctx)
		require.NoError(t, err)
		require.True(t, podIsReady(agent), "agent pod %s", agent.Name)
		require.Equal(t, in.Namespace, agent.Namespace)
		require.True(t, strings.HasPrefix(agent.Name, in.AgentDaemonSet+"-"), "agent pod %s", agent.Name)
		require.Equal(t, in.AgentAccount, agent.Spec.ServiceAccountName)
		require.Equal(t, sim.Image, agent.Spec.Containers[0].Image, "the image built from the work tree, not the manifests'")

		pods, err := c.CoreV1().Pods(in.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
		require.NoError(t, err)
		var names []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || !podIsReady(&p) {
				continue
			}
			require.True(t, strings.HasPrefix(p.Name, in.ControllerDeployment+"-"), "controller pod %s", p.Name)
			require.Equal(t, in.ControllerAccount, p.Spec.ServiceAccountName)
			require.Equal(t, sim.Image, p.Spec.Containers[0].Image)
			names = append(names, p.Name)
		}
		require.Len(t, names, 2, "both controller replicas Ready")
		t.Logf("agent %s and controllers %v Running and Ready in %s", agent.Name, names, in.Namespace)

		// The identity is <pod name>_<uuid>: the holder must be one of
		// these pods, holding the overlay's Lease in the overlay's namespace.
		var holder string
		require.Eventually(t, func() bool {
			l, err := c.CoordinationV1().Leases(in.Namespace).Get(ctx, in.Lease, metav1.GetOptions{})
			if err != nil || l.Spec.HolderIdentity == nil {
				return false
			}
			holder = *l.Spec.HolderIdentity
			for _, n := range names {
				if strings.HasPrefix(holder, n+"_") {
					return true
				}
			}
			return false
		}, realWait, tick, "no controller replica holds Lease %s/%s (holder %q)", in.Namespace, in.Lease, holder)
		t.Logf("Lease %s/%s held by %s", in.Namespace, in.Lease, holder)
	}), "the later chapters need the agent and the controller")

	var (
		dev  string                  // the loop device the inventory names
		host string                  // its mount point, seen from the host
		pv   corev1.PersistentVolume // its PV
	)
	require.True(t, t.Run("an entry of the prefixed inventory ConfigMap is formatted and mounted by the agent and published as a PV and a LocalDisk of the prefixed class", func(t *testing.T) {
		var err error
		dev, err = re.env.Host.AttachLoop(filepath.Join(re.work, "node-a-ext4.img"), 64)
		require.NoError(t, err)
		setInstallInventory(ctx, t, re.env, fmt.Sprintf("disks:\n- node: node-a\n  device: %s\n  storageClass: %s\n  format: true\n", dev, in.TiKVClass))
		pv = waitPV(ctx, t, re.env, "node-a", nodePath(filepath.Base(dev)), corev1.VolumeAvailable)
		require.Equal(t, in.TiKVClass, pv.Spec.StorageClassName)
		host = nodeDisk(a, filepath.Base(dev))
		require.Equal(t, dev, mountSource(t, host), "the agent's mount, made in its container, propagates to the host")
		require.Equal(t, "ext4", mountFSType(t, host))
		id := readMarker(t, host).ID
		require.Equal(t, id, pv.Labels[provisioner.LabelDisk])

		ld := waitLocalDisk(ctx, t, re.env, id, func(ld v1alpha1.LocalDisk) bool {
			return ld.Status.Phase == v1alpha1.PhaseAvailable && ld.Status.PersistentVolume == pv.Name
		})
		require.Equal(t, in.TiKVClass, ld.Spec.StorageClassName)
		require.Equal(t, "node-a", ld.Spec.NodeName)
		t.Logf("%s formatted and mounted at %s; PV %s and LocalDisk %s of class %s Available", dev, pv.Spec.Local.Path, pv.Name, ld.Name, in.TiKVClass)
	}), "the later chapters need the disk")

	sts := realTiKV(1, 1000)
	sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName = ptr.To(in.TiKVClass)
	var owned *corev1.PersistentVolume
	require.True(t, t.Run("a TiKV pod claiming the prefixed class binds the disk, writes to it, and the controller records its store as the owner", func(t *testing.T) {
		_, err := c.AppsV1().StatefulSets(tidbNS).Create(ctx, sts, metav1.CreateOptions{})
		require.NoError(t, err)
		p := waitStatefulSetBound(ctx, t, re.env, sts, 1)[0]
		require.Equal(t, pv.Name, p.PV.Name)
		require.Equal(t, in.TiKVClass, ptr.Deref(p.Claim.Spec.StorageClassName, ""))
		require.Equal(t, "node-a", p.Pod.Spec.NodeName)
		require.Eventually(t, func() bool { return dataOf(t, host)["LOCK"] == -1 }, realWait, tick, "the pod never wrote its data")
		require.Equal(t, map[string]int{"LOCK": -1, "db-0000": 1000}, dataOf(t, host), "what the pod wrote, seen from the host")

		owned = te.waitOwnerRecorded(ctx, t, sts, 0)
		store := storeIDOf(t, owned)
		want, ok := re.pd.StoreOf(tidbNS, p.Pod.Name)
		require.True(t, ok, "PD knows the pod's store")
		require.Equal(t, want, store, "the PV names the pod's store")
		waitLocalDisk(ctx, t, re.env, owned.Labels[provisioner.LabelDisk], func(ld v1alpha1.LocalDisk) bool {
			return ld.Status.Owner != nil && ld.Status.Owner.StoreID == store
		})
		t.Logf("pod %s wrote 1000 files; store %d recorded on PV %s and its LocalDisk", p.Pod.Name, store, owned.Name)
	}), "the last chapter needs the owned disk")

	t.Run("after scale-in and Tombstone the controller releases the claim and the agent wipes the disk and publishes it again", func(t *testing.T) {
		claim := sim.ClaimName(sts.Spec.VolumeClaimTemplates[0].Name, sts.Name, 0)
		scaleStatefulSet(ctx, t, re.env, sts, 0, 1)
		buried := te.offlineStore(ctx, t, storeIDOf(t, owned))
		t.Logf("store %d Tombstone", storeIDOf(t, owned))
		fresh := te.waitRecycled(ctx, t, owned)
		t.Logf("disk published again as PV %s %s after the Tombstone", fresh.Name, time.Since(buried).Round(time.Millisecond))

		_, err := c.CoreV1().PersistentVolumeClaims(tidbNS).Get(ctx, claim, metav1.GetOptions{})
		require.True(t, apierrors.IsNotFound(err), "the controller deleted claim %s (err: %v)", claim, err)
		require.Equal(t, in.TiKVClass, fresh.Spec.StorageClassName)
		require.Equal(t, pv.Spec.Local.Path, fresh.Spec.Local.Path)
		require.Equal(t, owned.Labels[provisioner.LabelDisk], fresh.Labels[provisioner.LabelDisk], "same disk, same identity")
		require.Nil(t, fresh.Spec.ClaimRef)

		// From the host: nothing but the identity marker (and ext4's
		// lost+found), marked ready, still the agent's mount of the device.
		require.Empty(t, userContents(t, host), "the disk still holds what the pod wrote")
		require.Equal(t, discovery.StateReady, readMarker(t, host).State)
		require.Equal(t, dev, mountSource(t, host))
		require.Equal(t, "ext4", mountFSType(t, host))

		ld := waitLocalDisk(ctx, t, re.env, fresh.Labels[provisioner.LabelDisk], func(ld v1alpha1.LocalDisk) bool {
			return ld.Status.Phase == v1alpha1.PhaseAvailable && ld.Status.PersistentVolume == fresh.Name && ld.Status.LastWipe != nil
		})
		t.Logf("LocalDisk %s Available again, wiped by %s in %s", ld.Name, ld.Status.LastWipe.Method, ld.Status.LastWipe.Duration.Duration)
	})

	t.Run("nothing of the install exists under the unprefixed names or in the tidb-localpv namespace", func(t *testing.T) {
		requireNotFound := func(what string, err error) {
			t.Helper()
			require.True(t, apierrors.IsNotFound(err), "%s must not exist (err: %v)", what, err)
		}
		_, err := c.CoreV1().Namespaces().Get(ctx, sim.Namespace, metav1.GetOptions{})
		requireNotFound("Namespace "+sim.Namespace, err)
		for _, class := range []string{sim.DefaultInstall.TiKVClass, sim.DefaultInstall.PDClass} {
			_, err := c.StorageV1().StorageClasses().Get(ctx, class, metav1.GetOptions{})
			requireNotFound("StorageClass "+class, err)
		}

		// Everything the render labels as ours, in every namespace, is in
		// storage-system and carries the prefix.
		const prefix = "acme-"
		ours := metav1.ListOptions{LabelSelector: labels.Set{"app.kubernetes.io/part-of": "tidb-localpv"}.String()}
		var found []string
		check := func(kind, ns, name string) {
			t.Helper()
			found = append(found, kind+" "+ns+"/"+name)
			require.True(t, strings.HasPrefix(name, prefix), "%s %s/%s lacks the prefix", kind, ns, name)
			if ns != "" {
				require.Equal(t, in.Namespace, ns, "%s %s is outside the install's namespace", kind, name)
			}
		}
		all := metav1.NamespaceAll
		sas, err := c.CoreV1().ServiceAccounts(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range sas.Items {
			check("ServiceAccount", o.Namespace, o.Name)
		}
		cms, err := c.CoreV1().ConfigMaps(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range cms.Items {
			check("ConfigMap", o.Namespace, o.Name)
		}
		dss, err := c.AppsV1().DaemonSets(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range dss.Items {
			check("DaemonSet", o.Namespace, o.Name)
		}
		deps, err := c.AppsV1().Deployments(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range deps.Items {
			check("Deployment", o.Namespace, o.Name)
		}
		roles, err := c.RbacV1().Roles(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range roles.Items {
			check("Role", o.Namespace, o.Name)
		}
		rbs, err := c.RbacV1().RoleBindings(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range rbs.Items {
			check("RoleBinding", o.Namespace, o.Name)
		}
		crs, err := c.RbacV1().ClusterRoles().List(ctx, ours)
		require.NoError(t, err)
		for _, o := range crs.Items {
			check("ClusterRole", "", o.Name)
		}
		crbs, err := c.RbacV1().ClusterRoleBindings().List(ctx, ours)
		require.NoError(t, err)
		for _, o := range crbs.Items {
			check("ClusterRoleBinding", "", o.Name)
		}
		scs, err := c.StorageV1().StorageClasses().List(ctx, ours)
		require.NoError(t, err)
		for _, o := range scs.Items {
			check("StorageClass", "", o.Name)
		}
		pdbs, err := c.PolicyV1().PodDisruptionBudgets(all).List(ctx, ours)
		require.NoError(t, err)
		for _, o := range pdbs.Items {
			check("PodDisruptionBudget", o.Namespace, o.Name)
		}
		require.GreaterOrEqual(t, len(found), 15, "the labelled objects of the install: %v", found)

		// What the product makes or looks up at run time by name, and
		// carries no label: a Lease or an inventory under the default
		// names anywhere would mean a name did not reach a binary.
		leases, err := c.CoordinationV1().Leases(all).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		for _, l := range leases.Items {
			require.NotEqual(t, sim.DefaultInstall.Lease, l.Name, "Lease %s/%s", l.Namespace, l.Name)
		}
		allCMs, err := c.CoreV1().ConfigMaps(all).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		for _, cm := range allCMs.Items {
			require.NotEqual(t, sim.DefaultInstall.Inventory, cm.Name, "ConfigMap %s/%s", cm.Namespace, cm.Name)
		}
		pods, err := c.CoreV1().Pods(all).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=tidb-localpv"})
		require.NoError(t, err)
		for _, p := range pods.Items {
			require.Equal(t, in.Namespace, p.Namespace, "pod %s", p.Name)
		}
		pvs, err := ourPVs(ctx, re.env, nil)
		require.NoError(t, err)
		for _, p := range pvs {
			require.Equal(t, in.TiKVClass, p.Spec.StorageClassName, "PV %s", p.Name)
		}
		t.Logf("%d labelled objects, all in %s with the prefix %q; no default-named Namespace, StorageClass, Lease or inventory", len(found), in.Namespace, prefix)
	})
}

// startOverlayEnv is startRealEnv with the install applied through an
// overlay of manifests/ (relative to the repository, image replaced), on
// the named real nodes. The PD simulator is exposed as demo-pd in default,
// where the controller's default endpoint template finds it whatever the
// install's namespace.
func startOverlayEnv(t testing.TB, overlay string, nodes ...string) *realEnv {
	t.Helper()
	re := startRealClusterWith(t, overlay)
	env := re.env
	ctx := context.Background()
	for _, name := range nodes {
		re.addNode(t, name)
	}
	for _, n := range re.nodes {
		_, err := n.WaitAgentPodReady(ctx, realWait)
		require.NoError(t, err)
	}
	in := env.Install
	require.Eventually(t, func() bool {
		d, err := env.Cluster.Client.AppsV1().Deployments(in.Namespace).Get(ctx, in.ControllerDeployment, metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas == 2
	}, realWait, 100*time.Millisecond, "the controller Deployment %s/%s never had 2 Ready replicas", in.Namespace, in.ControllerDeployment)
	p, err := env.StartPD(ctx, realPDOptions)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	re.pd = p
	// A store of the TiKV cluster that lives elsewhere: PD refuses to
	// remove the last Up store.
	p.Sim.RegisterStore(anchorStore)
	require.NoError(t, env.ExposePD(ctx, p, tidbNS, tidbInstance))
	t.Logf("overlay %s on %d real nodes: agents and controllers Ready in %s", overlay, len(nodes), time.Since(re.started).Round(time.Millisecond))
	return re
}

// setInstallInventory replaces the inventory document of the install's
// inventory ConfigMap (sim.Env.SetInventory knows manifests/' names only).
func setInstallInventory(ctx context.Context, t testing.TB, env *sim.Env, doc string) {
	t.Helper()
	cms := env.Cluster.Client.CoreV1().ConfigMaps(env.Install.Namespace)
	require.NoError(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, env.Install.Inventory, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[discovery.InventoryKey] = doc
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	}), "update inventory %s/%s", env.Install.Namespace, env.Install.Inventory)
}

// waitLocalDisk waits until the LocalDisk of disk identity id satisfies ok
// and returns it.
func waitLocalDisk(ctx context.Context, t testing.TB, env *sim.Env, id string, ok func(v1alpha1.LocalDisk) bool) v1alpha1.LocalDisk {
	t.Helper()
	dyn, err := dynamic.NewForConfig(env.Cluster.RESTConfig())
	require.NoError(t, err)
	// A loop rather than require.Eventually, so that the failure can show
	// the last state seen.
	var last *v1alpha1.LocalDisk
	deadline := time.Now().Add(realWait)
	for {
		list, err := dyn.Resource(v1alpha1.Resource).List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range list.Items {
				ld, conv := localDisk(&list.Items[i])
				if !conv || ld.Spec.DiskID != id {
					continue
				}
				if ok(ld) {
					return ld
				}
				last = &ld
			}
		}
		if time.Now().After(deadline) {
			var seen any = "none"
			if last != nil {
				seen = last.Status
			}
			require.FailNow(t, fmt.Sprintf("the LocalDisk of disk %s never reached the expected state within %s; last seen: %+v", id, realWait, seen))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
