package sim

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/tidb-localpv/tidb-localpv/e2e/cluster"
	"github.com/tidb-localpv/tidb-localpv/e2e/image"
)

// Real nodes: kubelets with containerd (e2e/cluster) on which the manifests
// run as written — the agent DaemonSet and the controller Deployment as
// containers of the image built from the work tree — with only the image
// name overridden through kustomize.
const (
	// Image is the name the e2e gives the image it builds.
	Image = "tidb-localpv.local/tidb-localpv:e2e"
	// manifestImage is the image the manifests name.
	manifestImage = "ghcr.io/tidb-localpv/tidb-localpv"
	// AgentDaemonSet and ControllerDeployment are the workloads of manifests/.
	AgentDaemonSet       = "tidb-localpv-agent"
	ControllerDeployment = "tidb-localpv-controller"
)

// nodeDirs are the DaemonSet's hostPath directories that each real node
// keeps below its Root, so two nodes on one machine do not share disks.
var nodeDirs = []string{"/mnt/tidb-localpv", "/var/lib/tidb-localpv"}

// prepareRealNodes installs the host packages real nodes need, builds
// every binary and the images.
func (e *Env) prepareRealNodes(ctx context.Context) (cluster.Binaries, *cluster.NodeBinaries, error) {
	progress := e.progress()
	if err := cluster.InstallHostPackages(ctx, progress); err != nil {
		return cluster.Binaries{}, nil, err
	}
	bins, nb, err := cluster.EnsureNodeBinaries(ctx, cluster.NodeBuildOptions{BuildOptions: cluster.BuildOptions{Progress: progress}})
	if err != nil {
		return cluster.Binaries{}, nil, err
	}
	cache, err := cluster.DefaultCacheDir()
	if err != nil {
		return cluster.Binaries{}, nil, err
	}
	base, err := image.EnsureBase(ctx, image.BaseOptions{CacheDir: cache, Progress: progress})
	if err != nil {
		return cluster.Binaries{}, nil, err
	}
	dir := filepath.Join(e.opts.WorkDir, "images")
	static := filepath.Join(dir, "tidb-localpv")
	if err := image.BuildBinary(ctx, e.opts.RepoRoot, static, "e2e"); err != nil {
		return cluster.Binaries{}, nil, err
	}
	e.ImageArchive = filepath.Join(dir, "tidb-localpv.tar")
	if err := image.Build(image.Options{Base: base, Binary: static, Refs: []string{Image}, Out: e.ImageArchive}); err != nil {
		return cluster.Binaries{}, nil, err
	}
	testpod := filepath.Join(dir, "testpod")
	if err := image.BuildTestPod(ctx, e.opts.RepoRoot, testpod); err != nil {
		return cluster.Binaries{}, nil, err
	}
	e.TestImages = filepath.Join(dir, "testpod.tar")
	if err := image.BuildTestImages(testpod, e.TestImages); err != nil {
		return cluster.Binaries{}, nil, err
	}
	return bins, &nb, nil
}

