package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// The RBAC of each ServiceAccount must be exactly what its code calls: a
// verb granted and never used is a permission an attacker inherits for
// nothing, a call not granted fails in production. The calls are read from
// the source (go/ast): typed clients (client.CoreV1().PersistentVolumes().
// Patch), dynamic clients (dynamic.Resource(gvr).Namespace(ns).Delete),
// informers and listers (list, watch), and event recorders (create, patch).
// What libraries call on our behalf is declared below, each with why.

// permission is one verb on one resource ("localdisks/status" for a
// subresource).
type permission struct {
	group, resource, verb string
}

func (p permission) String() string {
	g := p.group
	if g == "" {
		g = "core"
	}
	return fmt.Sprintf("%s %s/%s", p.verb, g, p.resource)
}

// account is one ServiceAccount: the packages (or single files) that run
// as it, what
// libraries call for it, and its manifest.
type account struct {
	name     string
	packages []string
	library  map[permission]string // permission → why a library needs it
	manifest string
}

func accounts() []account {
	return []account{{
		name:     "agent",
		packages: []string{"daemon", "provisioner", "discovery", "cmd/tidb-localpv/agent.go"},
		library: map[permission]string{
			// sig-storage-lib-external-provisioner (daemon/agent.go runs its
			// ProvisionController): it removes the external-provisioner
			// finalizer from a PV that carries one (handleProtectionFinalizer,
			// AddFinalizer off), with Update. Our Delete always answers
			// "ignored", so the library's own PV Delete is never reached, and
			// its provisioning path (claims, nodes) never runs: the agent's
			// claims informer matches no claim.
			{"", "persistentvolumes", "update"}: "the provisioner library drops a stray external-provisioner finalizer",
		},
		manifest: "agent-rbac.yaml",
	}, {
		name:     "controller",
		packages: []string{"volumecontroller", "volumecontroller/pd", "cmd/tidb-localpv/controller.go"},
		library: map[permission]string{
			// client-go's leader election with a LeaseLock (cmd/tidb-localpv/
			// controller.go): Get, then Create the first time, Update after.
			{"coordination.k8s.io", "leases", "get"}:    "leader election",
			{"coordination.k8s.io", "leases", "create"}: "leader election",
			{"coordination.k8s.io", "leases", "update"}: "leader election",
		},
		manifest: "controller-rbac.yaml",
	}}
}

func TestRBAC_GrantsExactlyTheVerbsTheCodeUses(t *testing.T) {
	src, err := os.ReadFile("controller.go")
	require.NoError(t, err)
	require.Contains(t, string(src), "resourcelock.New(resourcelock.LeasesResourceLock", "the controller's leader election is declared above")

	for _, acc := range accounts() {
		t.Run(acc.name, func(t *testing.T) {
			used := map[permission][]string{}
			for _, pkg := range acc.packages {
				for p, where := range callsIn(t, filepath.Join("..", "..", pkg)) {
					used[p] = append(used[p], where...)
				}
			}
			for p, why := range acc.library {
				used[p] = append(used[p], why)
			}
			granted := grantsIn(t, filepath.Join("..", "..", "manifests", acc.manifest))
			var missing, unused []string
			for _, p := range sortedPermissions(used) {
				if _, ok := granted[p]; !ok {
					missing = append(missing, fmt.Sprintf("%s (called at %s)", p, strings.Join(used[p], ", ")))
				}
			}
			for _, p := range sortedPermissions(granted) {
				if _, ok := used[p]; !ok {
					unused = append(unused, fmt.Sprintf("%s (%s)", p, granted[p]))
				}
			}
			require.Empty(t, missing, "called by the %s but not granted in %s", acc.name, acc.manifest)
			require.Empty(t, unused, "granted in %s but called by no code of the %s", acc.manifest, acc.name)
		})
	}
}

// TestRBAC_TheCallReaderFindsEveryKindOfCall keeps the reader honest: each
// way the code reaches the API server is recognised.
func TestRBAC_TheCallReaderFindsEveryKindOfCall(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "x.go"), []byte(`package x

const group, kind = "example.com", "widgets"

var kinds = map[string]string{"A": "alphas", "B": "betas"}

func byKind(k string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: group, Version: "v1", Resource: kinds[k]}
}

func f() {
	c.client.CoreV1().PersistentVolumes().Patch(ctx, n, t, d, o)
	c.client.CoreV1().Pods(ns).Delete(ctx, n, o)
	_ = f.Core().V1().Nodes().Lister()
	res := c.dyn.Resource(v1alpha1.Resource)
	res.Patch(ctx, n, t, d, o, "status")
	gvr := schema.GroupVersionResource{Group: group, Version: "v1", Resource: kind}
	c.dyn.Resource(gvr).Namespace(ns).Get(ctx, n, o)
	c.dyn.Resource(gvr.GroupVersion().WithResource("gadgets")).List(ctx, o)
	g := byKind(k)
	c.dyn.Resource(g).Delete(ctx, n, o)
	_ = record.EventSinkImpl{Interface: client.CoreV1().Events("")}
	m.Delete(k) // not a client
}
`), 0o644))
	got := callsIn(t, dir)
	want := []permission{
		{"", "persistentvolumes", "patch"}, {"", "pods", "delete"}, {"", "nodes", "list"}, {"", "nodes", "watch"},
		{v1alpha1.Resource.Group, "localdisks/status", "patch"},
		{"example.com", "widgets", "get"}, {"example.com", "gadgets", "list"},
		{"example.com", "alphas", "delete"}, {"example.com", "betas", "delete"},
		{"", "events", "create"}, {"", "events", "patch"},
	}
	require.ElementsMatch(t, want, sortedPermissions(got))
}

// grantsIn reads the Roles and ClusterRoles of a manifest.
func grantsIn(t *testing.T, path string) map[permission]string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	out := map[permission]string{}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var role rbacv1.ClusterRole // Roles share the shape
		require.NoError(t, yaml.Unmarshal([]byte(doc), &role))
		if role.Kind != "Role" && role.Kind != "ClusterRole" {
			continue
		}
		for _, r := range role.Rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						out[permission{g, res, v}] = role.Kind + " " + role.Name
					}
				}
			}
		}
	}
	require.NotEmpty(t, out, path)
	return out
}
