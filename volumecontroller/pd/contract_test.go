package pd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The contract with a real PD v26.3.4: every answer it gave, recorded raw in
// testdata/pd-v26.3.4 (see its README and requests.txt), is served byte for
// byte and read through the client method that sends that request.

const fixtureDir = "testdata/pd-v26.3.4"

// The recorded PD's cluster and its one member.
const (
	fixtureClusterID = 7714128303309438701
	fixtureMemberID  = 7991701852439577752
)

// recorded is one request of the recording and PD's raw answer.
type recorded struct {
	name, method, target string
	status               int
	header               http.Header
	body                 []byte
}

// loadRecorded reads requests.txt and the answers it names, in the order
// they were sent.
func loadRecorded(t *testing.T) []recorded {
	t.Helper()
	f, err := os.Open(filepath.Join(fixtureDir, "requests.txt"))
	require.NoError(t, err)
	defer f.Close()
	var out []recorded
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		require.Len(t, fields, 3, line)
		r := recorded{name: fields[0], method: fields[1], target: fields[2]}
		head, err := os.ReadFile(filepath.Join(fixtureDir, r.name+".head"))
		require.NoError(t, err)
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
		statusLine, err := tp.ReadLine()
		require.NoError(t, err)
		proto, rest, _ := strings.Cut(statusLine, " ")
		require.Equal(t, "HTTP/1.1", proto, r.name)
		code, _, _ := strings.Cut(rest, " ")
		r.status, err = strconv.Atoi(code)
		require.NoError(t, err, r.name)
		mime, err := tp.ReadMIMEHeader()
		require.NoError(t, err, r.name)
		r.header = http.Header(mime)
		r.body, err = os.ReadFile(filepath.Join(fixtureDir, r.name+".body"))
		require.NoError(t, err)
		out = append(out, r)
	}
	require.NoError(t, sc.Err())
	return out
}

// outcome is what the client makes of an answer.
type outcome int

const (
	answered        outcome = iota // a value, checked against the body read independently
	notBootstrapped                // ErrNotBootstrapped, asked once
	storeNotFound                  // ErrStoreNotFound
	storeRemoved                   // ErrStoreRemoved
	refused                        // *RefusedError carrying PD's text
	wrongURL                       // a router's 404: a *StatusError, never ErrStoreNotFound
	notAsked                       // refused by the client itself; nothing is sent
)

// expect is what the client must do with one recorded answer.
type expect struct {
	outcome outcome
	// phase, for a single store, is the phase the controller reads.
	phase Phase
	// unused says why the client never sends this request.
	unused string
	// ask replaces the call derived from the request: the client cannot
	// send it (unused says why), but its answer is one it may receive.
	ask func(context.Context, *Client) (any, error)
}

const (
	whyDefaultList = "the client always names the states it lists: PD's default hides Tombstone stores, the very ones whose disks can be released"
	whyBadState    = "the client checks the states before asking"
	whyCheck       = "the client lists by state number (/stores); /stores/check answers the same body, read here by the same decoder"
	whyBadID       = "store IDs are uint64: the client cannot ask for \"abc\""
	whyNotRead     = "the controller does not read PD's version or its scheduling configuration (only max-replicas)"
	whyForce       = "the controller never tells PD that a machine is physically destroyed"
	whyBury        = "the controller never removes Tombstone records; PD's GC and the operator do"
	whyProgress    = "the controller polls the store's state, not the removal progress"
	whyWorkaround  = "sent to unstick the recording's pd-simulator; not part of the store API"
	whyWrongRoute  = "the client only asks routes PD has; a wrong base path or proxy may answer like this, so the answer is fed to Store"
)

func storeCall(id uint64) func(context.Context, *Client) (any, error) {
	return func(ctx context.Context, c *Client) (any, error) { return c.Store(ctx, id) }
}