// manifestsOverlay writes a kustomization that applies manifests/ (or
// Options.Overlay) with only the image replaced, and returns its
// directory. Kustomize wants the base as a relative path.
func (e *Env) manifestsOverlay() (string, error) {
	dir := filepath.Join(e.opts.WorkDir, "kustomize")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	base := "manifests"
	if e.opts.Overlay != "" {
		base = e.opts.Overlay
	}
	rel, err := filepath.Rel(dir, filepath.Join(e.opts.RepoRoot, base))
	if err != nil {
		return "", err
	}
	name, tag, _ := strings.Cut(Image, ":")
	doc := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: %s
    newName: %s
    newTag: %s
`, rel, manifestImage, name, tag)
	return dir, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(doc), 0o644)
}

// renderInstall renders the kustomization in dir (kubectl kustomize) and
// reads from the agent's DaemonSet and the controller's Deployment the
// names they run with, their arguments expanded as the kubelet expands them
// in their namespace. It returns those names and the agent's arguments.
func renderInstall(ctx context.Context, dir string) (Install, []string, error) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return Install{}, nil, fmt.Errorf("kubectl is not on PATH: %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Install{}, nil, fmt.Errorf("kubectl kustomize %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	var (
		in          Install
		agentArgs   []string
		ds, deploys int
	)
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return Install{}, nil, fmt.Errorf("render of %s: %w", dir, err)
		}
		switch meta.Kind {
		case "DaemonSet":
			ds++
			var d appsv1.DaemonSet
			if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
				return Install{}, nil, fmt.Errorf("render of %s: %w", dir, err)
			}
			args, err := containerArgs("DaemonSet "+d.Name, d.Spec.Template.Spec, d.Namespace)
			if err != nil {
				return Install{}, nil, err
			}
			agentArgs = args
			in.Namespace, in.AgentDaemonSet, in.AgentAccount = d.Namespace, d.Name, d.Spec.Template.Spec.ServiceAccountName
			if v := flagValues(args, "--inventory"); len(v) == 1 {
				ns, name, _ := strings.Cut(v[0], "/")
				if ns != d.Namespace {
					return Install{}, nil, fmt.Errorf("render of %s: the agent's inventory %s is not in its namespace %s", dir, v[0], d.Namespace)
				}
				in.Inventory = name
			}
			for _, v := range flagValues(args, "--discovery-dir") {
				class, path, _ := strings.Cut(v, "=")
				switch path {
				case "/mnt/tidb-localpv/tikv":
					in.TiKVClass = class
				case "/mnt/tidb-localpv/pd":
					in.PDClass = class
				}
			}
		case "Deployment":
			deploys++
			var d appsv1.Deployment
			if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
				return Install{}, nil, fmt.Errorf("render of %s: %w", dir, err)
			}
			args, err := containerArgs("Deployment "+d.Name, d.Spec.Template.Spec, d.Namespace)
			if err != nil {
				return Install{}, nil, err
			}
			in.ControllerDeployment, in.ControllerAccount = d.Name, d.Spec.Template.Spec.ServiceAccountName
			if v := flagValues(args, "--lease-name"); len(v) == 1 {
				in.Lease = v[0]
			}
		}
	}
	if ds != 1 || deploys != 1 {
		return Install{}, nil, fmt.Errorf("render of %s: %d DaemonSets and %d Deployments, want the agent's and the controller's", dir, ds, deploys)
	}
	if in.Inventory == "" || in.TiKVClass == "" || in.PDClass == "" || in.Lease == "" || in.AgentAccount == "" || in.ControllerAccount == "" {
		return Install{}, nil, fmt.Errorf("render of %s: names missing from the workloads' arguments: %+v", dir, in)
	}
	return in, agentArgs, nil
}

// flagValues are the values of every --name=value in args.
func flagValues(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// AddRealNode starts a real node whose DaemonSet directories live below
// its Root, with the images imported, and waits until it is Ready.
func (e *Env) AddRealNode(ctx context.Context, name string) (*Node, error) {
	n := &Node{Name: name, Root: filepath.Join(e.opts.WorkDir, "nodes", name), env: e}
	dirs := map[string]string{}
	for _, d := range nodeDirs {
		dirs[d] = n.Path(d)
	}
	rn, err := e.Cluster.AddRealNode(ctx, name, cluster.RealNodeConfig{
		Dirs:   dirs,
		Images: []string{e.ImageArchive, e.TestImages},
		Labels: map[string]string{"type": "real"},
	})
	if err != nil {
		return nil, err
	}
	n.Real = rn
	e.mu.Lock()
	e.nodes = append(e.nodes, n)
	e.mu.Unlock()
	return n, nil
}

// AgentPod is the DaemonSet's pod on this real node (in the install's
// namespace).
func (n *Node) AgentPod(ctx context.Context) (*corev1.Pod, error) {
	pods, err := n.env.Cluster.Client.CoreV1().Pods(n.env.Install.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{"app.kubernetes.io/component": "agent"}.String(),
		FieldSelector: "spec.nodeName=" + n.Name,
	})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, fmt.Errorf("no agent pod on %s", n.Name)
}

// KillAgentContainer kills the agent container's process with SIGKILL
// through the node's runtime, as an OOM kill or a crash would; kubelet
// restarts the container. It returns the container that was killed.
func (n *Node) KillAgentContainer(ctx context.Context) (string, error) {
	pod, err := n.AgentPod(ctx)
	if err != nil {
		return "", err
	}
	if len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].ContainerID == "" {
		return "", fmt.Errorf("agent pod %s has no running container", pod.Name)
	}
	id := strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if _, err := n.Real.Ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id); err != nil {
		return "", err
	}
	return id, nil
}

// WaitAgentPodReady waits until the agent pod of this node is Ready (its
// readiness probe, /readyz, passes) and returns it.
func (n *Node) WaitAgentPodReady(ctx context.Context, timeout time.Duration) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		pod, err := n.AgentPod(ctx)
		if err == nil && podReady(pod) {
			return pod, nil
		}
		if err == nil {
			err = fmt.Errorf("agent pod %s not Ready (phase %s)", pod.Name, pod.Status.Phase)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent of %s: %w (last: %v)", n.Name, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ContainerLog returns the current log of a container of a pod on this
// real node, read from kubelet's pod log directory.
func (n *Node) ContainerLog(pod *corev1.Pod, container string) (string, error) {
	dir := filepath.Join(n.Real.PodLogsDir(), fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID), container)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", err
		}
		out.Write(data)
	}
	return out.String(), nil
}

// ExposePD makes the PD simulator the PD of TiDB cluster instance in
// namespace as the controller finds it: the Service <instance>-pd on port
// 2379 (as TiDB Operator names it), whose endpoint is the simulator on
// the host. Cluster DNS and kube-proxy do the rest.
func (e *Env) ExposePD(ctx context.Context, p *PD, namespace, instance string) error {
	u, err := url.Parse(p.URL)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return err
	}
	name := instance + "-pd"
	c := e.Cluster.Client
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "client", Port: 2379, TargetPort: intstr.FromInt32(int32(port)), Protocol: corev1.ProtocolTCP,
		}}},
	}
	if _, err := c.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s/%s: %w", namespace, name, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name + "-sim", Namespace: namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "tidb-localpv-e2e"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{cluster.HostAddress}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("client"), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if _, err := c.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create EndpointSlice for %s/%s: %w", namespace, name, err)
	}
	return nil
}
