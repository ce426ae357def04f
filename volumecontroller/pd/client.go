// Package pd is a small typed client for the parts of PD's HTTP API the
// volume-controller needs: stores and their lifecycle, members, health.
//
// The client is strict about what it accepts: a body that is not what PD
// documents is an error wrapping ErrInvalidResponse, never an empty success,
// because the controller must read "I could not tell" as "do nothing
// destructive".
package pd

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultTimeout = 3 * time.Second
	DefaultRetries = 3
	DefaultBackoff = 200 * time.Millisecond
)

const (
	apiPrefix = "/pd/api/v1"
	// maxBackoff caps the doubling so a long outage is retried at a steady
	// pace instead of ever more rarely.
	maxBackoff = 5 * time.Second
	// maxBodyBytes bounds what one answer may cost us; the store list of a
	// very large cluster is a few MiB.
	maxBodyBytes = 32 << 20
)

// Options configure a Client. Zero values take the defaults.
type Options struct {
	// HTTPClient sends the requests; nil means a new client on the default
	// transport. Its own Timeout, if any, also applies.
	HTTPClient *http.Client
	// Timeout bounds each attempt, including reading the body.
	Timeout time.Duration
	// Retries is how many times a failed attempt is repeated (transport
	// errors, 5xx and 429 only). Zero means DefaultRetries; negative means
	// never retry.
	Retries int
	// Backoff is the first pause between attempts; it doubles up to a cap.
	Backoff time.Duration
	// Observer, when set, is called once per method call with the operation
	// name, the call's whole duration (retries included) and the error the
	// caller gets. It must be safe for concurrent use.
	Observer func(op string, d time.Duration, err error)
}

// Client talks to one PD endpoint. It is safe for concurrent use.
type Client struct {
	base    *url.URL
	http    *http.Client
	timeout time.Duration
	retries int
	backoff time.Duration
	observe func(op string, d time.Duration, err error)
}

