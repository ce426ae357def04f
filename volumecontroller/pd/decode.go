package pd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrInvalidResponse marks a response PD answered with a success status but
// whose body is not what the API documents. Callers must treat it like PD
// being unreachable: the state is unknown.
var ErrInvalidResponse = errors.New("invalid response from pd")

// The wire types mirror pd-api.md. Only the fields the controller reads are
// declared; encoding/json ignores the rest. Omitted numbers decode as 0,
// which is exactly PD's meaning for `state` and `node_state` (omitempty).

type wireStoreList struct {
	Count  *int            `json:"count"`
	Stores []wireStoreInfo `json:"stores"`
}

type wireStoreInfo struct {
	Store  *wireStore  `json:"store"`
	Status *wireStatus `json:"status"`
}

type wireStore struct {
	ID            uint64     `json:"id"`
	Address       string     `json:"address"`
	StatusAddress string     `json:"status_address"`
	Version       string     `json:"version"`
	State         StoreState `json:"state"`
	NodeState     NodeState  `json:"node_state"`
	StateName     string     `json:"state_name"`
	LastHeartbeat int64      `json:"last_heartbeat"`
	// StartTimestamp is when the TiKV process started, in Unix seconds.
	StartTimestamp int64 `json:"start_timestamp"`
}

type wireStatus struct {
	RegionCount     int        `json:"region_count"`
	LastHeartbeatTS *time.Time `json:"last_heartbeat_ts"`
}

type wireMember struct {
	Name       string   `json:"name"`
	MemberID   uint64   `json:"member_id"`
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
}

type wireMembers struct {
	Header *struct {
		ClusterID uint64 `json:"cluster_id"`
	} `json:"header"`
	Members []wireMember `json:"members"`
	Leader  *wireMember  `json:"leader"`
}

type wireCluster struct {
	ID *uint64 `json:"id"`
}

type wireHealth struct {
	Name       string   `json:"name"`
	MemberID   uint64   `json:"member_id"`
	ClientURLs []string `json:"client_urls"`
	Health     bool     `json:"health"`
}

// decodeStores decodes `GET /stores` and `GET /stores/check` answers. The
// count PD sends must match the list: a mismatch means a body we do not
// understand, not fewer stores.
func decodeStores(body []byte) ([]StoreInfo, error) {
	var list wireStoreList
	if err := unmarshalShape(body, '{', &list); err != nil {
		return nil, err
	}
	if list.Count == nil {
		return nil, invalid("store list has no count")
	}
	if *list.Count != len(list.Stores) {
		return nil, invalid("store list count %d but %d stores", *list.Count, len(list.Stores))
	}
	stores := make([]StoreInfo, 0, len(list.Stores))
	for i, w := range list.Stores {
		s, err := w.toStoreInfo()
		if err != nil {
			return nil, fmt.Errorf("store %d of list: %w", i, err)
		}
		stores = append(stores, s)
	}
	return stores, nil
}

// decodeStore decodes `GET /store/{id}` and checks PD answered for that id.
func decodeStore(body []byte, id uint64) (StoreInfo, error) {
	var w wireStoreInfo
	if err := unmarshalShape(body, '{', &w); err != nil {
		return StoreInfo{}, err
	}
	s, err := w.toStoreInfo()
	if err != nil {
		return StoreInfo{}, err
	}
	if s.ID != id {
		return StoreInfo{}, invalid("asked for store %d, got store %d", id, s.ID)
	}
	return s, nil
}

func (w wireStoreInfo) toStoreInfo() (StoreInfo, error) {
	if w.Store == nil {
		return StoreInfo{}, invalid("store entry without store object")
	}
	st := w.Store
	if st.ID == 0 {
		return StoreInfo{}, invalid("store without id")
	}
	if st.LastHeartbeat < 0 {
		return StoreInfo{}, invalid("store %d has negative last_heartbeat", st.ID)
	}
	s := StoreInfo{
		ID:            st.ID,
		Address:       st.Address,
		StatusAddress: st.StatusAddress,
		Version:       st.Version,
		State:         st.State,
		NodeState:     st.NodeState,
		StateName:     st.StateName,
	}
	if st.LastHeartbeat > 0 {
		s.LastHeartbeat = time.Unix(0, st.LastHeartbeat).UTC()
	}
	if st.StartTimestamp > 0 {
		s.StartTime = time.Unix(st.StartTimestamp, 0).UTC()
	}
	if w.Status != nil {
		if w.Status.RegionCount < 0 {
			return StoreInfo{}, invalid("store %d has negative region_count", st.ID)
		}
		s.RegionCount = w.Status.RegionCount
		// Stores that never reported the nanosecond field still carry the
		// status timestamp.
		if s.LastHeartbeat.IsZero() && w.Status.LastHeartbeatTS != nil {
			s.LastHeartbeat = w.Status.LastHeartbeatTS.UTC()
		}
	}
	return s, nil
}

// decodeMembers decodes `GET /members`. PD always lists at least itself, so
// an empty list is a body we do not understand.
func decodeMembers(body []byte) (Members, error) {
	var w wireMembers
	if err := unmarshalShape(body, '{', &w); err != nil {
		return Members{}, err
	}
	if len(w.Members) == 0 {
		return Members{}, invalid("member list is empty")
	}
	// PD always sends the cluster ID; without it the answer could not be
	// told apart from another cluster's, and a zero would match owner
	// records that carry none.
	if w.Header == nil || w.Header.ClusterID == 0 {
		return Members{}, invalid("member list without header.cluster_id")
	}
	m := Members{ClusterID: w.Header.ClusterID}
	for _, wm := range w.Members {
		if wm.MemberID == 0 {
			return Members{}, invalid("member %q without member_id", wm.Name)
		}
		m.Members = append(m.Members, Member(wm))
	}
	if w.Leader != nil {
		if w.Leader.MemberID == 0 {
			return Members{}, invalid("leader without member_id")
		}
		leader := Member(*w.Leader)
		m.Leader = &leader
	}
	return m, nil
}

// decodeClusterID decodes `GET /cluster` ({"id": …, "max_peer_count": …}).
// The ID is decoded straight into a uint64: IDs exceed 2^53, where a
// float64 would silently round them to another cluster's.
func decodeClusterID(body []byte) (uint64, error) {
	var w wireCluster
	if err := unmarshalShape(body, '{', &w); err != nil {
		return 0, err
	}
	if w.ID == nil || *w.ID == 0 {
		return 0, invalid("cluster without id")
	}
	return *w.ID, nil
}

// decodeHealth decodes `GET /health`.
func decodeHealth(body []byte) ([]MemberHealth, error) {
	var w []wireHealth
	if err := unmarshalShape(body, '[', &w); err != nil {
		return nil, err
	}
	out := make([]MemberHealth, 0, len(w))
	for _, h := range w {
		if h.MemberID == 0 {
			return nil, invalid("health entry %q without member_id", h.Name)
		}
		out = append(out, MemberHealth(h))
	}
	return out, nil
}

// unmarshalShape decodes body into v after checking that the top-level value
// is an object ('{') or array ('['). encoding/json happily decodes `null`
// into a struct as its zero value, which would be a silent empty success.
func unmarshalShape(body []byte, open byte, v any) error {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return invalid("empty body")
	}
	if trimmed[0] != open {
		return invalid("expected a JSON %s, body starts with %q", shapeName(open), firstBytes(trimmed))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidResponse, err)
	}
	return nil
}

func shapeName(open byte) string {
	if open == '[' {
		return "array"
	}
	return "object"
}

func firstBytes(b []byte) string {
	const n = 32
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidResponse, fmt.Sprintf(format, args...))
}
