package cluster

import (
	"net"
	"path/filepath"
	"strconv"
)

// serviceCIDR is the Service ClusterIP range; the apiserver's serving cert
// carries its first address.
const serviceCIDR = "10.96.0.0/16"

// kwokNodeAnnotation marks the nodes our kwok manages; other nodes are left
// alone so tests can create nodes kwok must not touch.
const (
	kwokNodeAnnotation = "kwok.x-k8s.io/node"
	kwokNodeValue      = "fake"
)

// ports are the loopback ports of one cluster.
type ports struct {
	etcdClient, etcdPeer, apiServer, controllerManager, scheduler, kwok int
}

// freePorts picks the loopback ports of one cluster.
func freePorts() (ports, error) {
	n, err := FreePorts(6)
	if err != nil {
		return ports{}, err
	}
	return ports{n[0], n[1], n[2], n[3], n[4], n[5]}, nil
}

// layout is where one cluster keeps its state and how its components find
// each other; it renders each component's command line.
type layout struct {
	workDir         string
	pki             pkiFiles
	ports           ports
	adminKubeconfig string
	// apiHost is where kube-apiserver listens: 127.0.0.1, or with real
	// nodes the host address pods and kubelets reach.
	apiHost   string
	realNodes bool
}

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.workDir}, elem...)...)
}

func loopbackURL(scheme string, port int) string {
	return scheme + "://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func (l layout) etcdURL() string { return loopbackURL("http", l.ports.etcdClient) }
func (l layout) apiServerURL() string {
	return "https://" + net.JoinHostPort(l.apiHost, strconv.Itoa(l.ports.apiServer))
}

// kubeletClient is the apiserver's client certificate towards the
// kubelets (logs, exec), from the cluster CA, in group system:masters as
// kubeadm's is.
func (l layout) kubeletClient() (cert, key string) {
	return filepath.Join(filepath.Dir(l.pki.CACert), "apiserver-kubelet-client.crt"), filepath.Join(filepath.Dir(l.pki.CACert), "apiserver-kubelet-client.key")
}

func (l layout) etcdArgs() []string {
	peer := loopbackURL("http", l.ports.etcdPeer)
	return []string{
		"--name=etcd",
		"--data-dir=" + l.path("etcd"),
		"--listen-client-urls=" + l.etcdURL(),
		"--advertise-client-urls=" + l.etcdURL(),
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=etcd=" + peer,
		// Durability is worthless for a throwaway cluster; fsync is the
		// slowest part of every write.
		"--unsafe-no-fsync",
	}
}

func (l layout) apiServerArgs() []string {
	p := l.pki
	args := []string{
		"--etcd-servers=" + l.etcdURL(),
		"--bind-address=" + l.apiHost,
		"--advertise-address=" + l.apiHost,
		"--secure-port=" + strconv.Itoa(l.ports.apiServer),
		"--cert-dir=" + l.path("certs", "kube-apiserver"),
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CACert,
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPub,
		"--service-account-signing-key-file=" + p.SAKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		// Without a front-proxy CA the controller-manager and scheduler log
		// a missing requestheader bundle forever.
		"--requestheader-client-ca-file=" + p.FrontProxyCACert,
		"--requestheader-allowed-names=" + frontProxyUser,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.FrontProxyClientCert,
		"--proxy-client-key-file=" + p.FrontProxyClientKey,
	}
	if !l.realNodes {
		// The default reconciler publishes 127.0.0.1 as the kubernetes
		// Service endpoint, which is invalid and logged every 10 s. With
		// real nodes it publishes the host address, which pods reach.
		return append(args, "--endpoint-reconciler-type=none")
	}
	cert, key := l.kubeletClient()
	return append(args,
		"--kubelet-client-certificate="+cert,
		"--kubelet-client-key="+key,
		// Every real node shares the host address; the port tells them apart.
		"--kubelet-preferred-address-types=InternalIP",
	)
}

// kubeClientArgs are the flags the controller-manager and scheduler share:
// the admin kubeconfig for everything and a secure port of their own.
func (l layout) kubeClientArgs(name string, port int) []string {
	return []string{
		"--kubeconfig=" + l.adminKubeconfig,
		"--authentication-kubeconfig=" + l.adminKubeconfig,
		"--authorization-kubeconfig=" + l.adminKubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + l.path("certs", name),
		// One instance each; a lease would only slow start-up.
		"--leader-elect=false",
	}
}

// controllerManagerArgs appends extra last, so extra flags override ours.
func (l layout) controllerManagerArgs(extra []string) []string {
	p := l.pki
	args := append(l.kubeClientArgs("kube-controller-manager", l.ports.controllerManager),
		"--service-account-private-key-file="+p.SAKey,
		"--root-ca-file="+p.CACert,
		"--cluster-signing-cert-file="+p.CACert,
		"--cluster-signing-key-file="+p.CAKey,
		"--service-cluster-ip-range="+serviceCIDR,
		// Each controller acts as its own ServiceAccount under the bootstrap
		// RBAC roles, as in a real cluster. It costs ~4.5 s of start-up (the
		// default ServiceAccount appears later); pass
		// --use-service-account-credentials=false to trade realism for speed.
		"--use-service-account-credentials=true",
		"--controllers=*",
	)
	return append(args, extra...)
}

// schedulerArgs appends extra last, so extra flags override ours.
func (l layout) schedulerArgs(extra []string) []string {
	args := append(l.kubeClientArgs("kube-scheduler", l.ports.scheduler),
		// A pod that failed scheduling before its PV appeared otherwise
		// waits up to 5 minutes for the unschedulable-queue flush.
		"--pod-max-in-unschedulable-pods-duration=10s",
	)
	return append(args, extra...)
}

func (l layout) kwokArgs() []string {
	return []string{
		"--kubeconfig=" + l.adminKubeconfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=" + kwokNodeValue,
		"--server-address=" + net.JoinHostPort("127.0.0.1", strconv.Itoa(l.ports.kwok)),
	}
}
