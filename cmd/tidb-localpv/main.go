// Command tidb-localpv is the node agent, the volume-controller and the
// operator's status tool of tidb-localpv, in one binary.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
)

// kubectlPlugin is the file name under which kubectl finds this binary as
// the plugin "kubectl tidb-localpv".
const kubectlPlugin = "kubectl-tidb_localpv"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	root := newRootCommand()
	// Installed as kubectl-tidb_localpv, this binary is the kubectl plugin
	// "kubectl tidb-localpv"; its help says so.
	if filepath.Base(os.Args[0]) == kubectlPlugin {
		root.Use = "kubectl tidb-localpv"
	}
	err := root.ExecuteContext(ctx)
	stop()
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		code := exitFailure
		var e *exitError
		if errors.As(err, &e) {
			code = e.code
		} else if strings.HasPrefix(err.Error(), "unknown flag") || strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "flag needs an argument") {
			code = exitUsage
		}
		os.Exit(code)
	}
}
