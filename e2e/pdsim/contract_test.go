package pdsim_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tidb-localpv/tidb-localpv/e2e/pdsim"
)

// The simulator against a real PD v26.3.4: the recording's requests
// (volumecontroller/pd/testdata/pd-v26.3.4/requests.txt) are replayed
// against a simulator brought, through its Go API, into the state the real
// cluster was in at each stage. Statuses, header names and JSON shapes must
// agree; error texts and PD's messages must agree exactly.

const fixtureDir = "../../volumecontroller/pd/testdata/pd-v26.3.4"

// notSimulated are the recorded requests the simulator does not serve.
var notSimulated = map[string]string{
	"config_schedule":                 "scheduling config: the controller does not read it",
	"r2_stores_progress":              "removal progress: the controller polls the store's state instead",
	"r2_workaround_delete_label_rule": "sent to unstick the recording's pd-simulator",
	"r2_workaround_delete_op9":        "sent to unstick the recording's pd-simulator",
	"r2_workaround_delete_op245":      "sent to unstick the recording's pd-simulator",
}

// simID maps the recording's store IDs to the simulator's: the recording's
// pd-simulator stores are 1–5 in both; PD gave the TiKV-like stores IDs
// from its shared allocator, the simulator numbers on.
var simID = map[string]string{"2299": "6", "2300": "7", "2302": "8"}

type exchange struct {
	name, method, target string
	status               int
	header               http.Header
	body                 []byte
}

func loadExchanges(t *testing.T) []exchange {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(fixtureDir, "requests.txt"))
	require.NoError(t, err)
	var out []exchange
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		require.Len(t, f, 3, line)
		x := exchange{name: f[0], method: f[1], target: f[2]}
		head, err := os.ReadFile(filepath.Join(fixtureDir, x.name+".head"))
		require.NoError(t, err)
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
		statusLine, err := tp.ReadLine()
		require.NoError(t, err)
		x.status, err = strconv.Atoi(strings.Fields(statusLine)[1])
		require.NoError(t, err)
		mime, err := tp.ReadMIMEHeader()
		require.NoError(t, err)
		x.header = http.Header(mime)
		x.body, err = os.ReadFile(filepath.Join(fixtureDir, x.name+".body"))
		require.NoError(t, err)
		out = append(out, x)
	}
	return out
}

// stages brings the simulator, before the named request, to the state the
// real cluster was in (README: stages by prefix; watch_*.txt: timings).
func stages(t *testing.T, sim *pdsim.Server, clk *clock, do func(method, target string) int) map[string]func() {
	t.Helper()
	addr := func(i int) string { return fmt.Sprintf("basic-tikv-%d.basic-tikv-peer.tidb-cluster.svc:20160", i) }
	stop := func(ids ...uint64) {
		for _, id := range ids {
			require.NoError(t, sim.StopHeartbeats(id))
		}
	}
	return map[string]func(){
		// r0: no store has joined yet.
		"r1_stores": func() {
			// Five stores, 60 regions of 3 replicas.
			for i := range 5 {
				id := sim.RegisterStore(addr(i))
				require.NoError(t, sim.SetRegions(id, 36))
			}
			clk.Advance(11 * time.Second) // past Preparing
		},
		"r3_store1_tombstone": func() { clk.Advance(2 * time.Minute) },
		"r4_delete_store3_too_few": func() {
			// The recording offlined store 2 just before (watch_store2_…).
			require.Equal(t, http.StatusOK, do(http.MethodDelete, "/pd/api/v1/store/2"))
		},
		"r5_new_store_A_preparing": func() {
			clk.Advance(2 * time.Minute) // store 2 buried
			require.Equal(t, uint64(6), sim.RegisterStore(addr(6)))
			require.Equal(t, uint64(7), sim.RegisterStore(addr(5)))
			clk.Advance(time.Second)
		},
		"r6_store2299_disconnected": func() {
			clk.Advance(10 * time.Second) // both Serving
			stop(6)
			clk.Advance(21 * time.Second)
		},
		"r7_store2299_down": func() { clk.Advance(40 * time.Second) },
		"r8_store2299_tombstone": func() {
			require.Equal(t, http.StatusOK, do(http.MethodDelete, "/pd/api/v1/store/6"))
			clk.Advance(2 * time.Second)
		},
		"r10_delete_store3_disconnected": func() {
			stop(3, 4, 5) // the recording killed its pd-simulator
			clk.Advance(21 * time.Second)
		},
		"r11_store3_offline_silent": func() { clk.Advance(40 * time.Second) },
		"r14_stores_check_final": func() {
			// basic-tikv-6 came back on a fresh disk, then fell silent.
			require.Equal(t, uint64(8), sim.RegisterStore(addr(6)))
			clk.Advance(11 * time.Second)
			stop(8)
			clk.Advance(21 * time.Second)
		},
	}
}

