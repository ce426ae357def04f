package pdsim

import (
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// t0 is the fake clock's start; 1795326000 in Unix seconds.
var t0 = time.Date(2026, 11, 22, 5, 40, 0, 0, time.UTC)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newSim returns a simulator on a fake clock at t0 with short, round
// timings: drain 10s, checks every 4s, Disconnected after 20s, Down after 1m.
func newSim(t *testing.T, opts Options) (*Server, *fakeClock) {
	t.Helper()
	clock := &fakeClock{now: t0}
	opts.Now = clock.Now
	if opts.DrainDelay == 0 {
		opts.DrainDelay = 10 * time.Second
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = 4 * time.Second
	}
	if opts.DownAfter == 0 {
		opts.DownAfter = time.Minute
	}
	return New(opts), clock
}

// call sends one request to the simulator's handler.
func call(t *testing.T, s *Server, method, target, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// registerN registers stores tikv-0 … tikv-(n-1) and returns their ids.
func registerN(s *Server, n int) []uint64 {
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = s.RegisterStore("demo-tikv-" + string(rune('0'+i)) + ".demo-tikv-peer.tidb.svc:20160")
	}
	return ids
}

func mustStore(t *testing.T, s *Server, id uint64) StoreSnapshot {
	t.Helper()
	snap, ok := s.Store(id)
	if !ok {
		t.Fatalf("store %d unknown", id)
	}
	return snap
}
