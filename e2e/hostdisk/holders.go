package hostdisk

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// loopGrace is how long WaitLeftovers gives a detached loop device to go.
// `losetup -d` on a device somebody still has open only marks it to be
// cleared on the last close; test environments run side by side, and a
// probe of another one (losetup scanning for a free device, blkid) holds a
// device for milliseconds.
const loopGrace = 5 * time.Second

// WaitLeftovers is Leftovers, giving loop devices loopGrace to finish
// detaching; each loop device still there is named with its holders.
func WaitLeftovers(root string) (mounts, loops []string, err error) {
	deadline := time.Now().Add(loopGrace)
	for {
		mounts, loops, err = Leftovers(root)
		if err != nil || len(loops) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, dev := range loops {
		if h := LoopHolders(dev); len(h) > 0 {
			loops[i] = dev + " (held by " + strings.Join(h, "; ") + ")"
		} else {
			loops[i] = dev + " (no process holds it open or mounted)"
		}
	}
	return mounts, loops, err
}

// LoopHolders says who keeps dev from going away: processes that have it
// open, and mount namespaces that have it mounted (a namespace copied from
// the host's while it was mounted keeps its filesystem alive).
func LoopHolders(dev string) []string {
	raw, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "dev"))
	if err != nil {
		return nil
	}
	majMin := strings.TrimSpace(string(raw))
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	seenNS := map[string]bool{}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name())
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil && target == dev {
				out = append(out, fmt.Sprintf("pid %d (%s) has it open", pid, command(pid)))
				break
			}
		}
		ns, err := os.Readlink(filepath.Join(dir, "ns", "mnt"))
		if err != nil || seenNS[ns] {
			continue
		}
		seenNS[ns] = true
		info, err := os.ReadFile(filepath.Join(dir, "mountinfo"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[2] == majMin {
				out = append(out, fmt.Sprintf("mounted at %s in the mount namespace of pid %d (%s)", f[4], pid, command(pid)))
			}
		}
	}
	return slices.Compact(out)
}

func command(pid int) string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "?"
	}
	cmd := strings.TrimSpace(strings.ReplaceAll(string(raw), "\x00", " "))
	if len(cmd) > 120 {
		cmd = cmd[:120] + "…"
	}
	return cmd
}
