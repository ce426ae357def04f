package cluster

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// groupGone reports whether no process is left in process group pgid.
func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

func TestAnEarlyExitReportsTheEndOfTheLog(t *testing.T) {
	dir := t.TempDir()
	p, err := startProcess("failing", "/bin/sh", []string{"-c", "for i in $(seq 1 30); do echo line $i; done; exit 3"}, os.Environ(), dir)
	require.NoError(t, err)

	err = p.exitError() // waits for the exit
	require.ErrorContains(t, err, "failing exit status 3")
	require.ErrorContains(t, err, "line 30")
	require.NotContains(t, err.Error(), "line 10\n", "only the last 20 lines")
}

func TestStopKillsTheWholeProcessGroupEvenIfSIGTERMIsIgnored(t *testing.T) {
	if testing.Short() {
		t.Skip("waits the 5 s SIGTERM grace period")
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	// The shell ignores SIGTERM and leaves a child behind: both must go.
	script := `trap '' TERM; sleep 300 & echo $! > ` + pidFile + `; wait`
	p, err := startProcess("stubborn", "/bin/sh", []string{"-c", script}, os.Environ(), dir)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		data, err := os.ReadFile(pidFile)
		return err == nil && strings.TrimSpace(string(data)) != ""
	}, 5*time.Second, 20*time.Millisecond)

	start := time.Now()
	p.stop()
	require.GreaterOrEqual(t, time.Since(start), stopGrace, "SIGKILL only after the grace period")
	require.True(t, p.exited())
	require.Eventually(t, func() bool { return groupGone(p.pid()) }, 5*time.Second, 20*time.Millisecond)

	data, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	child, err := strconv.Atoi(strings.TrimSpace(string(data)))
	require.NoError(t, err)
	// The orphaned sleep is reparented and reaped by init; it must be gone
	// (or at worst a zombie awaiting that reaping, which kill(0) still sees).
	require.Eventually(t, func() bool {
		err := syscall.Kill(child, 0)
		if errors.Is(err, syscall.ESRCH) {
			return true
		}
		stat, _ := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		return strings.Contains(string(stat), ") Z ")
	}, 5*time.Second, 20*time.Millisecond)
}

func TestStopOfAnExitedProcessReturnsAtOnce(t *testing.T) {
	p, err := startProcess("quick", "/bin/true", nil, os.Environ(), t.TempDir())
	require.NoError(t, err)
	require.Eventually(t, p.exited, 5*time.Second, 10*time.Millisecond)

	start := time.Now()
	p.stop()
	require.Less(t, time.Since(start), time.Second)
}
