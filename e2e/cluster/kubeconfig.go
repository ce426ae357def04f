package cluster

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Client-go's default 5 QPS throttles tests that create many objects; this
// is a private cluster, so let clients go faster.
const (
	clientQPS   = 100
	clientBurst = 200
)

// credentials is how a kubeconfig authenticates: a client certificate or a
// bearer token.
type credentials struct {
	certPEM, keyPEM []byte
	token           string
}

// adminRESTConfig is the admin's client config, with the PEMs inlined so the
// config stays valid if the files move.
func adminRESTConfig(server string, pki pkiFiles) (*rest.Config, error) {
	ca, err := os.ReadFile(pki.CACert)
	if err != nil {
		return nil, err
	}
	cert, err := os.ReadFile(pki.AdminCert)
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(pki.AdminKey)
	if err != nil {
		return nil, err
	}
	return &rest.Config{
		Host:            server,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca, CertData: cert, KeyData: key},
		QPS:             clientQPS,
		Burst:           clientBurst,
	}, nil
}

// writeKubeconfig writes a single-context kubeconfig for user at path.
func writeKubeconfig(path, server string, caPEM []byte, user string, creds credentials) error {
	const name = "tidb-localpv"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: creds.certPEM,
		ClientKeyData:         creds.keyPEM,
		Token:                 creds.token,
	}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
