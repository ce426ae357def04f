package cluster

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
)

// loadCA reads the cluster CA written by writePKI, to issue the real
// nodes' certificates from it.
func loadCA(p pkiFiles) (*keyPair, error) {
	certPEM, err := os.ReadFile(p.CACert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(p.CAKey)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("read cluster CA: not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

// pemOf returns the certificate and key of kp as PEM.
func pemOf(kp *keyPair) (certPEM, keyPEM []byte, err error) {
	der, err := x509.MarshalECPrivateKey(kp.key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// issueClient issues a client certificate for user in groups.
func issueClient(ca *keyPair, user string, groups ...string) (credentials, error) {
	kp, err := ca.issue(pkix.Name{CommonName: user, Organization: groups}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return credentials{}, err
	}
	c, k, err := pemOf(kp)
	return credentials{certPEM: c, keyPEM: k}, err
}

// reissueServing replaces the apiserver's serving certificate with one
// that also names ip: with real nodes, pods and kubelets reach the
// apiserver there.
func reissueServing(p pkiFiles, serviceIP net.IP, ip string) error {
	ca, err := loadCA(p)
	if err != nil {
		return err
	}
	serving, err := ca.issue(pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), serviceIP, net.ParseIP(ip)})
	if err != nil {
		return err
	}
	if err := serving.write(p.ServingCert, p.ServingKey); err != nil {
		return fmt.Errorf("write serving cert: %w", err)
	}
	return nil
}

// writeCredentials writes a client cert and key as files (for flags such
// as --kubelet-client-certificate).
func writeCredentials(c credentials, certPath, keyPath string) error {
	if err := os.WriteFile(certPath, c.certPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, c.keyPEM, 0o600)
}