func TestContract_SimulatorAnswersLikePD(t *testing.T) {
	clk := &clock{now: time.Date(2026, 12, 1, 0, 37, 45, 0, time.UTC)}
	sim := pdsim.New(pdsim.Options{
		MaxReplicas:   3,
		DrainDelay:    time.Minute, // 45 regions drained in 62 s
		CheckInterval: time.Second,
		DownAfter:     time.Minute, // the recording set max-store-down-time=1m
		ServingAfter:  10 * time.Second,
		Now:           clk.Now,
	})
	do := func(method, target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		sim.Handler().ServeHTTP(rec, httptest.NewRequest(method, target, nil))
		return rec
	}
	before := stages(t, sim, clk, func(method, target string) int { return do(method, target).Code })

	for _, x := range loadExchanges(t) {
		if hook := before[x.name]; hook != nil {
			hook()
		}
		t.Run(x.name, func(t *testing.T) {
			if why, ok := notSimulated[strings.TrimPrefix(strings.TrimPrefix(x.name, "r0_prebootstrap_"), "r1_")]; ok {
				t.Skipf("not simulated: %s", why)
			}
			if why, ok := notSimulated[x.name]; ok {
				t.Skipf("not simulated: %s", why)
			}
			target := x.target
			for real, ours := range simID {
				target = strings.Replace(target, "/store/"+real, "/store/"+ours, 1)
			}
			got := do(x.method, target)
			require.Equal(t, x.status, got.Code, "status; body %s", got.Body)
			require.Equal(t, x.header.Get("Content-Type"), got.Header().Get("Content-Type"))
			require.Equal(t, headerNames(x.header), headerNames(got.Header()))
			compareBodies(t, x, got.Body.Bytes())
		})
	}

	// The cluster ID is one and the same wherever PD reports it.
	var cluster struct {
		ID uint64 `json:"id"`
	}
	require.NoError(t, json.Unmarshal(do(http.MethodGet, "/pd/api/v1/cluster").Body.Bytes(), &cluster))
	var members struct {
		Header struct {
			ClusterID uint64 `json:"cluster_id"`
		} `json:"header"`
	}
	require.NoError(t, json.Unmarshal(do(http.MethodGet, "/pd/api/v1/members").Body.Bytes(), &members))
	require.Equal(t, sim.ClusterID(), cluster.ID)
	require.Equal(t, sim.ClusterID(), members.Header.ClusterID)
}

// headerNames are the header names an answer carries, without those the
// transport sets.
func headerNames(h http.Header) []string {
	var out []string
	for k := range h {
		switch k {
		case "Date", "Content-Length", "Transfer-Encoding":
			continue
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// compareBodies: texts, errors and messages exactly; JSON objects and lists
// by shape, since IDs, times, addresses and sizes differ by nature.
func compareBodies(t *testing.T, x exchange, got []byte) {
	t.Helper()
	if !strings.HasPrefix(x.header.Get("Content-Type"), "application/json") {
		require.Equal(t, string(x.body), string(got))
		return
	}
	want, have := decode(t, x.body), decode(t, got)
	_, isText := want.(string)
	if isText || x.status >= 300 {
		require.Equal(t, want, have)
		return
	}
	require.Equal(t, shape(want, true), shape(have, false), "JSON shape; simulator answered %s", got)
}

func decode(t *testing.T, body []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	require.NoError(t, dec.Decode(&v), "%s", body)
	return v
}

// tikvReported are keys a real TiKV reports in its store and the
// recording's pd-simulator stores (address "mock://…") do not.
var tikvReported = map[string]string{"status_address": "string", "start_timestamp": "number", "deploy_path": "string"}

// shape renders a JSON value's keys and types, recursively. List elements
// are compared as a multiset (PD's store list is unordered). On the real
// side, the recording's pd-simulator stores get the keys a TiKV reports.
func shape(v any, real bool) string {
	switch v := v.(type) {
	case map[string]any:
		types := map[string]string{}
		for k, e := range v {
			types[k] = shape(e, real)
		}
		if addr, ok := v["address"].(string); real && ok && strings.HasPrefix(addr, "mock:") {
			for k, ty := range tikvReported {
				if _, ok := types[k]; !ok {
					types[k] = ty
				}
			}
		}
		keys := make([]string, 0, len(types))
		for k := range types {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		b.WriteString("{")
		for _, k := range keys {
			fmt.Fprintf(&b, "%q:%s,", k, types[k])
		}
		b.WriteString("}")
		return b.String()
	case []any:
		elems := make([]string, 0, len(v))
		for _, e := range v {
			elems = append(elems, shape(e, real))
		}
		slices.Sort(elems)
		return "[" + strings.Join(elems, ",") + "]"
	case json.Number:
		return "number"
	case string:
		return "string"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}
