package pd_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/volumecontroller/pd"
)

// sequence answers the n-th request with statuses[n] (the last one repeats).
func sequence(t *testing.T, body string, statuses ...int) (string, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		status := statuses[min(i, len(statuses)-1)]
		w.WriteHeader(status)
		if status == http.StatusOK {
			fmt.Fprint(w, body)
			return
		}
		fmt.Fprintf(w, `"status %d"`, status)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

func TestClient_RetriesTransientStatusesThenSucceeds(t *testing.T) {
	for _, status := range []int{500, 502, 503, 429} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			url, n := sequence(t, `{"count":0,"stores":[]}`, status, status, 200)
			stores, err := newClient(t, url, pd.Options{}).Stores(context.Background())
			require.NoError(t, err)
			require.Empty(t, stores)
			require.Equal(t, int32(3), n.Load())
		})
	}
}

func TestClient_GivesUpAfterRetries(t *testing.T) {
	url, n := sequence(t, "", 503)
	_, err := newClient(t, url, pd.Options{Retries: 2}).Stores(context.Background())
	var se *pd.StatusError
	require.ErrorAs(t, err, &se)
	require.Equal(t, 503, se.Status)
	require.ErrorContains(t, err, "3 attempts")
	require.Equal(t, int32(3), n.Load())
}

func TestClient_NegativeRetriesMeansOneAttempt(t *testing.T) {
	url, n := sequence(t, "", 503)
	_, err := newClient(t, url, pd.Options{Retries: -1}).Members(context.Background())
	require.Error(t, err)
	require.Equal(t, int32(1), n.Load())
}

func TestClient_NeverRetries4xx(t *testing.T) {
	for _, status := range []int{400, 401, 403, 404, 405, 410} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			url, n := sequence(t, "", status, 200)
			err := newClient(t, url, pd.Options{}).DeleteStore(context.Background(), 1)
			require.Error(t, err)
			require.Equal(t, int32(1), n.Load())
		})
	}
}

// roundTripFunc lets a test answer without a network, so the moment of
// cancellation relative to the answer is under the test's control.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestClient_CancelStopsRetries(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int32
	busy := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		n.Add(1)
		go cancel() // the caller gives up while the client backs off
		return &http.Response{
			StatusCode: http.StatusServiceUnavailable,
			Body:       io.NopCloser(strings.NewReader(`"busy"`)),
			Request:    r,
		}, nil
	})

	c := newClient(t, "http://pd:2379", pd.Options{Backoff: time.Hour, HTTPClient: &http.Client{Transport: busy}})
	_, err := c.Stores(ctx)
	require.ErrorIs(t, err, context.Canceled)
	var se *pd.StatusError
	require.ErrorAs(t, err, &se, "the last attempt's error is kept")
	require.Equal(t, "busy", se.Message)
	require.Equal(t, int32(1), n.Load())
}

func TestClient_EachAttemptHasItsOwnTimeout(t *testing.T) {
	var n atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select { // hang until the client's attempt times out
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		fmt.Fprint(w, `{"count":0,"stores":[]}`)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	c := newClient(t, srv.URL, pd.Options{Timeout: 100 * time.Millisecond})
	_, err := c.Stores(context.Background())
	require.NoError(t, err, "the hung first attempt times out, the retry succeeds")
	require.Equal(t, int32(2), n.Load())
}

func TestClient_TimeoutWithoutRetriesFails(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	c := newClient(t, srv.URL, pd.Options{Timeout: 50 * time.Millisecond, Retries: -1})
	err := c.Ping(context.Background())
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestClient_RejectsOversizedBody(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		chunk := strings.Repeat(" ", 1<<20)
		for i := 0; i <= 32; i++ {
			if _, err := fmt.Fprint(w, chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	// A timeout far above the time 32 MiB take on a loaded machine under
	// -race: only the size limit may end this read.
	_, err := newClient(t, srv.URL, pd.Options{Timeout: 2 * time.Minute}).Stores(context.Background())
	require.ErrorContains(t, err, "exceeds")
	require.Equal(t, int32(1), n.Load(), "a too large answer is not retried")
}

func TestClient_ObserverSeesEveryCall(t *testing.T) {
	type call struct {
		op  string
		err error
	}
	var mu sync.Mutex
	var calls []call
	url, _ := sequence(t, `"ok"`, 503, 200, 410)
	c := newClient(t, url, pd.Options{Observer: func(op string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		require.Positive(t, d)
		calls = append(calls, call{op, err})
	}})
	require.NoError(t, c.DeleteStore(context.Background(), 1))
	require.ErrorIs(t, c.DeleteStore(context.Background(), 1), pd.ErrStoreRemoved)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, calls, 2, "one observation per call, not per attempt")
	require.Equal(t, "delete_store", calls[0].op)
	require.NoError(t, calls[0].err)
	require.ErrorIs(t, calls[1].err, pd.ErrStoreRemoved)
}
