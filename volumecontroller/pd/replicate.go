package pd

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

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
