package balancer

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"verge.dev/verge/internal/proxy/config"
)

// newPrioClock returns a Priority of policy on a fake clock.
func newPrioClock(clock *fakeClock, policy config.LBPolicy, in []config.Endpoint) *Priority {
	p := &Priority{policy: policy}
	p.own.now = clock.now
	p.Update(in)
	return p
}

func percents(b *Priority) []uint32 {
	var out []uint32
	for _, l := range b.Loads() {
		out = append(out, l.Percent)
	}
	return out
}

// TestOverloadSpills: an overloaded endpoint leaves its level's share like
// an ejected one, for the hold only; marks add up with ejections without
// counting an endpoint twice.
func TestOverloadSpills(t *testing.T) {
	clock := &fakeClock{ns: 1}
	// Level 0: two endpoints, level 1: two.
	b := newPrioClock(clock, config.LBRoundRobin, prioEps([]uint32{0, 0, 1, 1}))
	all := b.Endpoints()
	steps := []struct {
		name string
		do   func()
		want []uint32
	}{
		{"all available", func() {}, []uint32{100, 0}},
		{"one of level 0 overloaded", func() { all[0].MarkOverloaded(time.Second) }, []uint32{70, 30}},
		{"a second mark only extends", func() { clock.advance(500 * time.Millisecond); all[0].MarkOverloaded(time.Second) }, []uint32{70, 30}},
		{"the same endpoint also ejected counts once", func() { all[0].SetEjected(true) }, []uint32{70, 30}},
		{"both of level 0 out", func() { all[1].MarkOverloaded(time.Second) }, []uint32{0, 100}},
		{"first mark's original deadline passed", func() { clock.advance(600 * time.Millisecond) }, []uint32{0, 100}},
		{"all[1]'s mark lapsed", func() { clock.advance(500 * time.Millisecond) }, []uint32{70, 30}},
		{"all[0]'s mark lapsed, still ejected", func() {}, []uint32{70, 30}},
		{"back in service", func() { all[0].SetEjected(false) }, []uint32{100, 0}},
	}
	for _, s := range steps {
		s.do()
		if diff := cmp.Diff(s.want, percents(b)); diff != "" {
			t.Fatalf("%s: loads (-want +got):\n%s", s.name, diff)
		}
	}
	if all[0].Overloaded() || all[1].Overloaded() {
		t.Errorf("marks still reported after they lapsed")
	}
	st := b.state.Load()
	for _, l := range st.levels {
		if o, out := l.h.overloaded.Load(), l.h.out.Load(); o != 0 || out != 0 {
			t.Errorf("level %d counts %d overloaded, %d out after everything returned", l.priority, o, out)
		}
	}
}

// TestOverloadPicks: within a level the overloaded endpoint gets no pick
// while its level has another, for every policy; with a single level the
// mark changes nothing.
func TestOverloadPicks(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			clock := &fakeClock{ns: 1}
			b := newPrioClock(clock, p, prioEps([]uint32{0, 0, 0, 0, 1}))
			hot := b.Endpoints()[0]
			hot.MarkOverloaded(time.Minute)
			for i := range 2000 {
				var e *Endpoint
				if i%2 == 0 {
					e = b.Pick()
				} else {
					e = b.PickHash(uint64(i) * 0x9e3779b97f4a7c15)
				}
				if e == hot {
					t.Fatalf("pick %d: the overloaded endpoint", i)
				}
				e.Done()
			}

			single := newPrioClock(clock, p, eps(1, 1))
			single.Endpoints()[0].MarkOverloaded(time.Minute)
			seen := map[string]bool{}
			for i := range 2000 {
				e := single.PickHash(uint64(i) * 0x9e3779b97f4a7c15)
				seen[e.Address] = true
				e.Done()
			}
			if len(seen) != 2 {
				t.Errorf("single level: picks reached %v, want both endpoints (marks ignored)", seen)
			}
		})
	}
}

// TestOverloadAcrossUpdates: a mark follows its endpoint into another
// level and into a balancer that gains levels, and lapses there.
func TestOverloadAcrossUpdates(t *testing.T) {
	clock := &fakeClock{ns: 1}
	b := newPrioClock(clock, config.LBLeastRequest, prioEps([]uint32{0, 0}))
	e := b.Endpoints()[0]
	e.MarkOverloaded(time.Second)
	b.Update(prioEps([]uint32{0, 1}))
	if diff := cmp.Diff([]uint32{0, 100}, percents(b)); diff != "" {
		t.Fatalf("loads with the marked endpoint alone at level 0 (-want +got):\n%s", diff)
	}
	want := []LevelLoad{{Priority: 0, Endpoints: 1, Overloaded: 1}, {Priority: 1, Endpoints: 1, Percent: 100}}
	if diff := cmp.Diff(want, b.Loads()); diff != "" {
		t.Errorf("Loads (-want +got):\n%s", diff)
	}
	clock.advance(time.Second)
	if diff := cmp.Diff([]uint32{100, 0}, percents(b)); diff != "" {
		t.Errorf("loads after the hold (-want +got):\n%s", diff)
	}
}
