package pdsim

import "fmt"

// member is one simulated PD member.
type member struct {
	name string
	id   uint64
	// host is what its URLs advertise; the name when unset.
	host string
}

func (m member) advertised() string {
	if m.host != "" {
		return m.host
	}
	return m.name
}

func (m member) peerURLs() []string   { return []string{"http://" + m.advertised() + ":2380"} }
func (m member) clientURLs() []string { return []string{"http://" + m.advertised() + ":2379"} }

// AddMember adds a PD member and returns its id. The first member of an
// empty cluster becomes leader.
func (s *Server) AddMember(name string) (uint64, error) {
	return s.AddMemberAt(name, "")
}

// AddMemberAt adds a PD member whose URLs advertise host, as TiDB Operator
// configures them (v1 <pod>.<cluster>-pd-peer.<ns>.svc, v2
// <pod>.<subdomain>.<ns>); an empty host advertises the name.
func (s *Server) AddMemberAt(name, host string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addMemberLocked(name, host)
}

func (s *Server) addMemberLocked(name, host string) (uint64, error) {
	if name == "" {
		return 0, fmt.Errorf("member name is empty")
	}
	if _, ok := s.memberLocked(name); ok {
		return 0, fmt.Errorf("member %q: %w", name, ErrExists)
	}
	m := member{name: name, id: s.nextMember, host: host}
	s.nextMember++
	s.members = append(s.members, m)
	if s.leader == "" {
		s.leader = name
	}
	return m.id, nil
}

// RemoveMember removes a PD member. Removing the leader hands leadership
// to the oldest remaining member, as an election would.
func (s *Server) RemoveMember(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeMemberLocked(name)
}

func (s *Server) removeMemberLocked(name string) error {
	i, ok := s.memberLocked(name)
	if !ok {
		return fmt.Errorf("member %q: %w", name, ErrNotFound)
	}
	s.members = append(s.members[:i], s.members[i+1:]...)
	if s.leader == name {
		s.leader = ""
		if len(s.members) > 0 {
			s.leader = s.members[0].name
		}
	}
	return nil
}

func (s *Server) memberLocked(name string) (int, bool) {
	for i, m := range s.members {
		if m.name == name {
			return i, true
		}
	}
	return -1, false
}
