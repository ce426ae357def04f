package pd_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// recorder keeps the requests a test server saw; the lock is needed because
// the race detector does not see ordering through the socket.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recorder) add(req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req.Clone(context.Background()))
}

func (r *recorder) all() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.reqs...)
}

// serve answers every request with status and body, recording the request.
func serve(t *testing.T, status int, body string) (*pd.Client, *recorder) {
	t.Helper()
	seen := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.add(r)
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return newClient(t, srv.URL, pd.Options{}), seen
}

func newClient(t *testing.T, url string, opts pd.Options) *pd.Client {
	t.Helper()
	if opts.Backoff == 0 {
		opts.Backoff = time.Millisecond
	}
	c, err := pd.New(url, opts)
	require.NoError(t, err)
	return c
}

const docStores = `{"count": 2, "stores": [
  {"store": {"id": 1, "address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20160",
             "status_address": "demo-tikv-0.demo-tikv-peer.tidb.svc:20180",
             "version": "8.5.0", "node_state": 1, "state_name": "Up",
             "last_heartbeat": 1763790000000000000},
   "status": {"capacity": "1.7TiB", "available": "1.2TiB", "region_count": 812,
              "leader_count": 270, "last_heartbeat_ts": "2026-11-22T05:40:00Z"}},
  {"store": {"id": 7, "address": "demo-tikv-3.demo-tikv-peer.tidb.svc:20160",
             "state": 2, "node_state": 3, "state_name": "Tombstone"},
   "status": {"region_count": 0}}]}`

func TestNew_ValidatesURL(t *testing.T) {
	for _, tc := range []struct{ url, wantErr string }{
		{"http://demo-pd.tidb:2379", ""},
		{"https://demo-pd.tidb:2379/", ""},
		{"http://pd:2379/prefix", ""},
		{"ftp://pd:2379", "scheme must be http or https"},
		{"demo-pd:2379", "scheme must be http or https"},
		{"http://", "no host"},
		{"http://:2379", "no host"},
		{"http://pd:2379?x=1", "query or fragment"},
		{"http://pd:23 79", "invalid port"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			_, err := pd.New(tc.url, pd.Options{})
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestStores_AsksForAllStatesByDefault(t *testing.T) {
	c, seen := serve(t, 200, `{"count":0,"stores":[]}`)
	stores, err := c.Stores(context.Background())
	require.NoError(t, err)
	require.Empty(t, stores)
	require.Len(t, seen.all(), 1)
	r := seen.all()[0]
	require.Equal(t, http.MethodGet, r.Method)
	require.Equal(t, "/pd/api/v1/stores", r.URL.Path)
	require.Equal(t, []string{"0", "1", "2"}, r.URL.Query()["state"])
}

func TestStores_SendsChosenStatesOnce(t *testing.T) {
	c, seen := serve(t, 200, `{"count":0,"stores":null}`)
	_, err := c.Stores(context.Background(), pd.StoreTombstone, pd.StoreTombstone, pd.StoreUp)
	require.NoError(t, err)
	require.Equal(t, []string{"2", "0"}, seen.all()[0].URL.Query()["state"])

	_, err = c.Stores(context.Background(), pd.StoreState(9))
	require.ErrorContains(t, err, "unknown store state 9")
	require.Len(t, seen.all(), 1, "an invalid state must not reach PD")
}

func TestStores_KeepsBasePathPrefix(t *testing.T) {
	seen := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.add(r)
		fmt.Fprint(w, `{"count":0,"stores":[]}`)
	}))
	t.Cleanup(srv.Close)
	_, err := newClient(t, srv.URL+"/proxy/", pd.Options{}).Stores(context.Background())
	require.NoError(t, err)
	require.Equal(t, "/proxy/pd/api/v1/stores", seen.all()[0].URL.Path)
}

func TestStores_DecodesDocumentedExample(t *testing.T) {
	c, _ := serve(t, 200, docStores)
	stores, err := c.Stores(context.Background())
	require.NoError(t, err)
	require.Equal(t, []pd.StoreInfo{{
		ID:            1,
		Address:       "demo-tikv-0.demo-tikv-peer.tidb.svc:20160",
		StatusAddress: "demo-tikv-0.demo-tikv-peer.tidb.svc:20180",
		Version:       "8.5.0",
		State:         pd.StoreUp,
		NodeState:     pd.NodeServing,
		StateName:     "Up",
		LastHeartbeat: time.Unix(0, 1763790000000000000).UTC(),
		RegionCount:   812,
	}, {
		ID:        7,
		Address:   "demo-tikv-3.demo-tikv-peer.tidb.svc:20160",
		State:     pd.StoreTombstone,
		NodeState: pd.NodeRemoved,
		StateName: "Tombstone",
	}}, stores)
	require.Equal(t, pd.PhaseUp, stores[0].Phase())
	require.Equal(t, "demo-tikv-0", stores[0].PodName())
	require.Equal(t, pd.PhaseTombstone, stores[1].Phase())
	require.True(t, stores[1].IsTombstone())
}

