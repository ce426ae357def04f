package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// clusterDomain is the kubelets' clusterDomain.
const clusterDomain = "cluster.local"

// clusterDNS answers what cluster DNS answers for Services: the A record
// <service>.<namespace>.svc.cluster.local → its ClusterIP, read from the
// API server per query (a handful of queries per test). Everything else is
// NXDOMAIN at once: pods here have no business outside the cluster.
type clusterDNS struct {
	client  kubernetes.Interface
	servers []*dns.Server
}

// startClusterDNS serves on addr (host:53) over UDP and TCP.
func startClusterDNS(client kubernetes.Interface, addr string) (*clusterDNS, error) {
	d := &clusterDNS{client: client}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", d.serve)
	for _, network := range []string{"udp", "tcp"} {
		started := make(chan error, 1)
		s := &dns.Server{Addr: addr, Net: network, Handler: mux, NotifyStartedFunc: func() { started <- nil }}
		go func() {
			if err := s.ListenAndServe(); err != nil {
				started <- err
			}
		}()
		select {
		case err := <-started:
			if err != nil {
				d.stop()
				return nil, fmt.Errorf("cluster DNS on %s/%s: %w", addr, network, err)
			}
		case <-time.After(10 * time.Second):
			d.stop()
			return nil, fmt.Errorf("cluster DNS on %s/%s did not start", addr, network)
		}
		d.servers = append(d.servers, s)
	}
	return d, nil
}

func (d *clusterDNS) stop() {
	for _, s := range d.servers {
		_ = s.Shutdown()
	}
}

func (d *clusterDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.Rcode = dns.RcodeNameError
	if len(req.Question) == 1 {
		q := req.Question[0]
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ip, err := d.lookup(ctx, q.Name)
		cancel()
		switch {
		case err == nil:
			m.Rcode = dns.RcodeSuccess
			if q.Qtype == dns.TypeA && q.Qclass == dns.ClassINET {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
					A:   ip,
				})
			}
			// AAAA and other types of a known name: NODATA, not NXDOMAIN,
			// or resolvers would give up on the A record too.
		case errors.Is(err, errServerFailure):
			m.Rcode = dns.RcodeServerFailure
		}
	}
	_ = w.WriteMsg(m)
}

var (
	errNoSuchName    = errors.New("no such name")
	errServerFailure = errors.New("server failure")
)

// lookup resolves <svc>.<ns>.svc.cluster.local. to the Service's ClusterIP.
func (d *clusterDNS) lookup(ctx context.Context, qname string) (net.IP, error) {
	name, ok := strings.CutSuffix(strings.ToLower(dns.Fqdn(qname)), ".svc."+clusterDomain+".")
	if !ok {
		return nil, errNoSuchName
	}
	svc, ns, ok := strings.Cut(name, ".")
	if !ok || strings.Contains(ns, ".") {
		return nil, errNoSuchName
	}
	s, err := d.client.CoreV1().Services(ns).Get(ctx, svc, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, errNoSuchName
		}
		return nil, errServerFailure
	}
	ip := net.ParseIP(s.Spec.ClusterIP)
	if ip == nil || s.Spec.ClusterIP == corev1.ClusterIPNone || ip.To4() == nil {
		return nil, errNoSuchName
	}
	return ip.To4(), nil
}
