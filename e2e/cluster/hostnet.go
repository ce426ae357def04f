package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The network of a real-node cluster. Every real node shares the host's
// network stack, so these are fixed and real-node clusters take turns on a
// machine (NodeBinaries.LockFile).
//
//   - hostAddress, on lo, is the host as pods see it: kube-apiserver, the
//     kubelets and the cluster DNS listen there; pods reach it through their
//     bridge's gateway (local delivery, no forwarding). It stays outside the
//     pod CIDR so kube-proxy treats it as an outside endpoint.
//   - node i's pods get 10.244.<i+1>.0/24 on bridge tlpv<id>b<i>.
const (
	hostAddress = "10.243.0.1"
	podCIDR     = "10.244.0.0/16"
	// linkPrefix starts the name of every interface we create.
	linkPrefix = "tlpv"
	// kubeProxyTable is the nftables table kube-proxy's nftables mode owns.
	kubeProxyTable = "kube-proxy"
)

// nodeSubnet is the pod subnet of node number i.
func nodeSubnet(i int) string { return fmt.Sprintf("10.244.%d.0/24", i+1) }

// bridgeName is node i's CNI bridge; interface names have 15 characters.
func bridgeName(clusterID string, i int) string {
	return fmt.Sprintf("%s%sb%d", linkPrefix, clusterID, i)
}

// addHostAddress puts hostAddress on lo. An address left by a crashed run
// is taken over: holding the lock, nobody else can be using it.
func addHostAddress() error {
	if hasAddress(hostAddress) {
		return nil
	}
	return ip("addr", "add", hostAddress+"/32", "dev", "lo")
}

func removeHostAddress() error {
	if !hasAddress(hostAddress) {
		return nil
	}
	return ip("addr", "del", hostAddress+"/32", "dev", "lo")
}

func hasAddress(addr string) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.String() == addr {
			return true
		}
	}
	return false
}

// deleteLink removes an interface; one that is already gone is fine.
func deleteLink(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil
	}
	return ip("link", "del", name)
}

// ourLinks lists the interfaces whose name starts with prefix.
func ourLinks(prefix string) []string {
	ifs, _ := net.Interfaces()
	var out []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, prefix) {
			out = append(out, i.Name)
		}
	}
	return out
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nftTables lists the nftables tables as "family name".
func nftTables() ([]string, error) {
	out, err := exec.Command(nftPath, "list", "tables").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("nft list tables: %w: %s", err, strings.TrimSpace(string(out)))
	}
	var tables []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(l), "table "); ok {
			tables = append(tables, t)
		}
	}
	return tables, nil
}

// deleteKubeProxyTables removes what kube-proxy's nftables mode made (it
// does so itself on --cleanup; this is the same, without a kube-proxy).
func deleteKubeProxyTables() error {
	tables, err := nftTables()
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tables {
		family, name, _ := strings.Cut(t, " ")
		if name != kubeProxyTable {
			continue
		}
		if out, err := exec.Command(nftPath, "delete", "table", family, name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s: %w: %s", t, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// The host sysctls the real nodes change: kubelet sets the kernel and vm
// ones at start (and has no mode that leaves them alone), the bridge CNI
// plugin turns on forwarding for its gateway. They are restored once a
// node is Ready and at teardown.
var watchedSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
	"net/ipv4/conf/all/route_localnet", "net/netfilter/nf_conntrack_max",
}

// sysctls is a snapshot of watchedSysctls (missing ones left out).
type sysctls map[string]string

func readSysctls() sysctls {
	s := sysctls{}
	for _, k := range watchedSysctls {
		if v, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			s[k] = strings.TrimSpace(string(v))
		}
	}
	return s
}

// restore writes back every value that changed.
func (s sysctls) restore() error {
	var errs []error
	now := readSysctls()
	for k, v := range s {
		if now[k] == v {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", k, v, err))
		}
	}
	return errors.Join(errs...)
}

// diff lists the sysctls whose value differs from the snapshot.
func (s sysctls) diff() []string {
	var out []string
	now := readSysctls()
	for k, v := range s {
		if now[k] != v {
			out = append(out, fmt.Sprintf("%s=%s (was %s)", k, now[k], v))
		}
	}
	return out
}

// HostAddress is the host as pods of real nodes see it: a program of the
// test (the PD simulator) listening there is reachable from them.
const HostAddress = hostAddress
