package pd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Errors callers branch on.
var (
	// ErrStoreNotFound: PD does not know the store id.
	ErrStoreNotFound = errors.New("store not found")
	// ErrStoreRemoved: the store is already Tombstone; a delete has nothing
	// left to do.
	ErrStoreRemoved = errors.New("store already removed")
	// ErrNotBootstrapped: PD answered that no TiKV has joined its cluster
	// yet (500 "TiKV cluster not bootstrapped"), as it does for every store
	// request until the first store registers. It tells nothing about any
	// store, so callers must read it as "unknown", never as "no stores".
	ErrNotBootstrapped = errors.New("pd cluster not bootstrapped")
	// errStoreZero: PD numbers stores from 1 and answers 404 for store 0,
	// which must not read as "that store is gone".
	errStoreZero = errors.New("store id 0 names no store")
	// errBodyTooLarge is not retried: the same endpoint will answer the same.
	errBodyTooLarge = fmt.Errorf("response body exceeds %d bytes", maxBodyBytes)
)

// RefusedError is PD declining a request it understood, e.g. deleting a
// store while too few Up stores would remain for max-replicas. It is never
// retried: asking again changes nothing until the cluster changes.
type RefusedError struct {
	Status  int
	Message string
}

// Error implements error.
func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused by pd (%d): %s", e.Status, e.Message)
}

// StatusError is an HTTP status the method does not expect, after any
// retries. A 404 that is not PD's JSON string naming the store also lands
// here: it means the URL does not lead to PD's API, not that the store is
// gone.
type StatusError struct {
	Status  int
	Message string
}

// Error implements error.
func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("unexpected status %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("unexpected status %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

type response struct {
	status int
	body   []byte
}

// text returns the body when it is a JSON string, the form of every
// message and error PD's store handlers answer with.
func (r response) text() (string, bool) {
	var s string
	// Unmarshal accepts null for a string; PD never sends it.
	if !strings.HasPrefix(strings.TrimSpace(string(r.body)), `"`) || json.Unmarshal(r.body, &s) != nil {
		return "", false
	}
	return s, true
}

// notBootstrapped reports PD's answer to store requests before any TiKV
// joined. It is matched on the text because PD sends it as a plain 500.
func (r response) notBootstrapped() bool {
	s, ok := r.text()
	return ok && r.status == http.StatusInternalServerError &&
		(strings.Contains(s, "ErrNotBootstrapped") || strings.Contains(strings.ToLower(s), "not bootstrapped"))
}

// storeNotFound reports whether a 404 is PD saying it has no store id. PD
// answers a JSON string naming the store ("[PD:core:ErrStoreNotFound]store
// 5 not found"; releases before error codes lacked the prefix). A router's
// plain-text 404, a proxy's JSON object, or a message about another store
// is not that answer: read as "store gone", it would let a misrouted
// request release the store's disk.
func (r response) storeNotFound(id uint64) bool {
	s, ok := r.text()
	return ok && r.status == http.StatusNotFound &&
		strings.Contains(s, "store "+strconv.FormatUint(id, 10)+" not found")
}

// message extracts PD's error text: a JSON string, or the raw body.
func (r response) message() string {
	if s, ok := r.text(); ok {
		return s
	}
	msg := strings.TrimSpace(string(r.body))
	const limit = 512
	if len(msg) > limit {
		msg = msg[:limit] + "…"
	}
	return msg
}

// statusError describes an answer the method does not expect; PD's
// not-bootstrapped answer also matches ErrNotBootstrapped.
func (r response) statusError() error {
	err := &StatusError{Status: r.status, Message: r.message()}
	if r.notBootstrapped() {
		return fmt.Errorf("%w: %w", ErrNotBootstrapped, err)
	}
	return err
}

// call sends one request with retries. It returns the first answer that is
// not worth retrying (any 2xx/3xx/4xx except 429, and PD's not-bootstrapped
// 500, which stays true until a TiKV joins) or an error once attempts are
// exhausted or ctx ends.
func (c *Client) call(ctx context.Context, method, path string, query url.Values) (response, error) {
	u := *c.base
	u.Path = c.base.Path + apiPrefix + path
	u.RawQuery = query.Encode()
	target := u.String()

	backoff := c.backoff
	var lastErr error
	for attempt := 0; ; attempt++ {
		resp, err := c.attempt(ctx, method, target)
		switch {
		case errors.Is(err, errBodyTooLarge):
			return response{}, fmt.Errorf("%s %s: %w", method, path, err)
		case err != nil:
			lastErr = err
		case resp.notBootstrapped():
			return resp, nil
		case resp.status >= 500 || resp.status == http.StatusTooManyRequests:
			lastErr = resp.statusError()
		default:
			return resp, nil
		}
		if ctx.Err() != nil {
			return response{}, fmt.Errorf("%w; last attempt: %w", ctx.Err(), lastErr)
		}
		if attempt >= c.retries {
			return response{}, fmt.Errorf("after %d attempts: %w", attempt+1, lastErr)
		}
		if err := sleep(ctx, backoff); err != nil {
			return response{}, fmt.Errorf("%w; last attempt: %w", err, lastErr)
		}
		backoff = min(2*backoff, max(maxBackoff, c.backoff))
	}
}

// attempt sends one request under its own timeout and reads the whole body
// before that timeout cancels it.
func (c *Client) attempt(ctx context.Context, method, target string) (response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxBodyBytes {
		return response{}, errBodyTooLarge
	}
	return response{status: resp.StatusCode, body: body}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
