package balancer

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"verge.dev/verge/internal/proxy/config"
)

func eps(weights ...uint32) []config.Endpoint {
	out := make([]config.Endpoint, len(weights))
	for i, w := range weights {
		out[i] = config.Endpoint{Address: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: w}
	}
	return out
}

func count(b Balancer, n int) map[string]int {
	got := map[string]int{}
	for range n {
		e := b.Pick()
		got[e.Address]++
		e.Done()
	}
	return got
}

func TestRoundRobinDistribution(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
		picks   int
		want    map[string]int
	}{
		{"equal", []uint32{1, 1, 1}, 300, map[string]int{"10.0.0.1:80": 100, "10.0.0.2:80": 100, "10.0.0.3:80": 100}},
		{"zero weight counts as one", []uint32{0, 0}, 10, map[string]int{"10.0.0.1:80": 5, "10.0.0.2:80": 5}},
		{"weighted", []uint32{1, 3}, 400, map[string]int{"10.0.0.1:80": 100, "10.0.0.2:80": 300}},
		{"weighted gcd", []uint32{20, 30, 50}, 1000, map[string]int{"10.0.0.1:80": 200, "10.0.0.2:80": 300, "10.0.0.3:80": 500}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(config.LBRoundRobin, eps(tt.weights...))
			if diff := cmp.Diff(tt.want, count(b, tt.picks)); diff != "" {
				t.Errorf("picks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundRobinSmooth(t *testing.T) {
	// Smooth weighted round robin never sends a run of picks to the heavy
	// endpoint while the light one waits for the whole cycle.
	b := New(config.LBRoundRobin, eps(2, 1))
	var got []string
	for range 6 {
		e := b.Pick()
		got = append(got, e.Address)
		e.Done()
	}
	want := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}

func TestEmpty(t *testing.T) {
	for _, p := range allPolicies {
		if e := New(p, nil).Pick(); e != nil {
			t.Errorf("policy %d: Pick on empty = %v, want nil", p, e.Address)
		}
	}
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	b := New(config.LBLeastRequest, eps(1, 1))
	busy := b.Endpoints()[0]
	// Hold 5 requests on the first endpoint.
	for range 5 {
		busy.inFlight.Add(1)
	}
	got := count(b, 200)
	if got[busy.Address] != 0 {
		t.Errorf("busy endpoint got %d of 200 picks with two endpoints, want 0", got[busy.Address])
	}
}

func TestLeastRequestDistribution(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
	}{
		{"equal", []uint32{1, 1, 1, 1}},
		{"weighted", []uint32{1, 2, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(config.LBLeastRequest, eps(tt.weights...))
			// Keep picks outstanding so load steers choices; with idle
			// endpoints everything ties and sampling alone decides.
			const n = 20000
			held := make([]*Endpoint, 0, n)
			for range n {
				held = append(held, b.Pick())
			}
			got := map[string]int{}
			for _, e := range held {
				got[e.Address]++
				e.Done()
			}
			var sum uint32
			for _, w := range tt.weights {
				sum += w
			}
			for i, w := range tt.weights {
				addr := fmt.Sprintf("10.0.0.%d:80", i+1)
				want := float64(n) * float64(w) / float64(sum)
				if math.Abs(float64(got[addr])-want) > 0.05*n {
					t.Errorf("%s: %d picks, want about %.0f", addr, got[addr], want)
				}
			}
		})
	}
}

func TestUpdateKeepsState(t *testing.T) {
	for _, p := range allPolicies {
		b := New(p, eps(1, 1))
		var held []*Endpoint
		for range 4 {
			held = append(held, b.Pick())
		}
		kept := b.Endpoints()[0]
		before := kept.InFlight()
		b.Update([]config.Endpoint{{Address: "10.0.0.1:80", Weight: 5}, {Address: "10.0.0.9:80"}})
		if b.Endpoints()[0] != kept || kept.InFlight() != before {
			t.Errorf("policy %d: endpoint 10.0.0.1:80 replaced or reset on update, want kept with %d in flight", p, before)
		}
		for _, e := range held {
			e.Done()
		}
		if got := kept.InFlight(); got != 0 {
			t.Errorf("policy %d: in-flight after Done = %d, want 0", p, got)
		}
		got := []string{}
		for _, x := range b.Endpoints() {
			got = append(got, x.Address)
		}
		if diff := cmp.Diff([]string{"10.0.0.1:80", "10.0.0.9:80"}, got); diff != "" {
			t.Errorf("policy %d: endpoints (-want +got):\n%s", p, diff)
		}
	}
}

func TestLargeWeightsBounded(t *testing.T) {
	b := &RoundRobin{}
	b.Update(eps(1_000_000, 1, 999_999))
	tb := b.table.Load()
	if len(tb.schedule) > maxSchedule+3 {
		t.Errorf("schedule length %d, want at most %d", len(tb.schedule), maxSchedule+3)
	}
}

var allPolicies = []config.LBPolicy{config.LBRoundRobin, config.LBLeastRequest, config.LBRingHash, config.LBMaglev, config.LBPeakEWMA}

func policyName(p config.LBPolicy) string {
	switch p {
	case config.LBRoundRobin:
		return "round_robin"
	case config.LBLeastRequest:
		return "least_request"
	case config.LBRingHash:
		return "ring_hash"
	case config.LBMaglev:
		return "maglev"
	case config.LBPeakEWMA:
		return "peak_ewma"
	}
	return fmt.Sprint(int(p))
}

// pickN picks n times, by hash when byHash (hash = i), and returns the
// picks per address.
func pickN(b Balancer, n int, byHash bool) map[string]int {
	got := map[string]int{}
	for i := range n {
		var e *Endpoint
		if byHash {
			e = b.(HashPicker).PickHash(HashString(fmt.Sprint(i)))
		} else {
			e = b.Pick()
		}
		got[e.Address]++
		e.Done()
	}
	return got
}

func TestEjectedSkipped(t *testing.T) {
	for _, p := range allPolicies {
		for _, byHash := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/hash=%v", policyName(p), byHash), func(t *testing.T) {
				b := New(p, eps(1, 2, 1, 3, 1))
				all := b.Endpoints()
				all[1].SetEjected(true)
				all[3].SetEjected(true)
				got := pickN(b, 2000, byHash)
				for _, e := range []*Endpoint{all[1], all[3]} {
					if got[e.Address] != 0 {
						t.Errorf("ejected %s got %d of 2000 picks, want 0", e.Address, got[e.Address])
					}
				}
				for _, e := range []*Endpoint{all[0], all[2], all[4]} {
					if got[e.Address] == 0 {
						t.Errorf("healthy %s got no pick of 2000", e.Address)
					}
				}
				// Back in service: picked again.
				all[1].SetEjected(false)
				all[3].SetEjected(false)
				if got := pickN(b, 2000, byHash); got[all[3].Address] == 0 {
					t.Errorf("%s got no pick after it came back", all[3].Address)
				}
			})
		}
	}
}