// contract lists every recorded answer. Before bootstrap and for the
// routes the client uses, the answers differ only in stage.
func contract() map[string]expect {
	unused := func(why string) expect { return expect{unused: why} }
	stage0 := map[string]expect{
		"stores":                    unused(whyDefaultList),
		"stores_state012":           {outcome: notBootstrapped},
		"stores_state0":             {outcome: notBootstrapped},
		"stores_state1":             {outcome: notBootstrapped},
		"stores_state2":             {outcome: notBootstrapped},
		"stores_state5":             unused(whyBadState),
		"stores_stateabc":           unused(whyBadState),
		"stores_check":              unused(whyCheck),
		"stores_check_up":           unused(whyCheck),
		"stores_check_Tombstone":    unused(whyCheck),
		"stores_check_disconnected": unused(whyCheck),
		"stores_check_down":         unused(whyCheck),
		"stores_check_2":            unused(whyCheck),
		"stores_check_bogus":        unused(whyCheck),
		"store_1":                   {outcome: notBootstrapped},
		"store_missing":             {outcome: notBootstrapped},
		"store_0":                   {outcome: notAsked},
		"store_abc":                 unused(whyBadID),
		"members":                   {outcome: answered},
		"health":                    {outcome: answered},
		"ping":                      {outcome: answered},
		"cluster":                   {outcome: answered},
		"version":                   unused(whyNotRead),
		"config_schedule":           unused(whyNotRead),
		"config_replicate":          {outcome: answered},
		"nosuch_route":              {outcome: wrongURL, unused: whyWrongRoute, ask: storeCall(1)},
		"delete_missing":            {outcome: notBootstrapped},
	}
	out := map[string]expect{}
	for k, v := range stage0 {
		out["r0_prebootstrap_"+k] = v
		switch {
		case v.outcome != notBootstrapped:
			out["r1_"+k] = v
		case strings.HasPrefix(k, "stores"):
			out["r1_"+k] = expect{outcome: answered}
		}
	}
	for k, v := range map[string]expect{
		"r1_store_1":        {outcome: answered, phase: PhaseUp},
		"r1_store_missing":  {outcome: storeNotFound},
		"r1_delete_missing": {outcome: storeNotFound},

		"r2_delete_store1_up":             {outcome: answered},
		"r2_store1_after_delete":          {outcome: answered, phase: PhaseOffline},
		"r2_delete_store1_again":          {outcome: answered},
		"r2_stores_default_with_offline":  unused(whyDefaultList),
		"r2_stores_state1":                {outcome: answered},
		"r2_stores_check_offline":         unused(whyCheck),
		"r2_stores_progress":              unused(whyProgress),
		"r2_workaround_delete_label_rule": unused(whyWorkaround),
		"r2_workaround_delete_op9":        unused(whyWorkaround),
		"r2_workaround_delete_op245":      unused(whyWorkaround),

		"r3_store1_tombstone":               {outcome: answered, phase: PhaseTombstone},
		"r3_delete_store1_tombstone":        {outcome: storeRemoved},
		"r3_stores_default_after_tombstone": unused(whyDefaultList),
		"r3_stores_state012":                {outcome: answered},
		"r3_stores_state2":                  {outcome: answered},
		"r3_stores_check":                   unused(whyCheck),
		"r3_stores_check_tombstone":         unused(whyCheck),

		"r4_delete_store3_too_few": {outcome: refused},

		"r5_new_store_A_preparing": {outcome: answered, phase: PhaseUp},

		"r6_store2299_disconnected":    {outcome: answered, phase: PhaseDisconnected},
		"r6_stores_check_disconnected": unused(whyCheck),
		"r6_stores_state0":             {outcome: answered},

		"r7_store2299_down":      {outcome: answered, phase: PhaseDown},
		"r7_stores_check_down":   unused(whyCheck),
		"r7_stores_state012":     {outcome: answered},
		"r8_store2299_tombstone": {outcome: answered, phase: PhaseTombstone},

		"r9_remove_tombstone":              unused(whyBury),
		"r9_store1_after_remove_tombstone": {outcome: storeNotFound},
		"r9_delete_store1_after_remove":    {outcome: storeNotFound},
		"r9_stores_state012":               {outcome: answered},

		"r10_delete_store3_disconnected":         {outcome: answered},
		"r10_delete_store4_disconnected_too_few": {outcome: refused},
		"r10_store3_offline_not_heartbeating":    {outcome: answered, phase: PhaseOffline},

		"r11_store3_offline_silent":      {outcome: answered, phase: PhaseOffline},
		"r11_store4_down":                {outcome: answered, phase: PhaseDown},
		"r11_stores_check_down":          unused(whyCheck),
		"r11_delete_store4_down_too_few": {outcome: refused},
		"r11_delete_store4_down_force":   unused(whyForce),

		"r12_store4_offline_destroyed":            {outcome: answered, phase: PhaseOffline},
		"r12_delete_store4_destroyed_noforce":     {outcome: refused},
		"r12_delete_store4_destroyed_force_again": unused(whyForce),

		// A client given a wrong base path sends exactly this request.
		"r13_wrong_prefix_store": {outcome: wrongURL},
		"r13_api_v2_store":       {outcome: wrongURL, unused: whyWrongRoute, ask: storeCall(3)},

		"r14_stores_check_final": unused(whyCheck),
	} {
		out[k] = v
	}
	return out
}