func TestStores_TreatsOmittedStateAsUp(t *testing.T) {
	c, _ := serve(t, 200, `{"count":1,"stores":[{"store":{"id":3,"address":"a-tikv-1.p:20160","state_name":"Up"},"status":{}}]}`)
	stores, err := c.Stores(context.Background())
	require.NoError(t, err)
	require.Len(t, stores, 1)
	require.Equal(t, pd.StoreUp, stores[0].State)
	require.Equal(t, pd.NodePreparing, stores[0].NodeState)
	require.Equal(t, pd.PhaseUp, stores[0].Phase())
	require.False(t, stores[0].IsTombstone())
}

func TestStores_IgnoresUnknownFieldsAndUsesStatusHeartbeat(t *testing.T) {
	c, _ := serve(t, 200, `{"count":1,"stores":[{"store":{"id":3,"address":"x:1","labels":[{"key":"zone","value":"a"}],
		"state":1,"node_state":2,"state_name":"Offline","physically_destroyed":true,"future":{"a":[1]}},
		"status":{"region_count":5,"last_heartbeat_ts":"2026-11-22T05:40:00+01:00","slow_trend":{"cause_value":1.5}}}],"extra":true}`)
	stores, err := c.Stores(context.Background())
	require.NoError(t, err)
	require.Equal(t, pd.PhaseOffline, stores[0].Phase())
	require.Equal(t, 5, stores[0].RegionCount)
	require.Equal(t, time.Date(2026, 11, 22, 4, 40, 0, 0, time.UTC), stores[0].LastHeartbeat)
}

