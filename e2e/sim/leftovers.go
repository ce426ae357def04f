package sim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// stragglerGrace is how long Close waits for killed processes to vanish:
// a SIGKILLed grandchild is gone within milliseconds, but not at once.
const stragglerGrace = 5 * time.Second

// Stragglers lists the processes whose command line mentions dir (the work
// dir: every component, agent and tool the harness starts names a path
// inside it), as "pid: command line". This process and its ancestors are
// left out — a playground started with -work-dir=<dir> names it too.
func Stragglers(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	skip := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !skip[pid]; pid = parentOf(pid) {
		skip[pid] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || skip[pid] {
			continue
		}
		// A process that exits meanwhile (or a zombie, whose cmdline is
		// empty) simply does not match.
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(raw, []byte(dir)) {
			continue
		}
		cmd := strings.TrimSpace(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
		if len(cmd) > 200 {
			cmd = cmd[:200] + "…"
		}
		out = append(out, fmt.Sprintf("%d: %s", pid, cmd))
	}
	return out, nil
}

// waitNoStragglers polls Stragglers until none is left or the grace ends,
// and returns what is still there.
func waitNoStragglers(dir string) ([]string, error) {
	deadline := time.Now().Add(stragglerGrace)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		left, err := Stragglers(dir)
		if err != nil || len(left) == 0 || time.Now().After(deadline) {
			return left, err
		}
		<-tick.C
	}
}

// parentOf reads the parent pid from /proc/<pid>/stat; 0 when unknown.
func parentOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after its last ')' are plain: state, ppid, …
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
