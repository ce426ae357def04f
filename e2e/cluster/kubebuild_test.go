package cluster

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// kubernetesGoModFixture is a trimmed kubernetes go.mod with the shapes the
// generator must handle: comments, require blocks, a staging replace block,
// a single-line replace to a published version and a godebug line.
const kubernetesGoModFixture = `// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
	github.com/blang/semver/v4 v4.0.0
	k8s.io/api v0.0.0 // replaced below
	k8s.io/client-go v0.0.0
)

require (
	sigs.k8s.io/yaml v1.6.0 // indirect
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go // the client
	k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
)

replace github.com/example/pinned => github.com/example/pinned v1.2.3
`

func TestParseKubeVersionDerivesTheStagingVersion(t *testing.T) {
	v, err := parseKubeVersion("v1.35.4")
	require.NoError(t, err)
	require.Equal(t, kubeVersion{Full: "v1.35.4", Major: "1", Minor: "35", Staging: "v0.35.4"}, v)

	rc, err := parseKubeVersion("v1.36.0-rc.1")
	require.NoError(t, err)
	require.Equal(t, "v0.36.0-rc.1", rc.Staging)

	for _, bad := range []string{"1.35.4", "v2.0.0", "v1.35", "latest"} {
		_, err := parseKubeVersion(bad)
		require.Error(t, err, bad)
	}
}

func TestKubeGoModPointsStagingReplacesAtPublishedVersions(t *testing.T) {
	v, err := parseKubeVersion("v1.35.4")
	require.NoError(t, err)

	got, err := kubeGoMod([]byte(kubernetesGoModFixture), v)
	require.NoError(t, err)

	want := `// Generated from the go.mod of k8s.io/kubernetes v1.35.4.

module kubebuild

go 1.25.0

godebug default=go1.25

require k8s.io/kubernetes v1.35.4

replace (
	k8s.io/api => k8s.io/api v0.35.4
	k8s.io/client-go => k8s.io/client-go v0.35.4
	k8s.io/sample-controller => k8s.io/sample-controller v0.35.4
	github.com/example/pinned => github.com/example/pinned v1.2.3
)

`
	require.Equal(t, want, string(got))
}

func TestKubeGoModCopiesAGodebugBlock(t *testing.T) {
	v, err := parseKubeVersion("v1.35.4")
	require.NoError(t, err)
	upstream := "module k8s.io/kubernetes\n\ngo 1.26.0\n\ngodebug (\n\tdefault=go1.26\n\twinsymlink=0\n)\n\nreplace k8s.io/api => ./staging/src/k8s.io/api\n"

	got, err := kubeGoMod([]byte(upstream), v)
	require.NoError(t, err)
	require.Contains(t, string(got), "go 1.26.0\n")
	require.Contains(t, string(got), "godebug (\n\tdefault=go1.26\n\twinsymlink=0\n)\n")
	require.Contains(t, string(got), "replace k8s.io/api => k8s.io/api v0.35.4\n")
}

func TestKubeGoModRejectsAGoModWithoutStagingReplaces(t *testing.T) {
	v, err := parseKubeVersion("v1.35.4")
	require.NoError(t, err)

	_, err = kubeGoMod([]byte("module k8s.io/kubernetes\n\ngo 1.25.0\n"), v)
	require.ErrorContains(t, err, "no replace directives")

	_, err = kubeGoMod([]byte("module k8s.io/kubernetes\n\ngo 1.25.0\nreplace example.com/x => ../x\n"), v)
	require.ErrorContains(t, err, "not a staging module")
}

func TestKubeLdflagsStampTheVersionInTheWarmedOrder(t *testing.T) {
	v, err := parseKubeVersion("v1.35.4")
	require.NoError(t, err)
	require.Equal(t, "-s -w"+
		" -X k8s.io/component-base/version.gitVersion=v1.35.4"+
		" -X k8s.io/component-base/version.gitMajor=1"+
		" -X k8s.io/component-base/version.gitMinor=35"+
		" -X k8s.io/client-go/pkg/version.gitVersion=v1.35.4"+
		" -X k8s.io/client-go/pkg/version.gitMajor=1"+
		" -X k8s.io/client-go/pkg/version.gitMinor=35", v.ldflags())
}

func TestGoEnvDropsEtcdVariablesAndForcesModMod(t *testing.T) {
	t.Setenv("ETCD_NAME", "leak")
	t.Setenv("GOFLAGS", "-mod=vendor")

	env := goEnv()
	require.NotContains(t, env, "ETCD_NAME=leak")
	require.NotContains(t, env, "GOFLAGS=-mod=vendor")
	require.Contains(t, env, "GOFLAGS=-mod=mod")
}

func TestBinariesLiveInAPerVersionCacheLayout(t *testing.T) {
	t.Setenv(CacheEnv, "/cache")
	opts, err := BuildOptions{}.withDefaults()
	require.NoError(t, err)

	require.Equal(t, Binaries{
		Etcd:              "/cache/etcd/v3.6.5/etcd",
		APIServer:         "/cache/kube/v1.35.4/kube-apiserver",
		ControllerManager: "/cache/kube/v1.35.4/kube-controller-manager",
		Scheduler:         "/cache/kube/v1.35.4/kube-scheduler",
		Kubelet:           "/cache/kube/v1.35.4/kubelet",
		Kwok:              "/cache/kwok/v0.7.0/kwok",
	}, binariesIn(opts))
	require.Equal(t, NodeBinaries{
		Kubelet:        "/cache/kube/v1.35.4/kubelet",
		KubeProxy:      "/cache/kube-proxy/v1.35.4/kube-proxy",
		Containerd:     "/cache/containerd/v2.4.2/containerd",
		ContainerdShim: "/cache/containerd/v2.4.2/containerd-shim-runc-v2",
		Ctr:            "/cache/containerd/v2.4.2/ctr",
		LockFile:       "/cache/real-nodes.lock",
	}, nodeBinariesIn(opts, DefaultContainerdVersion))
}