// notPairs are the files of the fixture directory that are not a recorded
// request/answer pair, and why.
var notPairs = map[string]string{
	"README.md":      "what the recording is",
	"INDEX.txt":      "times and statuses of the requests",
	"requests.txt":   "the request behind each answer (ours)",
	".gitattributes": "keeps the recorded bytes (CRLF heads) as they are",
	"r6_set_max_store_down_time.body": "only the body of PD's answer to the recording's POST /config " +
		"(max-store-down-time=1m) was kept; the client never changes PD's configuration",
	"watch_sim_killed.events":                       "timings of the recording, not answers",
	"watch_sim_killed.txt":                          "timings of the recording, not answers",
	"watch_store1_offline_to_tombstone.txt":         "timings of the recording, not answers",
	"watch_store2299_down_offline_to_tombstone.txt": "timings of the recording, not answers",
	"watch_store2299_heartbeat_stop.events":         "timings of the recording, not answers",
	"watch_store2299_heartbeat_stop.txt":            "timings of the recording, not answers",
	"watch_store2_offline_to_tombstone.txt":         "timings of the recording, not answers",
}

func TestContract_EveryRecordedAnswerIsAccountedFor(t *testing.T) {
	recs := loadRecorded(t)
	want := contract()
	named := map[string]bool{}
	for _, r := range recs {
		require.False(t, named[r.name], "%s listed twice", r.name)
		named[r.name] = true
		_, ok := want[r.name]
		require.True(t, ok, "%s has no expectation", r.name)
	}
	for name := range want {
		require.True(t, named[name], "expectation for %s, which was not recorded", name)
	}

	// Every file is a listed pair or explained.
	entries, err := os.ReadDir(fixtureDir)
	require.NoError(t, err)
	for _, e := range entries {
		name := e.Name()
		if _, ok := notPairs[name]; ok {
			continue
		}
		base, ext := strings.TrimSuffix(name, filepath.Ext(name)), filepath.Ext(name)
		require.Contains(t, []string{".head", ".body"}, ext, name)
		require.True(t, named[base], "%s is not in requests.txt", name)
	}

	// requests.txt agrees with the recording's own index, in order.
	index, err := os.ReadFile(filepath.Join(fixtureDir, "INDEX.txt"))
	require.NoError(t, err)
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(index)), "\n") {
		f := strings.Fields(l) // time METHOD target -> status
		require.Len(t, f, 5, l)
		lines = append(lines, f[1]+" "+f[2]+" "+f[4])
	}
	at := 0
	for _, r := range recs {
		line := r.method + " " + r.target + " " + strconv.Itoa(r.status)
		i := slices.Index(lines[at:], line)
		require.GreaterOrEqual(t, i, 0, "%s (%s) is not in INDEX.txt after the previous request", r.name, line)
		at += i + 1
	}
}

// replay serves recorded answers byte for byte and keeps the requests.
type replay struct {
	mu   sync.Mutex
	next recorded
	seen []*http.Request
}

func (p *replay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	rec := p.next
	p.seen = append(p.seen, r.Clone(context.Background()))
	p.mu.Unlock()
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	// The recording rewrote paths inside some bodies (README), so their
	// recorded Content-Length is stale; net/http sets the true one.
	w.Header().Del("Content-Length")
	if rec.header.Get("Content-Type") == "" {
		w.Header()["Content-Type"] = nil // as recorded: no sniffing
	}
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body)
}

func (p *replay) serve(r recorded) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next, p.seen = r, nil
}

func (p *replay) requests() []*http.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

