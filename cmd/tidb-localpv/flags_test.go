package main

import (
	"io"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

func TestFlags_RefuseAReferenceTheKubeletLeftUnexpanded(t *testing.T) {
	cases := []struct {
		name string
		cmd  *cobra.Command
		args []string
		want string
	}{
		{"agent inventory", newAgentCommand(), []string{"--node-name=n1", "--inventory=$(POD_NAMESPACE)/inv"}, "define POD_NAMESPACE"},
		{"agent discovery class", newAgentCommand(), []string{"--node-name=n1", "--discovery-dir=$(TIKV_STORAGE_CLASS)=/mnt/x"}, "define TIKV_STORAGE_CLASS"},
		{"controller lease", newControllerCommand(), []string{"--lease-name=$(LEASE_NAME)"}, "define LEASE_NAME"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cmd.SetArgs(c.args)
			c.cmd.SetOut(io.Discard)
			c.cmd.SetErr(io.Discard)
			err := c.cmd.Execute()
			require.ErrorContains(t, err, c.want, "the error says which env variable is missing, before anything connects")
		})
	}
}
