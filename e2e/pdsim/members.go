package pdsim

import "fmt"

// member is one simulated PD member.
type member struct {
	name string
	id   uint64
}

func (m member) peerURLs() []string   { return []string{"http://" + m.name + ":2380"} }
func (m member) clientURLs() []string { return []string{"http://" + m.name + ":2379"} }

// AddMember adds a PD member and returns its id. The first member of an
// empty cluster becomes leader.
func (s *Server) AddMember(name string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addMemberLocked(name)
}

func (s *Server) addMemberLocked(name string) (uint64, error) {
	if name == "" {
		return 0, fmt.Errorf("member name is empty")
	}
	if _, ok := s.memberLocked(name); ok {
		return 0, fmt.Errorf("member %q: %w", name, ErrExists)
	}
	m := member{name: name, id: s.nextMember}
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
