package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupHierarchies are the cgroup v1 hierarchies kubelet's cgroupfs
// driver expects its cgroupRoot in (name=systemd is mounted as "systemd").
var cgroupHierarchies = []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd"}

// createCgroupRoot makes name (e.g. /tlpv-1a2b-node-a) in every hierarchy;
// kubelet refuses to start when its cgroupRoot is missing in one. A new
// cpuset starts with no CPUs and no memory nodes: copy the parent's.
func createCgroupRoot(name string) error {
	for _, h := range cgroupHierarchies {
		dir := filepath.Join(cgroupRoot, h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		if h != "cpuset" {
			continue
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(cgroupRoot, h, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("set %s of %s: %w", f, dir, err)
			}
		}
	}
	return nil
}

// cgroupProcs lists the processes in the tree of name (any hierarchy
// holds every process of the node: pids is used).
func cgroupProcs(name string) []int {
	var pids []int
	root := filepath.Join(cgroupRoot, "pids", name)
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// killCgroup SIGKILLs every process in the tree of name until none is
// left (processes may fork while being killed), for at most timeout.
func killCgroup(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := cgroupProcs(name)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still in cgroup %s: %v", name, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroupRoot removes the tree of name from every hierarchy, deepest
// first. A cgroup with a process that is still exiting refuses (EBUSY) for
// a moment: retry briefly.
func removeCgroupRoot(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, h := range cgroupHierarchies {
			root := filepath.Join(cgroupRoot, h, name)
			var dirs []string
			_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			// Walk order is lexical, parents before children: reverse it.
			slices.Reverse(dirs)
			for _, d := range dirs {
				if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
					left = append(left, d)
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups left: %s", strings.Join(left, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgroupLeftovers lists the cgroups whose top-level name starts with
// prefix in any hierarchy.
func cgroupLeftovers(prefix string) []string {
	var out []string
	for _, h := range cgroupHierarchies {
		entries, _ := os.ReadDir(filepath.Join(cgroupRoot, h))
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
				out = append(out, filepath.Join(cgroupRoot, h, e.Name()))
			}
		}
	}
	return out
}
