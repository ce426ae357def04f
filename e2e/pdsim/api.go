package pdsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

const apiPrefix = "/pd/api/v1"

// garbageBody is what every PD endpoint answers in garbage mode: JSON cut
// off mid-value, as a proxy dropping the connection would leave it.
const garbageBody = `{"count": 1, "stores": [{"store": {"id": 1, "address": "`

// notBootstrapped is PD's answer to store requests before any store joined.
const notBootstrapped = "[PD:cluster:ErrNotBootstrapped]TiKV cluster not bootstrapped, please start TiKV first"

func (s *Server) routes() http.Handler {
	api := http.NewServeMux()
	// Store routes sit behind PD's cluster check, which runs before their
	// arguments are parsed.
	stores := func(pattern string, h http.HandlerFunc) { api.HandleFunc(pattern, s.requireBootstrap(h)) }
	stores("GET "+apiPrefix+"/stores", s.getStores)
	stores("GET "+apiPrefix+"/stores/check", s.getStoresByStateName)
	stores("DELETE "+apiPrefix+"/stores/remove-tombstone", s.removeTombstones)
	stores("GET "+apiPrefix+"/store/{id}", s.getStore)
	stores("DELETE "+apiPrefix+"/store/{id}", s.deleteStore)
	stores("POST "+apiPrefix+"/store/{id}/state", s.setStoreState)
	api.HandleFunc("GET "+apiPrefix+"/members", s.getMembers)
	api.HandleFunc("DELETE "+apiPrefix+"/members/name/{name}", s.deleteMemberByName)
	api.HandleFunc("DELETE "+apiPrefix+"/members/id/{id}", s.deleteMemberByID)
	api.HandleFunc("GET "+apiPrefix+"/health", s.getHealth)
	// PD's ping answers 200 with an empty body.
	api.HandleFunc("GET "+apiPrefix+"/ping", func(http.ResponseWriter, *http.Request) {})
	api.HandleFunc("GET "+apiPrefix+"/cluster", s.getCluster)
	api.HandleFunc("GET "+apiPrefix+"/version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, versionJSON{Version: pdVersion})
	})
	api.HandleFunc("GET "+apiPrefix+"/config/replicate", s.getReplicationConfig)
	// PD's v2 API is another router; it answers unknown paths in bare
	// text/plain without a newline.
	api.HandleFunc("/pd/api/v2/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("404 page not found"))
	})

	// Paths outside both get the router's plain-text 404, as on PD.
	mux := http.NewServeMux()
	mux.Handle("/pd/", s.faults(api))
	s.controlRoutes(mux)
	return withCORS(mux)
}

// withCORS adds the headers PD's HTTP server sets on every answer, its
// 404s included; the simulator's own controls go without.
func withCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/sim/") {
			h := w.Header()
			h.Set("Access-Control-Allow-Headers", "accept, content-type, authorization")
			h.Set("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE")
			h.Set("Access-Control-Allow-Origin", "*")
		}
		next.ServeHTTP(w, r)
	})
}

// requireBootstrap answers like PD's cluster check: 500 until a store has
// registered.
func (s *Server) requireBootstrap(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		ok := s.bootstrapped
		s.mu.Unlock()
		if !ok {
			writeJSON(w, http.StatusInternalServerError, notBootstrapped)
			return
		}
		next(w, r)
	}
}

