package model

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// history is what happened, step by step, so a failure can be read (and
// replayed from its seed).
type history struct {
	mu    sync.Mutex
	steps []*stepRecord
}

type stepRecord struct {
	n      int
	at     time.Time
	actor  string
	lines  []string
	events []string // from our recorders, possibly from a background wipe
}

func (h *history) begin(n int, at time.Time, actor string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.steps = append(h.steps, &stepRecord{n: n, at: at, actor: actor})
}

func (h *history) add(line string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.steps) == 0 {
		h.steps = append(h.steps, &stepRecord{actor: "setup"})
	}
	s := h.steps[len(h.steps)-1]
	s.lines = append(s.lines, line)
}

func (h *history) event(line string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.steps) == 0 {
		h.steps = append(h.steps, &stepRecord{actor: "setup"})
	}
	s := h.steps[len(h.steps)-1]
	s.events = append(s.events, line)
}

func (s *stepRecord) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "step %d  %s  %s\n", s.n, s.at.Format("15:04:05"), s.actor)
	for _, l := range s.lines {
		b.WriteString("    " + l + "\n")
	}
	// Events of a background wipe interleave with the pass that started
	// it; sorted, a replay prints the same text.
	ev := append([]string(nil), s.events...)
	sort.Strings(ev)
	for _, l := range ev {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

// render is the shortened history of a failure: the last `last` steps and
// every earlier one that mentions an object the violation is about.
func (h *history) render(objects []string, last int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	from := max(0, len(h.steps)-last)
	skipped := 0
	for i, s := range h.steps {
		t := s.text()
		if i < from && !mentions(t, objects) {
			skipped++
			continue
		}
		if skipped > 0 {
			fmt.Fprintf(&b, "  … %d steps\n", skipped)
			skipped = 0
		}
		b.WriteString(t)
	}
	return b.String()
}

func mentions(text string, objects []string) bool {
	for _, o := range objects {
		if o != "" && strings.Contains(text, o) {
			return true
		}
	}
	return false
}

// Stats are counted over every history run.
type Stats struct {
	Histories int
	Steps     int
	counts    map[string]int
}

func (s *Stats) count(what string) {
	if s.counts == nil {
		s.counts = map[string]int{}
	}
	s.counts[what]++
}

// Count returns one counter.
func (s *Stats) Count(what string) int { return s.counts[what] }

func (s *Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "histories × steps: %d histories, %d steps in all\n", s.Histories, s.Steps)
	keys := make([]string, 0, len(s.counts))
	for k := range s.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-80s %d\n", k, s.counts[k])
	}
	return b.String()
}
