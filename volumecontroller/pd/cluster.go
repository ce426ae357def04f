package pd

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

type wireCluster struct {
	ID *uint64 `json:"id"`
}

// ClusterID returns the ID of the PD cluster behind the endpoint. Every
// store and member the controller records is tied to it: an answer from a
// PD with another ID (rebuilt, or the wrong cluster) says nothing about
// them.
func (c *Client) ClusterID(ctx context.Context) (id uint64, err error) {
	defer c.track("cluster", time.Now(), &err)
	resp, err := c.call(ctx, http.MethodGet, "/cluster", nil)
	if err != nil {
		return 0, fmt.Errorf("pd: get cluster: %w", err)
	}
	if resp.status != http.StatusOK {
		return 0, fmt.Errorf("pd: get cluster: %w", resp.statusError())
	}
	var w wireCluster
	if err := unmarshalShape(resp.body, '{', &w); err != nil {
		return 0, fmt.Errorf("pd: get cluster: %w", err)
	}
	if w.ID == nil || *w.ID == 0 {
		return 0, fmt.Errorf("pd: get cluster: %w", invalid("cluster without id"))
	}
	return *w.ID, nil
}

type wireReplicate struct {
	MaxReplicas *int `json:"max-replicas"`
}

// MaxReplicas returns PD's max-replicas (GET /pd/api/v1/config/replicate):
// an Offline store whose regions would leave fewer Up stores than this
// can never drain.
func (c *Client) MaxReplicas(ctx context.Context) (n int, err error) {
	defer c.track("config_replicate", time.Now(), &err)
	resp, err := c.call(ctx, http.MethodGet, "/config/replicate", nil)
	if err != nil {
		return 0, fmt.Errorf("pd: get replication config: %w", err)
	}
	if resp.status != http.StatusOK {
		return 0, fmt.Errorf("pd: get replication config: %w", resp.statusError())
	}
	var w wireReplicate
	if err := unmarshalShape(resp.body, '{', &w); err != nil {
		return 0, fmt.Errorf("pd: get replication config: %w", err)
	}
	if w.MaxReplicas == nil || *w.MaxReplicas <= 0 {
		return 0, fmt.Errorf("pd: get replication config: %w", invalid("no positive max-replicas"))
	}
	return *w.MaxReplicas, nil
}
