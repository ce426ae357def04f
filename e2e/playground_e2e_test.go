//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/e2e/sim"
)

// `make demo` is what a newcomer runs first. Its whole story runs here,
// beside the scenarios, as `make demo-smoke` runs it: a change that breaks
// the playground, or makes it leave anything behind (it checks that itself
// and exits non-zero), fails the suite.
func TestPlayground_TellsTheWholeStoryAndLeavesNothing(t *testing.T) {
	t.Parallel()
	takeScenarioSlot(t)
	root, err := sim.FindRepoRoot()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "playground")
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./e2e/playground")
	build.Dir = root
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the playground: %s", out)

	work, err := os.MkdirTemp("", "tlpv-playground-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(work) })
	run := exec.CommandContext(ctx, bin, "-exit", "-work-dir", work)
	run.Dir = root
	run.Stdout, run.Stderr = testLog{t}, testLog{t}
	// On a timeout the playground is interrupted and tears down as on Ctrl-C.
	run.Cancel = func() error { return run.Process.Signal(os.Interrupt) }
	run.WaitDelay = time.Minute
	require.NoError(t, run.Run(), "the playground failed or left something behind (its output is above)")
}