// faults applies SetUnavailable and SetGarbage to PD's endpoints.
func (s *Server) faults(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		unavailable, garbage := s.unavailable, s.garbage
		s.mu.Unlock()
		switch {
		case unavailable:
			http.Error(w, "no endpoints available for service \"pd\"", http.StatusServiceUnavailable)
		case garbage:
			w.Header().Set("Content-Type", "application/json; charset=UTF-8")
			_, _ = w.Write([]byte(garbageBody))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// writeJSON renders like PD's unrolled/render with IndentJSON; errors are
// JSON strings.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

func (s *Server) getStores(w http.ResponseWriter, r *http.Request) {
	// Like PD: Up and Offline unless ?state= says otherwise. Disconnected
	// and Down stores are state Up, so they pass an Up filter.
	accept := map[int32]bool{stateUp: true, stateOffline: true}
	if values, ok := r.URL.Query()["state"]; ok {
		accept = map[int32]bool{}
		for _, v := range values {
			// PD answers 500 here (its filter error is not an input error).
			n, err := strconv.Atoi(v)
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, err.Error())
				return
			}
			if n < stateUp || n > stateTombstone {
				writeJSON(w, http.StatusInternalServerError, fmt.Sprintf("unknown StoreState: %d", n))
				return
			}
			accept[int32(n)] = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	out := storesJSON{Stores: []storeInfoJSON{}}
	for _, st := range s.sortedStoresLocked() {
		if accept[st.state] {
			out.Stores = append(out.Stores, s.storeJSONLocked(st, now))
		}
	}
	out.Count = len(out.Stores)
	writeJSON(w, http.StatusOK, out)
}

// getStoresByStateName matches state_name case-insensitively; without a state
// it lists every store, Tombstones included, as PD does.
func (s *Server) getStoresByStateName(w http.ResponseWriter, r *http.Request) {
	known := []string{"up", "offline", "tombstone", "disconnected", "down"}
	want := map[string]bool{}
	for _, v := range r.URL.Query()["state"] {
		name := strings.ToLower(v)
		if name == "" {
			continue
		}
		if !slices.Contains(known, name) {
			writeJSON(w, http.StatusBadRequest, "unknown StoreState: "+v)
			return
		}
		want[name] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	out := storesJSON{Stores: []storeInfoJSON{}}
	for _, st := range s.sortedStoresLocked() {
		info := s.storeJSONLocked(st, now)
		if len(want) == 0 || want[strings.ToLower(info.Store.StateName)] {
			out.Stores = append(out.Stores, info)
		}
	}
	out.Count = len(out.Stores)
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) removeTombstones(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nowLocked()
	s.removeTombstonesLocked()
	writeJSON(w, http.StatusOK, "Remove tombstone successfully.")
}

// storeID parses {id} the way PD's handlers do, answering PD's input error
// (400, a JSON object, unlike its other errors) when invalid.
func storeID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		w.Header().Set("Tidb-Error-Code", "input")
		writeJSON(w, http.StatusBadRequest, inputErrorJSON{Code: "input", Msg: err.Error()})
		return 0, false
	}
	return id, true
}

func (s *Server) getStore(w http.ResponseWriter, r *http.Request) {
	id, ok := storeID(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	st, ok := s.stores[id]
	if !ok {
		writeJSON(w, http.StatusNotFound, fmt.Sprintf("[PD:core:ErrStoreNotFound]store %d not found", id))
		return
	}
	writeJSON(w, http.StatusOK, s.storeJSONLocked(st, now))
}

func (s *Server) deleteStore(w http.ResponseWriter, r *http.Request) {
	id, ok := storeID(w, r)
	if !ok {
		return
	}
	_, force := r.URL.Query()["force"]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deletes == nil {
		s.deletes = map[uint64]int{}
	}
	s.deletes[id]++
	status, msg := s.removeStoreLocked(id, force, s.nowLocked())
	writeJSON(w, status, msg)
}

func (s *Server) setStoreState(w http.ResponseWriter, r *http.Request) {
	id, ok := storeID(w, r)
	if !ok {
		return
	}
	state := r.URL.Query().Get("state")
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowLocked()
	var status int
	var msg string
	switch {
	case strings.EqualFold(state, "Up"):
		status, msg = s.upStoreLocked(id, now)
	case strings.EqualFold(state, "Offline"):
		status, msg = s.removeStoreLocked(id, false, now)
		if status == http.StatusOK {
			msg = "The store's state is updated."
		}
	default:
		status, msg = http.StatusBadRequest, fmt.Sprintf("invalid state %s", state)
	}
	writeJSON(w, status, msg)
}

func (s *Server) getMembers(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	writeJSON(w, http.StatusOK, s.membersJSONLocked())
}

func (s *Server) deleteMemberByName(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.removeMemberLocked(name); err != nil {
		writeJSON(w, http.StatusNotFound, "not found, pd: "+name)
		return
	}
	writeJSON(w, http.StatusOK, "removed, pd: "+name)
}

func (s *Server) deleteMemberByID(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error()) // as PD
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.members {
		if m.id == id {
			_ = s.removeMemberLocked(m.name) // found just above
			writeJSON(w, http.StatusOK, fmt.Sprintf("removed, pd: %d", id))
			return
		}
	}
	writeJSON(w, http.StatusNotFound, fmt.Sprintf("not found, pd: %d", id))
}

func (s *Server) getCluster(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	writeJSON(w, http.StatusOK, clusterJSON{ID: s.clusterID, MaxPeerCount: s.opts.MaxReplicas})
}

func (s *Server) getReplicationConfig(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, replicationJSON{
		MaxReplicas:               s.opts.MaxReplicas,
		StrictlyMatchLabel:        "false",
		EnablePlacementRules:      "true",
		EnablePlacementRulesCache: "false",
	})
}

func (s *Server) getHealth(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]healthJSON, 0, len(s.members))
	for _, m := range s.members {
		out = append(out, healthJSON{Name: m.name, MemberID: m.id, ClientURLs: m.clientURLs(), Health: true})
	}
	writeJSON(w, http.StatusOK, out)
}