// callFor maps a recorded request to the client method that sends it, and
// the base path the client must have been given to send it.
func callFor(t *testing.T, r recorded) (string, func(context.Context, *Client) (any, error)) {
	t.Helper()
	u, err := url.Parse(r.target)
	require.NoError(t, err)
	base, path, ok := strings.Cut(u.Path, apiPrefix)
	require.True(t, ok, r.target)
	switch {
	case r.method == http.MethodGet && path == "/stores":
		var states []StoreState
		for _, v := range u.Query()["state"] {
			n, err := strconv.Atoi(v)
			require.NoError(t, err, r.target)
			states = append(states, StoreState(n))
		}
		if slices.Equal(states, []StoreState{StoreUp, StoreOffline, StoreTombstone}) {
			states = nil // the client's default
		}
		return base, func(ctx context.Context, c *Client) (any, error) { return c.Stores(ctx, states...) }
	case strings.HasPrefix(path, "/store/") && u.RawQuery == "":
		id, err := strconv.ParseUint(strings.TrimPrefix(path, "/store/"), 10, 64)
		require.NoError(t, err, r.target)
		if r.method == http.MethodDelete {
			return base, func(ctx context.Context, c *Client) (any, error) { return nil, c.DeleteStore(ctx, id) }
		}
		return base, storeCall(id)
	case r.method == http.MethodGet && path == "/members":
		return base, func(ctx context.Context, c *Client) (any, error) { return c.Members(ctx) }
	case r.method == http.MethodGet && path == "/health":
		return base, func(ctx context.Context, c *Client) (any, error) { return c.Health(ctx) }
	case r.method == http.MethodGet && path == "/ping":
		return base, func(ctx context.Context, c *Client) (any, error) { return nil, c.Ping(ctx) }
	case r.method == http.MethodGet && path == "/cluster":
		return base, func(ctx context.Context, c *Client) (any, error) { return c.ClusterID(ctx) }
	case r.method == http.MethodGet && path == "/config/replicate":
		return base, func(ctx context.Context, c *Client) (any, error) { return c.MaxReplicas(ctx) }
	}
	t.Fatalf("%s: no client method sends %s %s", r.name, r.method, r.target)
	return "", nil
}

func TestContract_ClientReadsEveryRecordedAnswer(t *testing.T) {
	p := &replay{}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	want := contract()

	for _, r := range loadRecorded(t) {
		t.Run(r.name, func(t *testing.T) {
			w := want[r.name]
			if w.unused != "" && w.ask == nil {
				t.Logf("not sent by the client: %s", w.unused)
				if r.status == http.StatusOK && strings.HasPrefix(r.target, apiPrefix+"/stores") && bytes.Contains(r.body, []byte(`"count"`)) {
					// The same body shape the client does read.
					got, err := decodeStores(r.body)
					require.NoError(t, err)
					require.Equal(t, readStores(t, r.body), got)
				}
				return
			}
			base, ask := "", w.ask
			if ask == nil {
				base, ask = callFor(t, r)
			}
			c, err := New(srv.URL+base, Options{Retries: 2, Backoff: time.Millisecond})
			require.NoError(t, err)
			p.serve(r)
			got, err := ask(context.Background(), c)
			sent := p.requests()
			if w.ask == nil && w.outcome != notAsked {
				require.NotEmpty(t, sent)
				require.Equal(t, r.method, sent[0].Method)
				u, perr := url.Parse(r.target)
				require.NoError(t, perr)
				require.Equal(t, u.Path, sent[0].URL.Path, "the client sends the recorded request")
				require.Equal(t, u.Query(), sent[0].URL.Query())
			}
			checkOutcome(t, r, w, got, err, len(sent))
		})
	}
}

