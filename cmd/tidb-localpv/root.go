package main

import (
	goflag "flag"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "tidb-localpv",
		Short:         "Local SSDs for TiKV and PD on Kubernetes, looked after for their whole life",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	klogFlags := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(klogFlags)
	// Only the verbosity flags: the rest of klog's set is about log files,
	// which a pod does not want.
	for _, name := range []string{"v", "vmodule"} {
		root.PersistentFlags().AddGoFlag(klogFlags.Lookup(name))
	}
	root.AddCommand(newAgentCommand(), newControllerCommand(), newDisksCommand(), newVersionCommand())
	return root
}

// kubeFlags are the connection flags every subcommand that talks to the API
// server shares.
type kubeFlags struct {
	kubeconfig string
	context    string
	qps        float32
	burst      int
}

func (k *kubeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.kubeconfig, "kubeconfig", "", "path to a kubeconfig for running outside the cluster; empty: in-cluster config, then $KUBECONFIG")
	cmd.Flags().StringVar(&k.context, "context", "", "kubeconfig context to use (default: the current context)")
	cmd.Flags().Float32Var(&k.qps, "kube-api-qps", 20, "steady requests per second to the API server")
	cmd.Flags().IntVar(&k.burst, "kube-api-burst", 40, "request burst to the API server")
}

func (k *kubeFlags) config(userAgent string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	fromFile := func() (*rest.Config, error) {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		rules.ExplicitPath = k.kubeconfig
		return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context}).ClientConfig()
	}
	if k.kubeconfig != "" || k.context != "" {
		cfg, err = fromFile()
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		cfg, err = fromFile()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig: not in a cluster, and --kubeconfig / $KUBECONFIG / ~/.kube/config give none: %w", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", k.kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = k.qps, k.burst
	cfg.UserAgent = userAgent + "/" + version
	return cfg, nil
}

func (k *kubeFlags) client(userAgent string) (kubernetes.Interface, error) {
	cfg, err := k.config(userAgent)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}