func TestStores_RejectsGarbage(t *testing.T) {
	for name, body := range map[string]string{
		"not json":         `<html>oops</html>`,
		"empty":            ``,
		"null":             `null`,
		"array":            `[]`,
		"empty object":     `{}`,
		"stores is string": `{"count":1,"stores":"x"}`,
		"truncated":        docStores[:len(docStores)-20],
		"trailing garbage": `{"count":0,"stores":[]}xyz`,
		"count mismatch":   `{"count":3,"stores":[]}`,
		"null store":       `{"count":1,"stores":[{"store":null}]}`,
		"no id":            `{"count":1,"stores":[{"store":{"address":"a:1"}}]}`,
		"state is string":  `{"count":1,"stores":[{"store":{"id":1,"state":"Up"}}]}`,
		"negative regions": `{"count":1,"stores":[{"store":{"id":1},"status":{"region_count":-1}}]}`,
		"bad timestamp":    `{"count":1,"stores":[{"store":{"id":1},"status":{"last_heartbeat_ts":"yesterday"}}]}`,
		"id overflow":      `{"count":1,"stores":[{"store":{"id":18446744073709551616}}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := serve(t, 200, body)
			stores, err := c.Stores(context.Background())
			require.ErrorIs(t, err, pd.ErrInvalidResponse)
			require.Nil(t, stores)
		})
	}
}

func TestStore_MapsStatuses(t *testing.T) {
	const one = `{"store":{"id":5,"address":"a-tikv-2.p:20160","state":1,"node_state":2,"state_name":"Offline"},"status":{"region_count":3}}`
	for _, tc := range []struct {
		name   string
		status int
		body   string
		check  func(t *testing.T, s pd.StoreInfo, err error)
	}{
		{"ok", 200, one, func(t *testing.T, s pd.StoreInfo, err error) {
			require.NoError(t, err)
			require.Equal(t, uint64(5), s.ID)
			require.Equal(t, pd.PhaseOffline, s.Phase())
			require.Equal(t, 3, s.RegionCount)
		}},
		{"pd 404", 404, `"[PD:core:ErrStoreNotFound]store 5 not found"`, func(t *testing.T, _ pd.StoreInfo, err error) {
			require.ErrorIs(t, err, pd.ErrStoreNotFound)
			require.ErrorContains(t, err, "store 5 not found")
		}},
		{"router 404 is not store-not-found", 404, "404 page not found\n", func(t *testing.T, _ pd.StoreInfo, err error) {
			require.NotErrorIs(t, err, pd.ErrStoreNotFound)
			var se *pd.StatusError
			require.ErrorAs(t, err, &se)
			require.Equal(t, 404, se.Status)
		}},
		{"other id", 200, `{"store":{"id":6}}`, func(t *testing.T, _ pd.StoreInfo, err error) {
			require.ErrorIs(t, err, pd.ErrInvalidResponse)
		}},
		{"garbage", 200, `{"store":`, func(t *testing.T, s pd.StoreInfo, err error) {
			require.ErrorIs(t, err, pd.ErrInvalidResponse)
			require.Zero(t, s)
		}},
		{"forbidden", 403, `"no"`, func(t *testing.T, _ pd.StoreInfo, err error) {
			var se *pd.StatusError
			require.ErrorAs(t, err, &se)
			require.Equal(t, 403, se.Status)
			require.Equal(t, "no", se.Message)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seen := serve(t, tc.status, tc.body)
			s, err := c.Store(context.Background(), 5)
			tc.check(t, s, err)
			require.Equal(t, "/pd/api/v1/store/5", seen.all()[0].URL.Path)
		})
	}
}

func TestDeleteStore_MapsStatuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		check  func(t *testing.T, err error)
	}{
		{"offline", 200, `"The store is set as Offline."`, func(t *testing.T, err error) { require.NoError(t, err) }},
		{"not found", 404, `"[PD:core:ErrStoreNotFound]store 9 not found"`, func(t *testing.T, err error) {
			require.ErrorIs(t, err, pd.ErrStoreNotFound)
		}},
		{"gone", 410, `"[PD:core:ErrStoreRemoved]store 9 has been removed"`, func(t *testing.T, err error) {
			require.ErrorIs(t, err, pd.ErrStoreRemoved)
		}},
		{"refused", 400, `"can not remove store 9 since the number of up stores would be 2 while need 3"`, func(t *testing.T, err error) {
			var re *pd.RefusedError
			require.ErrorAs(t, err, &re)
			require.Equal(t, 400, re.Status)
			require.Equal(t, "can not remove store 9 since the number of up stores would be 2 while need 3", re.Message)
		}},
		{"ok with garbage body", 200, `<html>`, func(t *testing.T, err error) {
			require.ErrorIs(t, err, pd.ErrInvalidResponse)
		}},
		{"method not allowed", 405, "Method Not Allowed", func(t *testing.T, err error) {
			var se *pd.StatusError
			require.ErrorAs(t, err, &se)
			require.Equal(t, 405, se.Status)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seen := serve(t, tc.status, tc.body)
			tc.check(t, c.DeleteStore(context.Background(), 9))
			require.Len(t, seen.all(), 1, "4xx and 200 are never retried")
			require.Equal(t, http.MethodDelete, seen.all()[0].Method)
			require.Equal(t, "/pd/api/v1/store/9", seen.all()[0].URL.Path)
		})
	}
}

func TestMembers_DecodesLeaderAndLargeIDs(t *testing.T) {
	c, _ := serve(t, 200, `{"header":{"cluster_id":7000000000000000001},
	  "members":[{"name":"demo-pd-0","member_id":18446744073709551615,"peer_urls":["http://demo-pd-0:2380"],"client_urls":["http://demo-pd-0:2379"],"binary_version":"v8.5.0"},
	             {"name":"demo-pd-1","member_id":2}],
	  "leader":{"name":"demo-pd-1","member_id":2},"etcd_leader":{"name":"demo-pd-1","member_id":2}}`)
	m, err := c.Members(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(7000000000000000001), m.ClusterID)
	require.Equal(t, []pd.Member{
		{Name: "demo-pd-0", MemberID: 18446744073709551615, PeerURLs: []string{"http://demo-pd-0:2380"}, ClientURLs: []string{"http://demo-pd-0:2379"}},
		{Name: "demo-pd-1", MemberID: 2},
	}, m.Members)
	require.Equal(t, &pd.Member{Name: "demo-pd-1", MemberID: 2}, m.Leader)
}

func TestMembers_RejectsGarbage(t *testing.T) {
	for _, body := range []string{`{}`, `null`, `{"members":[]}`, `{"members":[{"name":"x"}]}`, `{"members":[{"member_id":1}],"leader":{}}`, `{"members":{}}`} {
		c, _ := serve(t, 200, body)
		_, err := c.Members(context.Background())
		require.ErrorIs(t, err, pd.ErrInvalidResponse, body)
	}
}

func TestHealth_DecodesAndRejectsGarbage(t *testing.T) {
	c, seen := serve(t, 200, `[{"name":"pd-0","member_id":1,"client_urls":["http://pd-0:2379"],"health":true},{"name":"pd-1","member_id":2,"health":false}]`)
	h, err := c.Health(context.Background())
	require.NoError(t, err)
	require.Equal(t, []pd.MemberHealth{
		{Name: "pd-0", MemberID: 1, ClientURLs: []string{"http://pd-0:2379"}, Health: true},
		{Name: "pd-1", MemberID: 2},
	}, h)
	require.Equal(t, "/pd/api/v1/health", seen.all()[0].URL.Path)

	for _, body := range []string{`null`, `{}`, `[{"name":"x"}]`, `[`} {
		c, _ := serve(t, 200, body)
		_, err := c.Health(context.Background())
		require.ErrorIs(t, err, pd.ErrInvalidResponse, body)
	}
}

func TestPing_ChecksStatusOnly(t *testing.T) {
	c, seen := serve(t, 200, ``)
	require.NoError(t, c.Ping(context.Background()))
	require.Equal(t, "/pd/api/v1/ping", seen.all()[0].URL.Path)

	c, _ = serve(t, 404, "404 page not found")
	var se *pd.StatusError
	require.ErrorAs(t, c.Ping(context.Background()), &se)
}

func TestClient_ConnectionRefusedIsAnError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := newClient(t, url, pd.Options{Retries: 1})
	stores, err := c.Stores(context.Background())
	require.Error(t, err)
	require.Nil(t, stores)
	require.ErrorContains(t, err, "2 attempts")
	require.False(t, errors.Is(err, pd.ErrInvalidResponse))
}
