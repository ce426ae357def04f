package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Names the certificates are issued to; the apiserver's --requestheader-allowed-names
// must match the front-proxy client's CN.
const (
	adminUser       = "admin"
	adminGroup      = "system:masters"
	frontProxyUser  = "front-proxy-client"
	certValidity    = 365 * 24 * time.Hour
	clockSkewMargin = time.Hour
)

// pkiFiles are the PEM files of one cluster, all under its work dir.
type pkiFiles struct {
	CACert, CAKey                             string
	ServingCert, ServingKey                   string // kube-apiserver
	AdminCert, AdminKey                       string
	FrontProxyCACert                          string
	FrontProxyClientCert, FrontProxyClientKey string
	SAKey, SAPub                              string // service-account token signing
}

// keyPair is a certificate with its private key.
type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// writePKI creates the cluster's CAs, certificates and service-account keys
// in dir. EC P-256 keys keep generation in the milliseconds.
func writePKI(dir string, serviceCIDR string) (pkiFiles, error) {
	p := func(name string) string { return filepath.Join(dir, name) }
	f := pkiFiles{
		CACert: p("ca.crt"), CAKey: p("ca.key"),
		ServingCert: p("apiserver.crt"), ServingKey: p("apiserver.key"),
		AdminCert: p("admin.crt"), AdminKey: p("admin.key"),
		FrontProxyCACert:     p("front-proxy-ca.crt"),
		FrontProxyClientCert: p("front-proxy-client.crt"), FrontProxyClientKey: p("front-proxy-client.key"),
		SAKey: p("sa.key"), SAPub: p("sa.pub"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	apiIP, err := firstIP(serviceCIDR)
	if err != nil {
		return f, err
	}

	ca, err := newCA("tidb-localpv-ca")
	if err != nil {
		return f, err
	}
	serving, err := ca.issue(pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), apiIP})
	if err != nil {
		return f, err
	}
	admin, err := ca.issue(pkix.Name{CommonName: adminUser, Organization: []string{adminGroup}}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return f, err
	}
	fpCA, err := newCA("tidb-localpv-front-proxy-ca")
	if err != nil {
		return f, err
	}
	fpClient, err := fpCA.issue(pkix.Name{CommonName: frontProxyUser}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return f, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}

	writes := []func() error{
		func() error { return ca.write(f.CACert, f.CAKey) },
		func() error { return serving.write(f.ServingCert, f.ServingKey) },
		func() error { return admin.write(f.AdminCert, f.AdminKey) },
		func() error { return fpCA.write(f.FrontProxyCACert, "") },
		func() error { return fpClient.write(f.FrontProxyClientCert, f.FrontProxyClientKey) },
		func() error { return writeKey(f.SAKey, saKey) },
		func() error { return writePublicKey(f.SAPub, saKey.Public()) },
	}
	for _, w := range writes {
		if err := w(); err != nil {
			return f, fmt.Errorf("write pki: %w", err)
		}
	}
	return f, nil
}

func newCA(cn string) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-clockSkewMargin),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

// issue signs a leaf certificate for subject with the given usage and SANs.
func (ca *keyPair) issue(subject pkix.Name, usage x509.ExtKeyUsage, dnsNames []string, ips []net.IP) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    time.Now().Add(-clockSkewMargin),
		NotAfter:     time.Now().Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

// write stores the certificate, and the key unless keyPath is empty.
func (kp *keyPair) write(certPath, keyPath string) error {
	block := &pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(block), 0o644); err != nil {
		return err
	}
	if keyPath == "" {
		return nil
	}
	return writeKey(keyPath, kp.key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func writePublicKey(path string, pub crypto.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

// serial returns a random 128-bit serial number, unique enough for a test CA.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		// crypto/rand does not fail on Linux; a fixed serial would still work.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// firstIP returns the first host address of cidr, the ClusterIP the
// apiserver gives the kubernetes Service (10.96.0.1 for 10.96.0.0/16).
func firstIP(cidr string) (net.IP, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("service CIDR: %w", err)
	}
	ip := n.IP.To4()
	if ip == nil {
		ip = n.IP.To16()
	}
	out := make(net.IP, len(ip))
	copy(out, ip)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out, nil
}
