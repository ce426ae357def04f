package pdsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// controlRoutes serves the Go control methods over HTTP under /sim/, for a
// playground running the simulator in another process. They ignore
// SetUnavailable/SetGarbage: those must stay switchable.
func (s *Server) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /sim/stores", s.simRegisterStore)
	mux.HandleFunc("GET /sim/stores/{id}", s.simGetStore)
	mux.HandleFunc("POST /sim/stores/{id}/heartbeat", s.simStoreOp(func(id uint64, _ simBody) error {
		return s.Heartbeat(id)
	}))
	mux.HandleFunc("PUT /sim/stores/{id}/heartbeats", s.simStoreOp(func(id uint64, b simBody) error {
		if b.Enabled == nil {
			return errBadRequest("body needs \"enabled\"")
		}
		if *b.Enabled {
			return s.ResumeHeartbeats(id)
		}
		return s.StopHeartbeats(id)
	}))
	mux.HandleFunc("PUT /sim/stores/{id}/regions", s.simStoreOp(func(id uint64, b simBody) error {
		if b.Count == nil {
			return errBadRequest("body needs \"count\"")
		}
		return s.SetRegions(id, *b.Count)
	}))
	mux.HandleFunc("PUT /sim/stores/{id}", s.simStoreOp(func(id uint64, b simBody) error {
		if b.Address == "" {
			return errBadRequest("body needs \"address\"")
		}
		return s.RecoverStore(id, b.Address)
	}))
	mux.HandleFunc("POST /sim/rebuild", s.simRebuild)
	mux.HandleFunc("POST /sim/members", s.simAddMember)
	mux.HandleFunc("DELETE /sim/members/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeSimResult(w, nil, s.RemoveMember(r.PathValue("name")))
	})
	mux.HandleFunc("PUT /sim/unavailable", s.simToggle(s.SetUnavailable))
	mux.HandleFunc("PUT /sim/garbage", s.simToggle(s.SetGarbage))
}

// simBody is the union of the control request bodies.
type simBody struct {
	Address     string   `json:"address"`
	Name        string   `json:"name"`
	Enabled     *bool    `json:"enabled"`
	Count       *int     `json:"count"`
	ClusterID   uint64   `json:"cluster_id"`
	Members     []string `json:"members"`
	NextStoreID uint64   `json:"next_store_id"`
}

type errBadRequest string

func (e errBadRequest) Error() string { return string(e) }

// readSimBody decodes an optional JSON body; no body is an empty one.
func readSimBody(w http.ResponseWriter, r *http.Request) (simBody, error) {
	var b simBody
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&b)
	if err != nil && !errors.Is(err, io.EOF) {
		return b, errBadRequest("invalid JSON body: " + err.Error())
	}
	return b, nil
}

// writeSimResult maps control errors to statuses and otherwise answers v
// (or {} when v is nil).
func writeSimResult(w http.ResponseWriter, v any, err error) {
	var bad errBadRequest
	switch {
	case err == nil:
		if v == nil {
			v = struct{}{}
		}
		writeJSON(w, http.StatusOK, v)
	case errors.As(err, &bad):
		writeJSON(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrTombstone), errors.Is(err, ErrExists):
		writeJSON(w, http.StatusConflict, err.Error())
	default:
		writeJSON(w, http.StatusBadRequest, err.Error())
	}
}

func (s *Server) simRegisterStore(w http.ResponseWriter, r *http.Request) {
	b, err := readSimBody(w, r)
	if err == nil && b.Address == "" {
		err = errBadRequest("body needs \"address\"")
	}
	if err != nil {
		writeSimResult(w, nil, err)
		return
	}
	writeSimResult(w, map[string]uint64{"id": s.RegisterStore(b.Address)}, nil)
}

func (s *Server) simGetStore(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		writeSimResult(w, nil, errBadRequest("invalid store id"))
		return
	}
	snap, ok := s.Store(id)
	if !ok {
		writeSimResult(w, nil, fmt.Errorf("store %d: %w", id, ErrNotFound))
		return
	}
	writeSimResult(w, snap, nil)
}

func (s *Server) simStoreOp(op func(id uint64, b simBody) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			writeSimResult(w, nil, errBadRequest("invalid store id"))
			return
		}
		b, err := readSimBody(w, r)
		if err != nil {
			writeSimResult(w, nil, err)
			return
		}
		writeSimResult(w, nil, op(id, b))
	}
}

func (s *Server) simAddMember(w http.ResponseWriter, r *http.Request) {
	b, err := readSimBody(w, r)
	if err != nil {
		writeSimResult(w, nil, err)
		return
	}
	id, err := s.AddMember(b.Name)
	writeSimResult(w, map[string]uint64{"member_id": id}, err)
}

func (s *Server) simRebuild(w http.ResponseWriter, r *http.Request) {
	b, err := readSimBody(w, r)
	if err == nil && b.ClusterID == 0 {
		err = errBadRequest("body needs \"cluster_id\"")
	}
	if err == nil {
		err = s.Rebuild(RebuildOptions{ClusterID: b.ClusterID, Members: b.Members, NextStoreID: b.NextStoreID})
	}
	writeSimResult(w, nil, err)
}

func (s *Server) simToggle(set func(bool)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := readSimBody(w, r)
		if err == nil && b.Enabled == nil {
			err = errBadRequest("body needs \"enabled\"")
		}
		if err != nil {
			writeSimResult(w, nil, err)
			return
		}
		set(*b.Enabled)
		writeSimResult(w, nil, nil)
	}
}
