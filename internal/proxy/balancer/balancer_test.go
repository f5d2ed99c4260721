package balancer

import (
	"fmt"
	"math"
	"testing"

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
	for _, p := range []config.LBPolicy{config.LBRoundRobin, config.LBLeastRequest} {
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
	for _, p := range []config.LBPolicy{config.LBRoundRobin, config.LBLeastRequest} {
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
	b := New(config.LBRoundRobin, eps(1_000_000, 1, 999_999))
	tb := b.(*RoundRobin).table.Load()
	if len(tb.schedule) > maxSchedule+3 {
		t.Errorf("schedule length %d, want at most %d", len(tb.schedule), maxSchedule+3)
	}
}

func BenchmarkPick(b *testing.B) {
	for _, p := range []struct {
		name   string
		policy config.LBPolicy
	}{{"rr", config.LBRoundRobin}, {"lr", config.LBLeastRequest}} {
		for _, weighted := range []bool{false, true} {
			name := p.name + "/100_endpoints"
			ws := make([]uint32, 100)
			for i := range ws {
				ws[i] = 1
				if weighted {
					ws[i] = uint32(i%5 + 1)
				}
			}
			if weighted {
				name += "_weighted"
			}
			b.Run(name+"/parallel", func(b *testing.B) {
				bal := New(p.policy, eps(ws...))
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						bal.Pick().Done()
					}
				})
			})
			b.Run(name, func(b *testing.B) {
				bal := New(p.policy, eps(ws...))
				b.ReportAllocs()
				for b.Loop() {
					bal.Pick().Done()
				}
			})
		}
	}
}