func TestAllEjectedPanicMode(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			b := New(p, eps(1, 1, 1))
			for _, e := range b.Endpoints() {
				e.SetEjected(true)
			}
			got := pickN(b, 600, false)
			if len(got) != 3 {
				t.Errorf("picks with every endpoint ejected = %v, want all three used", got)
			}
		})
	}
}

func TestSetEjectedIdempotent(t *testing.T) {
	b := New(config.LBRoundRobin, eps(1, 1, 1, 1))
	e := b.Endpoints()[0]
	for range 3 {
		e.SetEjected(true)
	}
	if !e.Ejected() {
		t.Fatal("Ejected() = false after SetEjected(true)")
	}
	want := []LevelLoad{{Priority: 0, Endpoints: 4, Ejected: 1, Percent: 100}}
	if diff := cmp.Diff(want, b.(*Priority).Loads()); diff != "" {
		t.Errorf("loads (-want +got):\n%s", diff)
	}
	e.SetEjected(false)
	e.SetEjected(false)
	want[0].Ejected = 0
	if diff := cmp.Diff(want, b.(*Priority).Loads()); diff != "" {
		t.Errorf("loads after return (-want +got):\n%s", diff)
	}
}

func TestEjectedEndpointLeavesAndReturns(t *testing.T) {
	b := New(config.LBRoundRobin, eps(1, 1))
	gone := b.Endpoints()[1]
	gone.SetEjected(true)
	b.Update(eps(1))
	// An endpoint no longer in the set no longer counts anywhere.
	gone.SetEjected(false)
	gone.SetEjected(true)
	want := []LevelLoad{{Priority: 0, Endpoints: 1, Ejected: 0, Percent: 100}}
	if diff := cmp.Diff(want, b.(*Priority).Loads()); diff != "" {
		t.Errorf("loads (-want +got):\n%s", diff)
	}
	// Coming back is a new endpoint: fresh state.
	b.Update(eps(1, 1))
	if e := b.Endpoints()[1]; e == gone || e.Ejected() {
		t.Errorf("returning address reused the departed endpoint (same=%v, ejected=%v), want a fresh one", e == gone, e.Ejected())
	}
}

