package cluster

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lowestPickedPort is where FreePorts starts: well clear of the
// well-known ports other software on a machine listens on.
const lowestPickedPort = 10000

// portLease is how long a picked port stays promised to the server it was
// picked for: longer than any component takes from the pick to its bind
// (kwok binds once the apiserver is up, a minute after the pick on a
// loaded machine).
const portLease = 5 * time.Minute

// FreePorts picks n distinct free loopback ports for servers we start as
// other processes (etcd, kube-apiserver, the agents' metrics), which must be
// told a port rather than handed a listener.
//
// Environments run side by side, in one test process and in others (the
// playground's), and a port is free only until its server binds it. So
// the ports come from below the kernel's ephemeral range, where no
// outgoing connection takes one as its source port, and every pick is
// written to a book in the cache dir, under a lock, that no other pick on
// the machine hands out again for portLease. A port already bound is
// passed over.
func FreePorts(n int) ([]int, error) {
	dir, err := DefaultCacheDir()
	if err != nil {
		return nil, err
	}
	high := ephemeralLow()
	if high-lowestPickedPort < 1000 {
		// No room below the ephemeral range: let the kernel choose, as
		// before there were environments side by side.
		return kernelPorts(n)
	}
	return portBook{dir: dir, low: lowestPickedPort, high: high, now: time.Now}.pick(n)
}

// portBook is the machine's record of ports picked and not yet past their
// lease, in dir/ports.json, guarded by a flock on dir/ports.lock.
type portBook struct {
	dir       string
	low, high int // the range picked from: [low, high)
	now       func() time.Time
}

func (b portBook) pick(n int) ([]int, error) {
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return nil, fmt.Errorf("port book: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(b.dir, "ports.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("port book: %w", err)
	}
	defer lock.Close() // releases the flock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock the port book: %w", err)
	}
	path := filepath.Join(b.dir, "ports.json")
	leased := map[int]int64{} // port → leased until, Unix seconds
	if data, err := os.ReadFile(path); err == nil {
		// A damaged book forgets its leases; the bind check still holds.
		_ = json.Unmarshal(data, &leased)
	}
	now := b.now()
	for p, until := range leased {
		if until <= now.Unix() {
			delete(leased, p)
		}
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	// From a random place on, every port of the range at most once: the
	// book, not the randomness, keeps pickers apart.
	size := b.high - b.low
	start := rand.IntN(size)
	out := make([]int, 0, n)
	for i := 0; i < size && len(out) < n; i++ {
		p := b.low + (start+i)%size
		if _, taken := leased[p]; taken {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue // bound by something else
		}
		ls = append(ls, l)
		leased[p] = now.Add(portLease).Unix()
		out = append(out, p)
	}
	if len(out) < n {
		return nil, fmt.Errorf("pick %d free ports in [%d, %d): only %d are neither bound nor leased (%d leases in %s)", n, b.low, b.high, len(out), len(leased)-len(out), path)
	}
	data, err := json.Marshal(leased)
	if err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return nil, fmt.Errorf("port book: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("port book: %w", err)
	}
	return out, nil
}

// kernelPorts lets the kernel choose n ports, each listener held until all
// are chosen so that none comes twice.
func kernelPorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, 0, n)
	for len(out) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range, or 0
// when it cannot be read (FreePorts then lets the kernel choose).
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return low
}
