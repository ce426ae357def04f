package sim

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReadContainerArgs_ExpandsEnvLikeTheKubelet(t *testing.T) {
	root, err := FindRepoRoot()
	require.NoError(t, err)

	agent, err := ReadContainerArgs(filepath.Join(root, agentDaemonSet))
	require.NoError(t, err)
	require.Contains(t, agent, "--discovery-dir=tidb-localpv-tikv=/mnt/tidb-localpv/tikv")
	require.Contains(t, agent, "--inventory="+Namespace+"/"+InventoryName)

	controller, err := ReadContainerArgs(filepath.Join(root, controllerDeployment))
	require.NoError(t, err)
	require.Contains(t, controller, "--lease-name=tidb-localpv-controller")
}

func TestReadContainerArgs_RefusesAReferenceTheEnvDoesNotDefine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ds.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`
spec:
  template:
    spec:
      containers:
        - name: agent
          args: [agent, --inventory=$(NOWHERE)/x]
`), 0o644))
	_, err := ReadContainerArgs(path)
	require.ErrorContains(t, err, "NOWHERE")
}