func checkOutcome(t *testing.T, r recorded, w expect, got any, err error, sent int) {
	t.Helper()
	switch w.outcome {
	case notBootstrapped:
		require.ErrorIs(t, err, ErrNotBootstrapped)
		require.NotErrorIs(t, err, ErrStoreNotFound)
		require.Equal(t, 1, sent, "not retried")
		require.True(t, isZero(got), "no value with the error: %#v", got)
	case storeNotFound:
		require.ErrorIs(t, err, ErrStoreNotFound)
	case storeRemoved:
		require.ErrorIs(t, err, ErrStoreRemoved)
	case refused:
		var re *RefusedError
		require.ErrorAs(t, err, &re)
		var text string
		require.NoError(t, json.Unmarshal(r.body, &text))
		require.Equal(t, text, re.Message)
	case wrongURL:
		require.NotErrorIs(t, err, ErrStoreNotFound)
		var se *StatusError
		require.ErrorAs(t, err, &se)
		require.Equal(t, http.StatusNotFound, se.Status)
	case notAsked:
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrStoreNotFound)
		require.Zero(t, sent)
	case answered:
		require.NoError(t, err)
		checkValue(t, r, w, got)
	}
}

func isZero(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case []StoreInfo:
		return v == nil
	case StoreInfo:
		return v.ID == 0
	}
	return false
}

func checkValue(t *testing.T, r recorded, w expect, got any) {
	t.Helper()
	switch v := got.(type) {
	case []StoreInfo:
		require.Equal(t, readStores(t, r.body), v)
		for _, s := range v {
			require.NotEqual(t, PhaseUnknown, s.Phase(), "store %d: every state PD v26.3.4 reports is understood", s.ID)
		}
	case StoreInfo:
		require.Equal(t, readStore(t, r.body), v)
		require.Equal(t, w.phase, v.Phase())
		if r.name == "r5_new_store_A_preparing" {
			require.Equal(t, NodePreparing, v.NodeState, "no node_state key: Preparing")
		}
	case Members:
		pd0 := Member{Name: "pd-0", MemberID: fixtureMemberID,
			PeerURLs: []string{"http://127.0.0.1:23800"}, ClientURLs: []string{"http://127.0.0.1:23790"}}
		require.Equal(t, Members{ClusterID: fixtureClusterID, Members: []Member{pd0}, Leader: &pd0}, v)
	case []MemberHealth:
		require.Equal(t, []MemberHealth{{Name: "pd-0", MemberID: fixtureMemberID,
			ClientURLs: []string{"http://127.0.0.1:23790"}, Health: true}}, v)
	case uint64:
		require.Equal(t, uint64(fixtureClusterID), v)
	case int:
		require.Equal(t, 3, v, "max-replicas")
	case nil:
		// Ping, and DeleteStore accepted: nothing but the error to check.
	default:
		t.Fatalf("unexpected value %T", got)
	}
}

// readStores reads a store list without the client's decoder: numbers as
// json.Number, every field looked up by hand.
func readStores(t *testing.T, body []byte) []StoreInfo {
	t.Helper()
	var list map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&list))
	items, _ := list["stores"].([]any)
	require.Equal(t, json.Number(strconv.Itoa(len(items))), list["count"])
	out := make([]StoreInfo, 0, len(items))
	for _, it := range items {
		out = append(out, storeFromMap(t, it.(map[string]any)))
	}
	return out
}

func readStore(t *testing.T, body []byte) StoreInfo {
	t.Helper()
	var one map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&one))
	return storeFromMap(t, one)
}

func storeFromMap(t *testing.T, m map[string]any) StoreInfo {
	t.Helper()
	st := m["store"].(map[string]any)
	status := m["status"].(map[string]any)
	num := func(obj map[string]any, key string) int64 {
		v, ok := obj[key]
		if !ok {
			return 0 // omitted: PD's zero
		}
		n, err := v.(json.Number).Int64()
		require.NoError(t, err, key)
		return n
	}
	str := func(key string) string {
		s, _ := st[key].(string)
		return s
	}
	id, err := strconv.ParseUint(string(st["id"].(json.Number)), 10, 64)
	require.NoError(t, err)
	s := StoreInfo{
		ID:            id,
		Address:       str("address"),
		StatusAddress: str("status_address"),
		Version:       str("version"),
		State:         StoreState(num(st, "state")),
		NodeState:     NodeState(num(st, "node_state")),
		StateName:     str("state_name"),
		RegionCount:   int(num(status, "region_count")),
	}
	if sec := num(st, "start_timestamp"); sec > 0 {
		s.StartTime = time.Unix(sec, 0).UTC()
	}
	if ns := num(st, "last_heartbeat"); ns > 0 {
		s.LastHeartbeat = time.Unix(0, ns).UTC()
	}
	return s
}
