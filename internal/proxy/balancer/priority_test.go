package balancer

import (
	"fmt"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"verge.dev/verge/internal/proxy/config"
)

// level describes a priority level for the load tests: endpoints and how
// many of them are ejected.
type levelSpec struct{ endpoints, ejected int }

func buildLevels(specs ...levelSpec) (*Priority, []config.Endpoint) {
	var in []config.Endpoint
	var ejected []string
	for p, s := range specs {
		for i := range s.endpoints {
			addr := fmt.Sprintf("10.%d.0.%d:80", p, i+1)
			in = append(in, config.Endpoint{Address: addr, Weight: 1, Priority: uint32(p)})
			if i < s.ejected {
				ejected = append(ejected, addr)
			}
		}
	}
	b := New(config.LBRoundRobin, in).(*Priority)
	for _, e := range b.Endpoints() {
		for _, a := range ejected {
			if e.Address == a {
				e.SetEjected(true)
			}
		}
	}
	return b, in
}

func TestPriorityLoads(t *testing.T) {
	tests := []struct {
		name   string
		levels []levelSpec
		want   []uint32
	}{
		{"all healthy", []levelSpec{{10, 0}, {10, 0}}, []uint32{100, 0}},
		// 80% healthy × 1.4 = 112%: still everything.
		{"overprovisioned", []levelSpec{{10, 2}, {10, 0}}, []uint32{100, 0}},
		{"half healthy spills 30%", []levelSpec{{10, 5}, {10, 0}}, []uint32{70, 30}},
		{"level 0 gone", []levelSpec{{10, 10}, {10, 0}}, []uint32{0, 100}},
		// 28% + 28% normalised to 100.
		{"both degraded", []levelSpec{{10, 8}, {10, 8}}, []uint32{50, 50}},
		{"three levels", []levelSpec{{10, 5}, {10, 9}, {10, 0}}, []uint32{70, 14, 16}},
		// 46% each; the third level takes what is left.
		{"three thirds", []levelSpec{{3, 2}, {3, 2}, {3, 2}}, []uint32{46, 46, 8}},
		// 14 + 14 + 20 = 48: 29, 29, 41, and the rounding remainder goes to
		// the first level.
		{"rounding remainder", []levelSpec{{10, 9}, {10, 9}, {7, 6}}, []uint32{30, 29, 41}},
		{"everything ejected: level 0 panics", []levelSpec{{2, 2}, {2, 2}}, []uint32{100, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := buildLevels(tt.levels...)
			var got []uint32
			for _, l := range b.Loads() {
				got = append(got, l.Percent)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("loads (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPriorityPicksFollowLoads(t *testing.T) {
	const n = 20000
	b, _ := buildLevels(levelSpec{10, 5}, levelSpec{4, 0}, levelSpec{4, 0})
	perLevel := make([]int, 3)
	for range n {
		e := b.Pick()
		if e.Ejected() {
			t.Fatalf("picked ejected %s", e.Address)
		}
		var p, i int
		fmt.Sscanf(e.Address, "10.%d.0.%d:80", &p, &i)
		perLevel[p]++
		e.Done()
	}
	for p, want := range []float64{0.70, 0.30, 0} {
		if got := float64(perLevel[p]) / n; math.Abs(got-want) > 0.03 {
			t.Errorf("level %d got %.1f%% of picks, want %.0f%%", p, got*100, want*100)
		}
	}
}

func TestPriorityHash(t *testing.T) {
	for _, p := range hashPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			in := prioEps([]uint32{0, 0, 0, 0, 1, 1, 1, 1})
			b := New(p, in).(*Priority)
			before := owners(b, 2000)
			for i, a := range before {
				if a >= "10.0.0.5:80" {
					t.Fatalf("key %d went to level 1 (%s) with level 0 healthy", i, a)
				}
			}
			// Eject half of level 0: 70% stays, keys that stay keep their
			// endpoint, the rest go to level 1.
			all := b.Endpoints()
			all[0].SetEjected(true)
			all[1].SetEjected(true)
			after := owners(b, 2000)
			stayed, spilled := 0, 0
			for i := range before {
				switch {
				case after[i] == before[i]:
					stayed++
				case after[i] >= "10.0.0.5:80":
					spilled++
				}
				if after[i] == all[0].Address || after[i] == all[1].Address {
					t.Fatalf("key %d went to an ejected endpoint", i)
				}
			}
			if spilled < 400 || spilled > 800 {
				t.Errorf("%d of 2000 keys spilled to level 1, want about 600 (30%%)", spilled)
			}
			if diff := cmp.Diff(after, owners(b, 2000)); diff != "" {
				t.Errorf("keys moved between two passes (-first +second):\n%s", diff)
			}
			t.Logf("stayed %d, spilled %d", stayed, spilled)
		})
	}
}

func TestPriorityUpdateKeepsEndpointsAcrossLevels(t *testing.T) {
	b := New(config.LBLeastRequest, prioEps([]uint32{0, 0, 1})).(*Priority)
	moving := b.Endpoints()[1]
	moving.SetEjected(true)
	held := b.Pick()
	b.Update(prioEps([]uint32{0, 2, 1}))
	if b.Endpoints()[1] != moving || !moving.Ejected() {
		t.Fatal("endpoint that changed priority was replaced or lost its ejection")
	}
	want := []LevelLoad{
		{Priority: 0, Endpoints: 1, Ejected: 0, Percent: 100},
		{Priority: 1, Endpoints: 1, Ejected: 0},
		{Priority: 2, Endpoints: 1, Ejected: 1},
	}
	if diff := cmp.Diff(want, b.Loads()); diff != "" {
		t.Errorf("loads (-want +got):\n%s", diff)
	}
	moving.SetEjected(false)
	want[2].Ejected = 0
	if diff := cmp.Diff(want, b.Loads()); diff != "" {
		t.Errorf("loads after return (-want +got):\n%s", diff)
	}
	held.Done()
	// Back to one level.
	b.Update(eps(1, 1))
	if got := len(b.Loads()); got != 1 {
		t.Errorf("%d levels after an update to one priority, want 1", got)
	}
}

func TestNewIsHashPicker(t *testing.T) {
	for _, p := range allPolicies {
		b := New(p, prioEps([]uint32{0, 1}))
		hp, ok := b.(HashPicker)
		if !ok {
			t.Fatalf("%s: New's balancer is not a HashPicker", policyName(p))
		}
		if e := hp.PickHash(7); e == nil || e.Address != "10.0.0.1:80" {
			t.Errorf("%s: PickHash = %v, want the level-0 endpoint", policyName(p), e)
		} else {
			e.Done()
		}
	}
}