// New returns a client for the PD at baseURL (e.g. "http://demo-pd.tidb:2379").
func New(baseURL string, opts Options) (*Client, error) {
	base, err := parseBaseURL(baseURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:    base,
		http:    opts.HTTPClient,
		timeout: opts.Timeout,
		retries: opts.Retries,
		backoff: opts.Backoff,
		observe: opts.Observer,
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.backoff <= 0 {
		c.backoff = DefaultBackoff
	}
	return c, nil
}

func parseBaseURL(raw string) (*url.URL, error) {
	lower := strings.ToLower(strings.TrimSpace(raw))
	if !strings.HasPrefix(lower, "http://") && !strings.HasPrefix(lower, "https://") {
		// Checked first: without a scheme url.Parse reports confusing
		// things like "first path segment in URL cannot contain colon".
		return nil, fmt.Errorf("pd url %q: scheme must be http or https", raw)
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, fmt.Errorf("pd url %q: %w", raw, err)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("pd url %q: no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("pd url %q: must not have a query or fragment", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// BaseURL returns the PD endpoint this client talks to.
func (c *Client) BaseURL() string { return c.base.String() }

// Stores lists the stores in the given states. With no states it asks for
// Up, Offline and Tombstone: PD's own default hides Tombstone stores, and
// those are the ones whose disks can be released.
func (c *Client) Stores(ctx context.Context, states ...StoreState) (stores []StoreInfo, err error) {
	defer c.track("stores", time.Now(), &err)
	if len(states) == 0 {
		states = []StoreState{StoreUp, StoreOffline, StoreTombstone}
	}
	q := url.Values{}
	seen := map[StoreState]bool{}
	for _, s := range states {
		if s < StoreUp || s > StoreTombstone {
			return nil, fmt.Errorf("pd: list stores: unknown store state %d", int32(s))
		}
		if !seen[s] {
			seen[s] = true
			q.Add("state", strconv.Itoa(int(s)))
		}
	}
	resp, err := c.call(ctx, http.MethodGet, "/stores", q)
	if err != nil {
		return nil, fmt.Errorf("pd: list stores: %w", err)
	}
	if resp.status != http.StatusOK {
		return nil, fmt.Errorf("pd: list stores: %w", resp.statusError())
	}
	stores, err = decodeStores(resp.body)
	if err != nil {
		return nil, fmt.Errorf("pd: list stores: %w", err)
	}
	return stores, nil
}

// Store returns one store. A store PD does not know (never existed, or its
// Tombstone record was removed) is an error matching ErrStoreNotFound; a PD
// no TiKV has joined yet answers ErrNotBootstrapped.
func (c *Client) Store(ctx context.Context, id uint64) (store StoreInfo, err error) {
	defer c.track("store", time.Now(), &err)
	if id == 0 {
		return StoreInfo{}, fmt.Errorf("pd: get store 0: %w", errStoreZero)
	}
	resp, err := c.call(ctx, http.MethodGet, "/store/"+strconv.FormatUint(id, 10), nil)
	if err != nil {
		return StoreInfo{}, fmt.Errorf("pd: get store %d: %w", id, err)
	}
	switch {
	case resp.status == http.StatusOK:
	case resp.storeNotFound(id):
		return StoreInfo{}, fmt.Errorf("pd: get store %d: %w: %s", id, ErrStoreNotFound, resp.message())
	default:
		return StoreInfo{}, fmt.Errorf("pd: get store %d: %w", id, resp.statusError())
	}
	store, err = decodeStore(resp.body, id)
	if err != nil {
		return StoreInfo{}, fmt.Errorf("pd: get store %d: %w", id, err)
	}
	return store, nil
}

// DeleteStore asks PD to take a store offline (PD then moves its regions
// away and buries it as Tombstone). It returns nil when PD accepted,
// ErrStoreNotFound, ErrStoreRemoved when the store is already Tombstone
// (callers treat that as done), a *RefusedError when PD said no (e.g. too
// few Up stores would be left), or ErrNotBootstrapped.
func (c *Client) DeleteStore(ctx context.Context, id uint64) (err error) {
	defer c.track("delete_store", time.Now(), &err)
	if id == 0 {
		return fmt.Errorf("pd: delete store 0: %w", errStoreZero)
	}
	resp, err := c.call(ctx, http.MethodDelete, "/store/"+strconv.FormatUint(id, 10), nil)
	if err != nil {
		return fmt.Errorf("pd: delete store %d: %w", id, err)
	}
	_, isText := resp.text()
	switch {
	case resp.status == http.StatusOK:
		// PD acknowledges with a JSON string ("The store is set as
		// Offline."); anything else did not come from PD and must not be
		// taken as an acknowledgement.
		if !isText {
			return fmt.Errorf("pd: delete store %d: %w", id, invalid("acknowledgement is not a JSON string: %q", firstBytes(resp.body)))
		}
		return nil
	case resp.storeNotFound(id):
		return fmt.Errorf("pd: delete store %d: %w: %s", id, ErrStoreNotFound, resp.message())
	case resp.status == http.StatusGone && isText:
		return fmt.Errorf("pd: delete store %d: %w: %s", id, ErrStoreRemoved, resp.message())
	case resp.status == http.StatusBadRequest:
		return fmt.Errorf("pd: delete store %d: %w", id, &RefusedError{Status: resp.status, Message: resp.message()})
	}
	return fmt.Errorf("pd: delete store %d: %w", id, resp.statusError())
}

// ClusterID returns the ID of the PD cluster (GET /cluster). It is fixed
// when the cluster is created, so an answer with a different ID comes from
// another cluster, or from this one rebuilt from scratch; either way its
// store IDs mean other stores. PD answers it before any TiKV joined.
func (c *Client) ClusterID(ctx context.Context) (id uint64, err error) {
	defer c.track("cluster_id", time.Now(), &err)
	resp, err := c.call(ctx, http.MethodGet, "/cluster", nil)
	if err != nil {
		return 0, fmt.Errorf("pd: get cluster id: %w", err)
	}
	if resp.status != http.StatusOK {
		return 0, fmt.Errorf("pd: get cluster id: %w", resp.statusError())
	}
	id, err = decodeClusterID(resp.body)
	if err != nil {
		return 0, fmt.Errorf("pd: get cluster id: %w", err)
	}
	return id, nil
}

// Members returns PD's members and leader, and the cluster ID from the
// answer's header (an answer without one is ErrInvalidResponse).
func (c *Client) Members(ctx context.Context) (members Members, err error) {
	defer c.track("members", time.Now(), &err)
	resp, err := c.call(ctx, http.MethodGet, "/members", nil)
	if err != nil {
		return Members{}, fmt.Errorf("pd: list members: %w", err)
	}
	if resp.status != http.StatusOK {
		return Members{}, fmt.Errorf("pd: list members: %w", resp.statusError())
	}
	members, err = decodeMembers(resp.body)
	if err != nil {
		return Members{}, fmt.Errorf("pd: list members: %w", err)
	}
	return members, nil
}

// Health returns each PD member's health as PD sees it.
func (c *Client) Health(ctx context.Context) (health []MemberHealth, err error) {
	defer c.track("health", time.Now(), &err)
	resp, err := c.call(ctx, http.MethodGet, "/health", nil)
	if err != nil {
		return nil, fmt.Errorf("pd: health: %w", err)
	}
	if resp.status != http.StatusOK {
		return nil, fmt.Errorf("pd: health: %w", resp.statusError())
	}
	health, err = decodeHealth(resp.body)
	if err != nil {
		return nil, fmt.Errorf("pd: health: %w", err)
	}
	return health, nil
}

// Ping checks that PD answers. PD's ping has an empty body, so only the
// status is checked.
func (c *Client) Ping(ctx context.Context) (err error) {
	defer c.track("ping", time.Now(), &err)
	resp, err := c.call(ctx, http.MethodGet, "/ping", nil)
	if err != nil {
		return fmt.Errorf("pd: ping: %w", err)
	}
	if resp.status != http.StatusOK {
		return fmt.Errorf("pd: ping: %w", resp.statusError())
	}
	return nil
}

func (c *Client) track(op string, start time.Time, err *error) {
	if c.observe != nil {
		c.observe(op, time.Since(start), *err)
	}
}
