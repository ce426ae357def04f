package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block, path)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return cert
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestPKIServingCertVerifiesForEveryAPIServerName(t *testing.T) {
	files, err := writePKI(t.TempDir(), "10.96.0.0/16")
	require.NoError(t, err)
	ca := readCert(t, files.CACert)
	serving := readCert(t, files.ServingCert)

	for _, name := range []string{"127.0.0.1", "10.96.0.1", "localhost", "kubernetes", "kubernetes.default.svc"} {
		_, err := serving.Verify(x509.VerifyOptions{
			DNSName:   name,
			Roots:     pool(ca),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		require.NoError(t, err, name)
	}
	require.True(t, serving.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")))
}

func TestPKIAdminCertIsASystemMastersClientOfTheClusterCA(t *testing.T) {
	files, err := writePKI(t.TempDir(), "10.96.0.0/16")
	require.NoError(t, err)
	admin := readCert(t, files.AdminCert)

	_, err = admin.Verify(x509.VerifyOptions{
		Roots:     pool(readCert(t, files.CACert)),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	require.NoError(t, err)
	require.Equal(t, "admin", admin.Subject.CommonName)
	require.Equal(t, []string{"system:masters"}, admin.Subject.Organization)

	_, err = tls.LoadX509KeyPair(files.AdminCert, files.AdminKey)
	require.NoError(t, err, "admin key must match its certificate")
}

func TestPKIFrontProxyClientIsSignedByTheFrontProxyCAOnly(t *testing.T) {
	files, err := writePKI(t.TempDir(), "10.96.0.0/16")
	require.NoError(t, err)
	client := readCert(t, files.FrontProxyClientCert)
	opts := x509.VerifyOptions{KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}

	opts.Roots = pool(readCert(t, files.FrontProxyCACert))
	_, err = client.Verify(opts)
	require.NoError(t, err)
	require.Equal(t, "front-proxy-client", client.Subject.CommonName)

	opts.Roots = pool(readCert(t, files.CACert))
	_, err = client.Verify(opts)
	require.Error(t, err, "the front-proxy CA must be separate from the cluster CA")
}

func TestPKIServiceAccountKeysFormAPair(t *testing.T) {
	files, err := writePKI(t.TempDir(), "10.96.0.0/16")
	require.NoError(t, err)

	keyPEM, err := os.ReadFile(files.SAKey)
	require.NoError(t, err)
	keyBlock, _ := pem.Decode(keyPEM)
	key, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	require.NoError(t, err)

	pubPEM, err := os.ReadFile(files.SAPub)
	require.NoError(t, err)
	pubBlock, _ := pem.Decode(pubPEM)
	pub, err := x509.ParsePKIXPublicKey(pubBlock.Bytes)
	require.NoError(t, err)
	require.True(t, key.PublicKey.Equal(pub))
}

func TestFirstIPIsTheKubernetesServiceAddress(t *testing.T) {
	ip, err := firstIP("10.96.0.0/16")
	require.NoError(t, err)
	require.Equal(t, "10.96.0.1", ip.String())

	ip, err = firstIP("fd00:10:96::/112")
	require.NoError(t, err)
	require.Equal(t, "fd00:10:96::1", ip.String())

	_, err = firstIP("nonsense")
	require.Error(t, err)
}
