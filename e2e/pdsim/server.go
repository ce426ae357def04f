// Package pdsim simulates the slice of PD's HTTP API the volume-controller
// uses (notes/pd-api.md): stores with their Preparing → Serving and Up →
// Offline → Tombstone lifecycle and Disconnected/Down naming, members,
// health, the cluster ID, and the answers before the first store joined.
// The contract test reads the real PD v26.3.4 answers kept in
// volumecontroller/pd/testdata and checks the simulator answers alike.
//
// It deliberately shares no Go types with volumecontroller/pd: its JSON is
// written from the documented shapes, so the client's decoding is checked
// against an independent encoder.
//
// Time is read from Options.Now, and every transition is computed from the
// clock when a request or control call arrives, so tests drive the
// lifecycle with a fake clock and never sleep. No background goroutine is
// needed.
//
// Besides the Go control methods, the same controls are served over HTTP
// under /sim/ so another process (the playground) can drive the simulator:
//
//	POST   /sim/stores                    {"address": "..."} → {"id": N}
//	GET    /sim/stores/{id}               → snapshot
//	POST   /sim/stores/{id}/heartbeat     one heartbeat (409 once Tombstone)
//	PUT    /sim/stores/{id}/heartbeats    {"enabled": bool} stop / resume
//	PUT    /sim/stores/{id}/regions       {"count": N}
//	PUT    /sim/stores/{id}                {"address": "..."} bring a store back (pd-recover)
//	POST   /sim/rebuild                   {"cluster_id": N, "members": [...], "next_store_id": N}
//	POST   /sim/members                   {"name": "..."} → {"member_id": N}
//	DELETE /sim/members/{name}
//	PUT    /sim/unavailable               {"enabled": bool}
//	PUT    /sim/garbage                   {"enabled": bool}
package pdsim

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxReplicas       = 3
	DefaultDrainDelay        = 2 * time.Second
	DefaultDisconnectedAfter = 20 * time.Second
	DefaultDownAfter         = 30 * time.Minute
	DefaultCheckInterval     = 500 * time.Millisecond
	DefaultServingAfter      = 2 * time.Second
	// DefaultClusterID is above 2^53, like real cluster IDs, so a client
	// that decodes it through a float64 gets it wrong.
	DefaultClusterID = 7000000000000000001
)

// Errors returned by the control methods.
var (
	ErrNotFound  = errors.New("not found")
	ErrTombstone = errors.New("store is tombstone")
	ErrExists    = errors.New("already exists")
)

// Options configure a Server. Zero values take the defaults.
type Options struct {
	// MaxReplicas is PD's max-replicas: deleting an Up store is refused
	// when fewer Up stores would remain.
	MaxReplicas int
	// DrainDelay is how long an Offline store takes to move its regions
	// away; it then becomes Tombstone at the next check.
	DrainDelay time.Duration
	// DisconnectedAfter and DownAfter are the heartbeat silences after
	// which an Up store is named Disconnected and Down (PD: 20s, 30m).
	DisconnectedAfter time.Duration
	DownAfter         time.Duration
	// CheckInterval is how often the simulated PD checks Offline stores;
	// a drained store becomes Tombstone at the first check after draining.
	CheckInterval time.Duration
	// ServingAfter is how long a new store stays Preparing (no node_state
	// key, state_name "Up") before it is Serving; PD takes seconds in a
	// small cluster, hours in a big one. Negative means Serving at once.
	ServingAfter time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ClusterID is the cluster's ID, from GET /cluster and in the members
	// header; zero means DefaultClusterID.
	ClusterID uint64
	// Members are the initial PD member names, the first one leading;
	// nil means one member named "pd-0".
	Members []string
}

// Server is a simulated PD. It is safe for concurrent use.
type Server struct {
	opts    Options
	handler http.Handler

	mu        sync.Mutex
	epoch     time.Time // check ticks are counted from here
	clusterID uint64
	// bootstrapped is set when the first store joins; before that PD
	// answers every store request with 500.
	bootstrapped bool
	stores       map[uint64]*store
	nextStoreID  uint64
	members      []member // in join order
	leader       string   // member name, "" when none
	nextMember   uint64
	unavailable  bool
	garbage      bool
	// deletes counts DELETE /store/{id} requests per store, so tests can
	// show an action was not done twice.
	deletes map[uint64]int

	httpServer *http.Server
}

// New returns a simulated PD with no stores.
func New(opts Options) *Server {
	if opts.MaxReplicas <= 0 {
		opts.MaxReplicas = DefaultMaxReplicas
	}
	if opts.DrainDelay <= 0 {
		opts.DrainDelay = DefaultDrainDelay
	}
	if opts.DisconnectedAfter <= 0 {
		opts.DisconnectedAfter = DefaultDisconnectedAfter
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = DefaultDownAfter
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.ServingAfter == 0 {
		opts.ServingAfter = DefaultServingAfter
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ClusterID == 0 {
		opts.ClusterID = DefaultClusterID
	}
	if opts.Members == nil {
		opts.Members = []string{"pd-0"}
	}
	s := &Server{
		opts:        opts,
		epoch:       opts.Now(),
		clusterID:   opts.ClusterID,
		stores:      map[uint64]*store{},
		nextStoreID: 1,
		// Member ids above 2^63 make a client that decodes numbers as
		// float64 or int64 fail loudly.
		nextMember: 1<<63 + 1,
	}
	for _, name := range opts.Members {
		_, _ = s.AddMember(name) // duplicates in Options are ignored
	}
	s.handler = s.routes()
	return s
}

// Handler serves PD's API under /pd/api/v1/ and the controls under /sim/.
func (s *Server) Handler() http.Handler { return s.handler }

// Start serves on addr (127.0.0.1 on a free port when empty) and returns
// the base URL to give a PD client.
func (s *Server) Start(addr string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.httpServer != nil {
		return "", errors.New("pdsim: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("pdsim: listen: %w", err)
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	s.httpServer = srv
	go func() { _ = srv.Serve(ln) }() // returns ErrServerClosed on Close
	return "http://" + ln.Addr().String(), nil
}

// Close stops a server started with Start. It is a no-op otherwise.
func (s *Server) Close() error {
	s.mu.Lock()
	srv := s.httpServer
	s.httpServer = nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// SetUnavailable makes every PD endpoint answer 503, as a PD that lost
// quorum or a Service without ready endpoints would. Controls keep working.
func (s *Server) SetUnavailable(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = on
}

// SetGarbage makes every PD endpoint answer 200 with a body that is not
// valid JSON, and change nothing.
func (s *Server) SetGarbage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.garbage = on
}

// now reads the clock and brings the simulated cluster up to that instant.
// Callers hold s.mu.
func (s *Server) nowLocked() time.Time {
	now := s.opts.Now()
	s.advanceLocked(now)
	return now
}
