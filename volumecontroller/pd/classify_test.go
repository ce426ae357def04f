package pd_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// These tests try to make answers that did not come from PD, or that PD
// gave about something else, pass for the answers the controller acts on.

const notBootstrappedBody = `"[PD:cluster:ErrNotBootstrapped]TiKV cluster not bootstrapped, please start TiKV first"` + "\n"

func TestStore_NotFoundOnlyFromPDsStringNamingThatStore(t *testing.T) {
	for _, tc := range []struct {
		name     string
		body     string
		notFound bool
	}{
		{"pd v26", `"[PD:core:ErrStoreNotFound]store 5 not found"`, true},
		{"pd before error codes", `"store 5 not found"`, true},
		{"another store", `"[PD:core:ErrStoreNotFound]store 6 not found"`, false},
		{"a longer id that ends alike", `"[PD:core:ErrStoreNotFound]store 15 not found"`, false},
		{"ingress json object", `{"message": "store 5 not found"}`, false},
		{"json string from a router", `"404 page not found"`, false},
		{"json number", `404`, false},
		{"plain text naming the store", "store 5 not found\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := serve(t, 404, tc.body)
			_, err := c.Store(context.Background(), 5)
			require.Error(t, err)
			require.Equal(t, tc.notFound, isNotFound(err), "%v", err)
			derr := deleteStore(t, 404, tc.body)
			require.Equal(t, tc.notFound, isNotFound(derr), "%v", derr)
		})
	}
}

func isNotFound(err error) bool {
	return errors.Is(err, pd.ErrStoreNotFound)
}

func deleteStore(t *testing.T, status int, body string) error {
	t.Helper()
	c, _ := serve(t, status, body)
	return c.DeleteStore(context.Background(), 5)
}

func TestStore_IDZeroIsRefusedWithoutAsking(t *testing.T) {
	// PD answers store 0 with its ordinary 404 (fixture r1_store_0); read
	// as "store gone", a missing or zero store-id would release a disk.
	c, seen := serve(t, 404, `"[PD:core:ErrStoreNotFound]store 0 not found"`)
	_, err := c.Store(context.Background(), 0)
	require.Error(t, err)
	require.NotErrorIs(t, err, pd.ErrStoreNotFound)
	err = c.DeleteStore(context.Background(), 0)
	require.Error(t, err)
	require.NotErrorIs(t, err, pd.ErrStoreNotFound)
	require.Empty(t, seen.all(), "nothing is sent")
}

func TestDeleteStore_OnlyPDsAnswersCountAsDone(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		status     int
		check      func(t *testing.T, err error)
	}{
		{"200 with a json object is no acknowledgement", `{}`, 200, func(t *testing.T, err error) {
			require.ErrorIs(t, err, pd.ErrInvalidResponse)
		}},
		{"200 with null is no acknowledgement", `null`, 200, func(t *testing.T, err error) {
			require.ErrorIs(t, err, pd.ErrInvalidResponse)
		}},
		{"410 from a proxy is not removed", `{"error": "gone"}`, 410, func(t *testing.T, err error) {
			require.NotErrorIs(t, err, pd.ErrStoreRemoved)
			var se *pd.StatusError
			require.ErrorAs(t, err, &se)
		}},
		{"410 from pd is removed", `"[PD:core:ErrStoreRemoved]store 5 has been removed"`, 410, func(t *testing.T, err error) {
			require.ErrorIs(t, err, pd.ErrStoreRemoved)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, deleteStore(t, tc.status, tc.body))
		})
	}
}

