package manifests_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// overlay is one way to install tidb-localpv, and what its render must be.
type overlay struct {
	name       string
	dir        string // a kustomization directory, relative to manifests/
	namespace  string
	prefix     string
	monitoring bool
	selector   bool // the agent-node-selector component
}

// overlays are the base, the examples, and every component at once under a
// namespace and a prefix (written to a temporary directory: kustomize
// refuses an overlay inside its base's directory).
func overlays(t *testing.T) []overlay {
	t.Helper()
	here, err := filepath.Abs(".")
	require.NoError(t, err)
	all := t.TempDir()
	// Kustomize takes relative paths only.
	rel, err := filepath.Rel(all, here)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(all, "kustomization.yaml"), []byte(fmt.Sprintf(`
namespace: disks
namePrefix: team-b-
resources:
  - %[1]s
components:
  - %[1]s/components/monitoring
  - %[1]s/components/agent-node-selector
`, rel)), 0o644))
	return []overlay{
		{name: "base", dir: ".", namespace: "tidb-localpv"},
		{name: "examples/prefixed", dir: "../examples/prefixed", namespace: "storage-system", prefix: "acme-"},
		{name: "examples/monitoring", dir: "../examples/monitoring", namespace: "tidb-localpv", monitoring: true},
		{name: "every component, prefixed", dir: all, namespace: "disks", prefix: "team-b-", monitoring: true, selector: true},
	}
}

func TestKustomize_EveryReferenceFollowsTheOverlay(t *testing.T) {
	for _, o := range overlays(t) {
		t.Run(o.name, func(t *testing.T) {
			k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
			res, err := k.Run(filesys.MakeFsOnDisk(), o.dir)
			require.NoError(t, err)
			out, err := res.AsYaml()
			require.NoError(t, err)
			checkInstall(t, o, parse(t, out))
		})
	}
}

// TestKustomize_KubectlRendersTheSame runs the same checks on what the
// kustomize built into kubectl renders (v5.5.0 in kubectl 1.32): users
// apply with kubectl, not with the library.
func TestKustomize_KubectlRendersTheSame(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH; the library test above covers the rendering")
	}
	for _, o := range overlays(t) {
		t.Run(o.name, func(t *testing.T) {
			out, err := exec.Command(kubectl, "kustomize", o.dir).Output()
			require.NoError(t, err, "kubectl kustomize %s", o.dir)
			checkInstall(t, o, parse(t, out))
		})
	}
}

// object is one rendered document.
type object struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	raw []byte
}

func (o object) key() string { return o.Kind + " " + o.Namespace + "/" + o.Name }

func parse(t *testing.T, out []byte) map[string]object {
	t.Helper()
	objs := map[string]object{}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var o struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(doc), &o))
		obj := object{TypeMeta: o.TypeMeta, ObjectMeta: o.ObjectMeta, raw: []byte(doc)}
		_, dup := objs[obj.key()]
		require.False(t, dup, "rendered twice: %s", obj.key())
		objs[obj.key()] = obj
	}
	return objs
}

// get decodes the one object of kind named ns/name into into.
func get(t *testing.T, objs map[string]object, kind, ns, name string, into any) {
	t.Helper()
	o, ok := objs[kind+" "+ns+"/"+name]
	require.True(t, ok, "no %s %s/%s in the render", kind, ns, name)
	require.NoError(t, yaml.Unmarshal(o.raw, into))
}

// has fails unless the render holds the object with this key (without
// printing the whole render, as require.Contains would).
func has(t *testing.T, objs map[string]object, key string, msgAndArgs ...any) {
	t.Helper()
	if _, ok := objs[key]; !ok {
		require.Fail(t, "no "+key+" in the render", msgAndArgs...)
	}
}

