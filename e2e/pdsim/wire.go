package pdsim

import (
	"fmt"
	"time"
)

// The JSON PD renders, written from pd-api.md and PD's response types.
// Fields of metapb (store, member) carry `omitempty` because PD marshals the
// generated protobuf structs with encoding/json: a store in state Up (0) has
// no "state" key at all. PD's own response structs (status, store lists,
// health) do not omit zeros.

type storesJSON struct {
	Count  int             `json:"count"`
	Stores []storeInfoJSON `json:"stores"`
}

type storeInfoJSON struct {
	Store  metaStoreJSON   `json:"store"`
	Status storeStatusJSON `json:"status"`
}

// metaStoreJSON is metapb.Store (in its field order) plus PD's state_name.
type metaStoreJSON struct {
	ID                  uint64 `json:"id,omitempty"`
	Address             string `json:"address,omitempty"`
	State               int32  `json:"state,omitempty"`
	Version             string `json:"version,omitempty"`
	StatusAddress       string `json:"status_address,omitempty"`
	StartTimestamp      int64  `json:"start_timestamp,omitempty"`
	LastHeartbeat       int64  `json:"last_heartbeat,omitempty"`
	PhysicallyDestroyed bool   `json:"physically_destroyed,omitempty"`
	NodeState           int32  `json:"node_state,omitempty"`
	StateName           string `json:"state_name"`
}

type storeStatusJSON struct {
	Capacity        string     `json:"capacity"`
	Available       string     `json:"available"`
	UsedSize        string     `json:"used_size"`
	LeaderCount     int        `json:"leader_count"`
	LeaderWeight    float64    `json:"leader_weight"`
	RegionCount     int        `json:"region_count"`
	RegionWeight    float64    `json:"region_weight"`
	StartTS         *time.Time `json:"start_ts,omitempty"`
	LastHeartbeatTS *time.Time `json:"last_heartbeat_ts,omitempty"`
}

type membersJSON struct {
	Header     headerJSON   `json:"header"`
	Members    []memberJSON `json:"members,omitempty"`
	Leader     *memberJSON  `json:"leader,omitempty"`
	EtcdLeader *memberJSON  `json:"etcd_leader,omitempty"`
}

type headerJSON struct {
	ClusterID uint64 `json:"cluster_id,omitempty"`
}

// memberJSON is pdpb.Member.
type memberJSON struct {
	Name          string   `json:"name,omitempty"`
	MemberID      uint64   `json:"member_id,omitempty"`
	PeerURLs      []string `json:"peer_urls,omitempty"`
	ClientURLs    []string `json:"client_urls,omitempty"`
	BinaryVersion string   `json:"binary_version,omitempty"`
}

type healthJSON struct {
	Name       string   `json:"name"`
	MemberID   uint64   `json:"member_id"`
	ClientURLs []string `json:"client_urls"`
	Health     bool     `json:"health"`
}

const pdVersion = "v8.5.0"

func (s *Server) storeJSONLocked(st *store, now time.Time) storeInfoJSON {
	snap := s.snapshotLocked(st, now)
	used := min(int64(storeBaseUsed)+int64(snap.RegionCount)*regionBytes, storeCapacity)
	out := storeInfoJSON{
		Store: metaStoreJSON{
			ID:                  snap.ID,
			Address:             snap.Address,
			State:               st.state,
			Version:             snap.Version,
			StatusAddress:       snap.StatusAddress,
			StartTimestamp:      st.startedAt.Unix(),
			PhysicallyDestroyed: st.destroyed,
			NodeState:           st.nodeState,
			StateName:           snap.StateName,
		},
		Status: storeStatusJSON{
			Capacity:     byteSize(storeCapacity),
			Available:    byteSize(storeCapacity - used),
			UsedSize:     byteSize(used),
			LeaderCount:  snap.LeaderCount,
			LeaderWeight: 1,
			RegionCount:  snap.RegionCount,
			RegionWeight: 1,
		},
	}
	if !snap.LastHeartbeat.IsZero() {
		hb := snap.LastHeartbeat.UTC()
		out.Store.LastHeartbeat = hb.UnixNano()
		out.Status.LastHeartbeatTS = &hb
		start := st.startedAt.UTC()
		out.Status.StartTS = &start
	}
	return out
}

func (s *Server) memberJSONLocked(m member) memberJSON {
	return memberJSON{
		Name:          m.name,
		MemberID:      m.id,
		PeerURLs:      m.peerURLs(),
		ClientURLs:    m.clientURLs(),
		BinaryVersion: pdVersion,
	}
}

func (s *Server) membersJSONLocked() membersJSON {
	out := membersJSON{Header: headerJSON{ClusterID: s.opts.ClusterID}}
	for _, m := range s.members {
		mj := s.memberJSONLocked(m)
		out.Members = append(out.Members, mj)
		if m.name == s.leader {
			leader, etcdLeader := mj, mj
			out.Leader, out.EtcdLeader = &leader, &etcdLeader
		}
	}
	return out
}

// byteSize renders bytes as PD's typeutil.ByteSize does (go-units
// BytesSize: binary units, four significant digits), e.g. "1.7TiB".
func byteSize(b int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	v := float64(b)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.4g%s", v, units[i])
}