func TestPickAllocs(t *testing.T) {
	ws := make([]uint32, 100)
	for i := range ws {
		ws[i] = uint32(i%5 + 1)
	}
	for _, p := range allPolicies {
		b := New(p, eps(ws...))
		b.Endpoints()[0].SetEjected(true)
		if n := testing.AllocsPerRun(1000, func() { b.Pick().DoneRTT(time.Millisecond) }); n != 0 {
			t.Errorf("%s: Pick allocates %.1f times, want 0", policyName(p), n)
		}
		var h uint64
		if n := testing.AllocsPerRun(1000, func() { h++; b.(HashPicker).PickHash(h).Done() }); n != 0 {
			t.Errorf("%s: PickHash allocates %.1f times, want 0", policyName(p), n)
		}
	}
}

// TestConcurrent runs picks, ends, ejections and updates together under the
// race detector and checks the counters balance.
func TestConcurrent(t *testing.T) {
	for _, p := range allPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			sets := [][]config.Endpoint{eps(1, 2, 3), eps(5, 1), prioEps([]uint32{0, 0, 1, 2}, 1, 1, 2, 2)}
			b := New(p, sets[0])
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := range 2000 {
						var e *Endpoint
						if i%2 == 0 {
							e = b.Pick()
						} else {
							e = b.(HashPicker).PickHash(uint64(i * g))
						}
						if i%3 == 0 {
							e.DoneRTT(time.Duration(i) * time.Microsecond)
						} else {
							e.Done()
						}
					}
				})
			}
			wg.Go(func() {
				for i := range 200 {
					all := b.Endpoints()
					all[i%len(all)].SetEjected(i%4 != 0)
				}
			})
			wg.Go(func() {
				for i := range 50 {
					b.Update(sets[i%len(sets)])
				}
			})
			wg.Wait()
			b.Update(sets[2])
			for _, e := range b.Endpoints() {
				if e.InFlight() != 0 {
					t.Errorf("%s: in flight %d after every request ended, want 0", e.Address, e.InFlight())
				}
			}
		})
	}
}

// prioEps returns endpoints 10.0.0.N:80 with the given priorities and
// weights (1 when weights run out).
func prioEps(prios []uint32, weights ...uint32) []config.Endpoint {
	out := make([]config.Endpoint, len(prios))
	for i, p := range prios {
		w := uint32(1)
		if i < len(weights) {
			w = weights[i]
		}
		out[i] = config.Endpoint{Address: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: w, Priority: p}
	}
	return out
}