func TestClient_NotBootstrappedIsAnErrorNeverAnEmptyList(t *testing.T) {
	ctx := context.Background()
	for name, call := range map[string]func(c *pd.Client) error{
		"stores": func(c *pd.Client) error {
			stores, err := c.Stores(ctx)
			require.Nil(t, stores)
			return err
		},
		"store": func(c *pd.Client) error {
			s, err := c.Store(ctx, 1)
			require.Zero(t, s)
			return err
		},
		"delete store": func(c *pd.Client) error { return c.DeleteStore(ctx, 1) },
	} {
		t.Run(name, func(t *testing.T) {
			c, seen := serve(t, 500, notBootstrappedBody)
			err := call(c)
			require.ErrorIs(t, err, pd.ErrNotBootstrapped)
			require.NotErrorIs(t, err, pd.ErrStoreNotFound)
			var se *pd.StatusError
			require.ErrorAs(t, err, &se, "still a status error for callers that only know those")
			require.Equal(t, 500, se.Status)
			require.Len(t, seen.all(), 1, "PD's answer stands until a TiKV joins: not retried")
		})
	}

	// Any other 500 is neither classified so nor spared the retries.
	c, seen := serve(t, 500, `"[PD:core:ErrSomething]boom"`)
	_, err := c.Stores(ctx)
	require.NotErrorIs(t, err, pd.ErrNotBootstrapped)
	require.Len(t, seen.all(), 1+pd.DefaultRetries)
}

func TestMembers_RequiresTheClusterID(t *testing.T) {
	const member = `"members": [{"name": "pd-0", "member_id": 7991701852439577752}]`
	for _, tc := range []struct {
		name, body string
		want       uint64
	}{
		{"above 2^53, exactly", `{"header": {"cluster_id": 7714128303309438701}, ` + member + `}`, 7714128303309438701},
		{"largest", `{"header": {"cluster_id": 18446744073709551615}, ` + member + `}`, 18446744073709551615},
		{"no header", `{` + member + `}`, 0},
		{"empty header", `{"header": {}, ` + member + `}`, 0},
		{"zero", `{"header": {"cluster_id": 0}, ` + member + `}`, 0},
		{"float", `{"header": {"cluster_id": 7.714128303309439e18}, ` + member + `}`, 0},
		{"string", `{"header": {"cluster_id": "7714128303309438701"}, ` + member + `}`, 0},
		{"negative", `{"header": {"cluster_id": -1}, ` + member + `}`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := serve(t, 200, tc.body)
			m, err := c.Members(context.Background())
			if tc.want == 0 {
				require.ErrorIs(t, err, pd.ErrInvalidResponse)
				require.Zero(t, m)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, m.ClusterID)
		})
	}
}

func TestClusterID_DecodesExactlyOrFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   uint64
	}{
		{"pd v26", 200, "{\n  \"id\": 7714128303309438701,\n  \"max_peer_count\": 3\n}\n", 7714128303309438701},
		{"largest", 200, `{"id": 18446744073709551615}`, 18446744073709551615},
		{"one above 2^53", 200, `{"id": 9007199254740993}`, 9007199254740993},
		{"overflow", 200, `{"id": 18446744073709551616}`, 0},
		{"float", 200, `{"id": 7.714128303309439e18}`, 0},
		{"string", 200, `{"id": "7714128303309438701"}`, 0},
		{"negative", 200, `{"id": -7}`, 0},
		{"zero", 200, `{"id": 0}`, 0},
		{"missing", 200, `{"max_peer_count": 3}`, 0},
		{"null", 200, `null`, 0},
		{"array", 200, `[7714128303309438701]`, 0},
		{"truncated", 200, `{"id": 77141283`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seen := serve(t, tc.status, tc.body)
			id, err := c.ClusterID(context.Background())
			require.Equal(t, "/pd/api/v1/cluster", seen.all()[0].URL.Path)
			require.Equal(t, tc.want, id)
			if tc.want == 0 {
				require.ErrorIs(t, err, pd.ErrInvalidResponse)
				return
			}
			require.NoError(t, err)
		})
	}

	c, _ := serve(t, 404, "404 page not found\n")
	_, err := c.ClusterID(context.Background())
	var se *pd.StatusError
	require.ErrorAs(t, err, &se)
}