func ofKind(objs map[string]object, kind string) []object {
	var out []object
	for _, o := range objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

var clusterScoped = map[string]bool{"Namespace": true, "StorageClass": true, "CustomResourceDefinition": true, "ClusterRole": true, "ClusterRoleBinding": true}

func checkInstall(t *testing.T, o overlay, objs map[string]object) {
	ns, prefix := o.namespace, o.prefix
	namespaces := ofKind(objs, "Namespace")
	require.Len(t, namespaces, 1)
	require.Equal(t, ns, namespaces[0].Name, "the Namespace object is the overlay's namespace")
	for _, obj := range objs {
		if clusterScoped[obj.Kind] {
			require.Empty(t, obj.Namespace, obj.key())
		} else {
			require.Equal(t, ns, obj.Namespace, "%s is not in the install's namespace", obj.key())
		}
		if obj.Kind != "Namespace" && obj.Kind != "CustomResourceDefinition" {
			require.True(t, strings.HasPrefix(obj.Name, prefix), "%s lacks the prefix %q", obj.key(), prefix)
		}
	}
	checkBindings(t, objs)

	var ds appsv1.DaemonSet
	get(t, objs, "DaemonSet", ns, prefix+"tidb-localpv-agent", &ds)
	var dep appsv1.Deployment
	get(t, objs, "Deployment", ns, prefix+"tidb-localpv-controller", &dep)
	agentSA, controllerSA := ds.Spec.Template.Spec.ServiceAccountName, dep.Spec.Template.Spec.ServiceAccountName
	has(t, objs, "ServiceAccount "+ns+"/"+agentSA)
	has(t, objs, "ServiceAccount "+ns+"/"+controllerSA)

	// The agent: its inventory, readable through its Role; its classes.
	args := expand(t, ds.Spec.Template.Spec.Containers[0], ns)
	inv := flagValues(args, "--inventory")
	require.Len(t, inv, 1)
	invNS, invName, _ := strings.Cut(inv[0], "/")
	require.Equal(t, ns, invNS)
	has(t, objs, "ConfigMap "+ns+"/"+invName, "--inventory names the install's ConfigMap")
	require.Contains(t, namedResources(t, objs, ns, agentSA, "", "configmaps", "watch"), invName, "the agent's Role grants that ConfigMap")
	var classes []string
	for _, d := range flagValues(args, "--discovery-dir") {
		class, _, _ := strings.Cut(d, "=")
		classes = append(classes, class)
	}
	var installed []string
	for _, sc := range ofKind(objs, "StorageClass") {
		installed = append(installed, sc.Name)
	}
	slices.Sort(classes)
	slices.Sort(installed)
	require.Equal(t, installed, classes, "the agent discovers exactly the install's StorageClasses")

	// The controller: its Lease, in its own namespace, granted by its Role.
	cargs := expand(t, dep.Spec.Template.Spec.Containers[0], ns)
	lease := flagValues(cargs, "--lease-name")
	require.Len(t, lease, 1)
	var l coordinationv1.Lease
	get(t, objs, "Lease", ns, lease[0], &l)
	require.Contains(t, namedResources(t, objs, ns, controllerSA, "coordination.k8s.io", "leases", "update"), lease[0], "the controller's Role grants its Lease")
	require.Equal(t, "metadata.namespace", fieldRef(dep.Spec.Template.Spec.Containers[0], "POD_NAMESPACE"), "the Lease's namespace is the pod's")
	require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, dep.Spec.Template.Spec.SecurityContext.SeccompProfile.Type)
	require.NotEmpty(t, dep.Spec.Template.Spec.PriorityClassName)

	// The disruption budget covers the controller's pods and nothing else.
	pdbs := ofKind(objs, "PodDisruptionBudget")
	require.Len(t, pdbs, 1)
	var pdb policyv1.PodDisruptionBudget
	get(t, objs, "PodDisruptionBudget", ns, pdbs[0].Name, &pdb)
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	require.NoError(t, err)
	require.True(t, sel.Matches(labels.Set(dep.Spec.Template.Labels)))
	require.False(t, sel.Matches(labels.Set(ds.Spec.Template.Labels)))

	if o.selector {
		require.Equal(t, "true", ds.Spec.Template.Spec.NodeSelector["tidb-localpv.io/disks"])
	} else {
		require.Empty(t, ds.Spec.Template.Spec.NodeSelector, "the base runs the agent on every node")
	}
	if o.monitoring {
		checkMonitoring(t, objs, ns, prefix, ds, dep)
	} else {
		require.Empty(t, ofKind(objs, "PodMonitor"))
	}
}

