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
	DeployPath          string `json:"deploy_path,omitempty"`
	LastHeartbeat       int64  `json:"last_heartbeat,omitempty"`
	PhysicallyDestroyed bool   `json:"physically_destroyed,omitempty"`
	NodeState           int32  `json:"node_state,omitempty"`
	StateName           string `json:"state_name"`
}

// storeStatusJSON is PD's StoreStatus; the counters TiKV has not reported
// (learners, pending peers, snapshots, …) are omitted as PD omits zeros.
type storeStatusJSON struct {
	Capacity        string     `json:"capacity"`
	Available       string     `json:"available"`
	UsedSize        string     `json:"used_size"`
	LeaderCount     int        `json:"leader_count"`
	LeaderWeight    float64    `json:"leader_weight"`
	LeaderScore     float64    `json:"leader_score"`
	LeaderSize      int64      `json:"leader_size"`
	RegionCount     int        `json:"region_count"`
	RegionWeight    float64    `json:"region_weight"`
	RegionScore     float64    `json:"region_score"`
	RegionSize      int64      `json:"region_size"`
	StartTS         *time.Time `json:"start_ts,omitempty"`
	LastHeartbeatTS *time.Time `json:"last_heartbeat_ts,omitempty"`
	Uptime          string     `json:"uptime,omitempty"`
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
	DeployPath    string   `json:"deploy_path,omitempty"`
	BinaryVersion string   `json:"binary_version,omitempty"`
	GitHash       string   `json:"git_hash,omitempty"`
}

// clusterJSON is metapb.Cluster.
type clusterJSON struct {
	ID           uint64 `json:"id,omitempty"`
	MaxPeerCount int    `json:"max_peer_count,omitempty"`
}

type versionJSON struct {
	Version   string `json:"version"`
	BuildTime string `json:"build_time"`
	Hash      string `json:"hash"`
	Branch    string `json:"branch"`
}

// replicationJSON is PD's replication config; PD renders its booleans as
// strings here.
type replicationJSON struct {
	MaxReplicas               int    `json:"max-replicas"`
	LocationLabels            string `json:"location-labels"`
	StrictlyMatchLabel        string `json:"strictly-match-label"`
	EnablePlacementRules      string `json:"enable-placement-rules"`
	EnablePlacementRulesCache string `json:"enable-placement-rules-cache"`
	IsolationLevel            string `json:"isolation-level"`
}

// inputErrorJSON is the body PD answers when a path parameter does not parse.
type inputErrorJSON struct {
	Code string   `json:"code"`
	Msg  string   `json:"msg"`
	Data struct{} `json:"data"`
}

type healthJSON struct {
	Name       string   `json:"name"`
	MemberID   uint64   `json:"member_id"`
	ClientURLs []string `json:"client_urls"`
	Health     bool     `json:"health"`
}

const (
	pdVersion = "v26.3.4"
	// pdGitHash stands for the commit a PD binary was built from.
	pdGitHash    = "0000000000000000000000000000000000000000"
	pdDeployPath = "/usr/local/bin"
)

func (s *Server) storeJSONLocked(st *store, now time.Time) storeInfoJSON {
	snap := s.snapshotLocked(st, now)
	used := min(int64(storeBaseUsed)+int64(snap.RegionCount)*regionBytes, storeCapacity)
	start := st.startedAt.Truncate(time.Second).UTC()
	out := storeInfoJSON{
		Store: metaStoreJSON{
			ID:                  snap.ID,
			Address:             snap.Address,
			State:               st.state,
			Version:             snap.Version,
			StatusAddress:       snap.StatusAddress,
			StartTimestamp:      start.Unix(),
			DeployPath:          deployPath,
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
			// PD's default leader score is the leader count; its region
			// score weighs size against free space, approximated here by
			// size.
			LeaderScore:  float64(snap.LeaderCount),
			LeaderSize:   int64(snap.LeaderCount) * regionBytes >> 20,
			RegionCount:  snap.RegionCount,
			RegionWeight: 1,
			RegionScore:  float64(int64(snap.RegionCount)*regionBytes>>20) * 1.25,
			RegionSize:   int64(snap.RegionCount) * regionBytes >> 20,
			StartTS:      &start,
		},
	}
	if !snap.LastHeartbeat.IsZero() {
		hb := snap.LastHeartbeat.UTC()
		out.Store.LastHeartbeat = hb.UnixNano()
		out.Status.LastHeartbeatTS = &hb
		if up := hb.Sub(start); up > 0 {
			out.Status.Uptime = up.String()
		}
	}
	return out
}

func (s *Server) memberJSONLocked(m member) memberJSON {
	return memberJSON{
		Name:          m.name,
		MemberID:      m.id,
		PeerURLs:      m.peerURLs(),
		ClientURLs:    m.clientURLs(),
		DeployPath:    pdDeployPath,
		BinaryVersion: pdVersion,
		GitHash:       pdGitHash,
	}
}

func (s *Server) membersJSONLocked() membersJSON {
	out := membersJSON{Header: headerJSON{ClusterID: s.clusterID}}
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
