package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

var healthClient = &http.Client{Timeout: 2 * time.Second}

// MetricsURL is the base URL of the current agent's /metrics, /healthz and
// /readyz; empty before the first StartAgent.
func (n *Node) MetricsURL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.metricsAddr == "" {
		return ""
	}
	return "http://" + n.metricsAddr
}

// AgentReady asks the current agent's /readyz, which turns 200 once its
// first full reconcile has succeeded.
func (n *Node) AgentReady(ctx context.Context) (bool, error) {
	body, code, err := n.get(ctx, "/readyz")
	if err != nil {
		return false, err
	}
	if code != http.StatusOK {
		return false, nil
	}
	return strings.TrimSpace(body) == "ok", nil
}

// WaitAgentReady polls /readyz until the agent is ready, it exits, or ctx
// ends.
func (n *Node) WaitAgentReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		n.mu.Lock()
		p := n.agent
		n.mu.Unlock()
		if p != nil && p.Exited() {
			return fmt.Errorf("agent of %s: %w", n.Name, p.ExitError())
		}
		ok, err := n.AgentReady(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent of %s not ready: %w (last error: %v)", n.Name, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Metric reads one sample of the current agent's /metrics: the line whose
// series is name, optionally with exactly the given label set (e.g.
// `{class="tidb-localpv-tikv",state="bound"}`). A missing series is an error.
func (n *Node) Metric(ctx context.Context, series string) (float64, error) {
	body, code, err := n.get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics of %s: status %d", n.Name, code)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, value, ok := strings.Cut(line, " ")
		if !ok || name != series {
			continue
		}
		return strconv.ParseFloat(strings.TrimSpace(value), 64)
	}
	return 0, fmt.Errorf("metric %s not exported by the agent of %s", series, n.Name)
}

func (n *Node) get(ctx context.Context, path string) (string, int, error) {
	base := n.MetricsURL()
	if base == "" {
		return "", 0, errors.New("agent of " + n.Name + " was never started")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return string(b), resp.StatusCode, err
}