// checkBindings: every binding's role and subjects are in the render.
func checkBindings(t *testing.T, objs map[string]object) {
	for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
		for _, b := range ofKind(objs, kind) {
			var rb rbacv1.RoleBinding // ClusterRoleBindings share the shape
			require.NoError(t, yaml.Unmarshal(b.raw, &rb))
			roleNS := ""
			if rb.RoleRef.Kind == "Role" {
				roleNS = b.Namespace
			}
			has(t, objs, rb.RoleRef.Kind+" "+roleNS+"/"+rb.RoleRef.Name, "%s: roleRef", b.key())
			require.NotEmpty(t, rb.Subjects)
			for _, s := range rb.Subjects {
				require.Equal(t, "ServiceAccount", s.Kind)
				has(t, objs, "ServiceAccount "+s.Namespace+"/"+s.Name, "%s: subject", b.key())
			}
		}
	}
}

// namedResources lists the resourceNames the Roles bound to the account
// grant for verb on resource.
func namedResources(t *testing.T, objs map[string]object, ns, account, group, resource, verb string) []string {
	t.Helper()
	var names []string
	for _, b := range ofKind(objs, "RoleBinding") {
		var rb rbacv1.RoleBinding
		require.NoError(t, yaml.Unmarshal(b.raw, &rb))
		if b.Namespace != ns || !slices.ContainsFunc(rb.Subjects, func(s rbacv1.Subject) bool { return s.Name == account && s.Namespace == ns }) {
			continue
		}
		var role rbacv1.Role
		get(t, objs, "Role", ns, rb.RoleRef.Name, &role)
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				names = append(names, r.ResourceNames...)
			}
		}
	}
	return names
}

func checkMonitoring(t *testing.T, objs map[string]object, ns, prefix string, ds appsv1.DaemonSet, dep appsv1.Deployment) {
	t.Helper()
	var pm struct {
		Spec struct {
			JobLabel            string               `json:"jobLabel"`
			Selector            metav1.LabelSelector `json:"selector"`
			PodMetricsEndpoints []struct {
				Port string `json:"port"`
			} `json:"podMetricsEndpoints"`
		} `json:"spec"`
	}
	get(t, objs, "PodMonitor", ns, prefix+"tidb-localpv", &pm)
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	require.NoError(t, err)
	require.Len(t, pm.Spec.PodMetricsEndpoints, 1)
	for _, tmpl := range []corev1.PodTemplateSpec{ds.Spec.Template, dep.Spec.Template} {
		require.True(t, sel.Matches(labels.Set(tmpl.Labels)), "the PodMonitor selects %v", tmpl.Labels)
		require.Equal(t, "tidb-localpv", tmpl.Labels[pm.Spec.JobLabel], "job=\"tidb-localpv\", as the rules expect")
		require.True(t, slices.ContainsFunc(tmpl.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == pm.Spec.PodMetricsEndpoints[0].Port }))
	}
	has(t, objs, "PrometheusRule "+ns+"/"+prefix+"tidb-localpv")
	var cm corev1.ConfigMap
	get(t, objs, "ConfigMap", ns, prefix+"tidb-localpv-dashboard", &cm)
	require.Equal(t, "1", cm.Labels["grafana_dashboard"])
	require.Contains(t, cm.Data, "tidb-localpv.json")
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand resolves $(VAR) in a container's args as the kubelet does, from
// literal env values and the pod's namespace; an unresolved reference
// fails the test (the kubelet would pass it on verbatim).
func expand(t *testing.T, c corev1.Container, ns string) []string {
	t.Helper()
	vars := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			vars[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			vars[e.Name] = ns
		}
	}
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = envRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := envRef.FindStringSubmatch(ref)[1]
			v, ok := vars[name]
			require.True(t, ok, "argument %q of %s refers to %s, which its env does not define", a, c.Name, name)
			return v
		})
	}
	return out
}

func flagValues(args []string, flag string) []string {
	var out []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

func fieldRef(c corev1.Container, env string) string {
	for _, e := range c.Env {
		if e.Name == env && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}
