package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Where the host's runtime pieces live: Debian's runc and CNI plugins.
const (
	runcPath   = "/usr/sbin/runc"
	cniBinDir  = "/usr/lib/cni"
	nftPath    = "/usr/sbin/nft"
	cgroupRoot = "/sys/fs/cgroup"
)

// hostNeed is one thing a real node needs from the host and the Debian
// package that provides it.
type hostNeed struct {
	what, pkg string
	ok        func() bool
}

func fileExists(path string) func() bool {
	return func() bool { _, err := os.Stat(path); return err == nil }
}

// hostNeeds lists what the real nodes use from the host. The binaries we
// build (kubelet, kube-proxy, containerd) are not here: EnsureNodeBinaries
// makes them.
func hostNeeds() []hostNeed {
	return []hostNeed{
		{"runc", "runc", fileExists(runcPath)},
		{"CNI plugins bridge, host-local, loopback", "containernetworking-plugins", func() bool {
			for _, p := range []string{"bridge", "host-local", "loopback"} {
				if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
					return false
				}
			}
			return true
		}},
		{"nft (kube-proxy's nftables mode)", "nftables", fileExists(nftPath)},
		{"unshare, nsenter, findmnt", "util-linux", func() bool {
			for _, p := range []string{"unshare", "nsenter", "findmnt"} {
				if _, err := exec.LookPath(p); err != nil {
					return false
				}
			}
			return true
		}},
		{"ip (iproute2)", "iproute2", func() bool { _, err := exec.LookPath("ip"); return err == nil }},
		{"mkfs.xfs (xfs disks in the scenarios)", "xfsprogs", func() bool { _, err := exec.LookPath("mkfs.xfs"); return err == nil }},
		{"debootstrap (the image's Debian base)", "debootstrap", func() bool { _, err := exec.LookPath("debootstrap"); return err == nil }},
	}
}

// InstallHostPackages installs, as root, the Debian packages of whatever
// real nodes need and the host lacks (apt-get update, then install), so a
// fresh machine needs nothing by hand. Without root, or without apt, it does
// nothing: Preflight then names what is missing.
func InstallHostPackages(ctx context.Context, progress io.Writer) error {
	if progress == nil {
		progress = io.Discard
	}
	var pkgs []string
	for _, n := range hostNeeds() {
		if !n.ok() {
			pkgs = append(pkgs, n.pkg)
		}
	}
	if len(pkgs) == 0 || os.Geteuid() != 0 {
		return nil
	}
	aptGet, err := exec.LookPath("apt-get")
	if err != nil {
		return nil
	}
	fmt.Fprintf(progress, "installing Debian packages for the real nodes: %s\n", strings.Join(pkgs, " "))
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{{"update", "-q"}, append([]string{"install", "-y", "-q", "--no-install-recommends"}, pkgs...)} {
		cmd := exec.CommandContext(ctx, aptGet, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, tail(string(out), 20))
		}
	}
	return nil
}

// Preflight lists what keeps real nodes from running on this host, each
// with its remedy; empty means they can run. Tests skip with this reason
// (or fail where CI is set).
func Preflight() []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (kubelet, containerd, mounts and cgroups)")
	}
	for _, n := range hostNeeds() {
		if !n.ok() {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", n.what, n.pkg))
		}
	}
	for _, h := range cgroupHierarchies {
		if _, err := os.Stat(filepath.Join(cgroupRoot, h, "cgroup.procs")); err != nil {
			missing = append(missing, fmt.Sprintf("cgroup v1 hierarchy %s mounted at %s (kubelet runs with cgroupfs on cgroup v1 here)", h, filepath.Join(cgroupRoot, h)))
		}
	}
	if !hasFilesystem("overlay") {
		missing = append(missing, "the overlay filesystem (containerd's snapshotter)")
	}
	return missing
}

// hasFilesystem reports whether the kernel knows a filesystem type.
func hasFilesystem(fsType string) bool {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == fsType {
			return true
		}
	}
	return false
}
