package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeReadyTimeout bounds AddNode; kwok marks a node Ready within a second.
const nodeReadyTimeout = time.Minute

// saTokenTTL is the lifetime of tokens ServiceAccountKubeconfig requests.
const saTokenTTL = time.Hour

// AddNode creates a node that kwok simulates and waits until it is Ready.
// It is labelled kubernetes.io/hostname=<name>, kubernetes.io/os=linux and
// type=kwok, plus labels (which win on conflict), and offers 32 CPUs,
// 256Gi of memory and 110 pods.
func (c *Cluster) AddNode(ctx context.Context, name string, labels map[string]string) (*corev1.Node, error) {
	all := map[string]string{
		corev1.LabelHostname: name,
		corev1.LabelOSStable: "linux",
		"type":               "kwok",
	}
	maps.Copy(all, labels)
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      all,
			Annotations: map[string]string{kwokNodeAnnotation: kwokNodeValue},
		},
		// kwok keeps status it did not set itself, so capacity is ours to give.
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			NodeInfo:    corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}

	var ready *corev1.Node
	err := c.waitFor(ctx, "node "+name+" Ready", nodeReadyTimeout, func(ctx context.Context) error {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = n
				return nil
			}
		}
		return errors.New("not Ready yet")
	})
	if err != nil {
		return nil, fmt.Errorf("add node: %w", err)
	}
	return ready, nil
}

// ServiceAccountKubeconfig writes to path a kubeconfig that authenticates as
// the ServiceAccount namespace/name with a one-hour bound token, so a
// component under test runs with its own RBAC rather than as admin.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name, path string) error {
	ttl := int64(saTokenTTL / time.Second)
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &ttl}},
		metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request token for %s/%s: %w", namespace, name, err)
	}
	user := "system:serviceaccount:" + namespace + ":" + name
	if err := writeKubeconfig(path, c.layout.apiServerURL(), c.caPEM, user, credentials{token: tr.Status.Token}); err != nil {
		return fmt.Errorf("service account kubeconfig: %w", err)
	}
	return nil
}

// Kubectl runs kubectl with the admin kubeconfig and returns its combined
// output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return nil, fmt.Errorf("kubectl is not on PATH: %w", err)
	}
	cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig=" + c.AdminKubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}
