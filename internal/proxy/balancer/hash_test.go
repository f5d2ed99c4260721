package balancer

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"verge.dev/verge/internal/proxy/config"
)

var hashPolicies = []config.LBPolicy{config.LBRingHash, config.LBMaglev}

func TestHashStringStable(t *testing.T) {
	// Proxies in other processes must agree on where a key goes: the hash
	// of a key may never change between builds.
	got := []uint64{HashString(""), HashString("user-42"), HashString("10.1.2.3")}
	want := []uint64{17665956581633026203, 8797103408588478355, 13753848789381085614}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("HashString (-want +got):\n%s", diff)
	}
}

// owners maps keys 0..n-1 to the address each is picked for.
func owners(b Balancer, n int) []string {
	out := make([]string, n)
	for i := range out {
		e := b.(HashPicker).PickHash(HashString(fmt.Sprintf("key-%d", i)))
		out[i] = e.Address
		e.Done()
	}
	return out
}

func TestHashAffinity(t *testing.T) {
	for _, p := range hashPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			b := New(p, eps(1, 1, 1, 1, 1))
			first := owners(b, 1000)
			if diff := cmp.Diff(first, owners(b, 1000)); diff != "" {
				t.Errorf("second pass moved keys (-first +second):\n%s", diff)
			}
			// Another balancer with the same endpoints in another order (as
			// another proxy would build it) agrees.
			rev := eps(1, 1, 1, 1, 1)
			slices.Reverse(rev)
			if diff := cmp.Diff(first, owners(New(p, rev), 1000)); diff != "" {
				t.Errorf("a balancer built from reordered endpoints disagrees (-first +other):\n%s", diff)
			}
		})
	}
}

func TestHashMinimalDisruption(t *testing.T) {
	const n, keys = 10, 10000
	for _, p := range hashPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			all := eps(slices.Repeat([]uint32{1}, n)...)
			b := New(p, all)
			before := owners(b, keys)
			gone := all[3].Address
			b.Update(slices.Delete(slices.Clone(all), 3, 4))
			after := owners(b, keys)
			moved, movedOthers, owned := 0, 0, 0
			for i := range before {
				if before[i] == gone {
					owned++
				}
				if before[i] != after[i] {
					moved++
					if before[i] != gone {
						movedOthers++
					}
				}
				if after[i] == gone {
					t.Fatalf("key %d still goes to the removed endpoint", i)
				}
			}
			t.Logf("removed endpoint owned %d keys; %d moved, %d of them from staying endpoints", owned, moved, movedOthers)
			if moved > 2*keys/n {
				t.Errorf("%d of %d keys moved when 1 of %d endpoints left, want at most %d", moved, keys, n, 2*keys/n)
			}
			if p == config.LBRingHash && movedOthers != 0 {
				t.Errorf("ring hash moved %d keys of staying endpoints, want 0", movedOthers)
			}
			// The endpoint coming back takes its keys back.
			b.Update(all)
			if diff := cmp.Diff(before, owners(b, keys)); diff != "" {
				t.Errorf("keys after the endpoint returned differ from before (-before +after):\n%s", diff)
			}
		})
	}
}

func TestHashSpreadByWeight(t *testing.T) {
	const keys = 100000
	tests := []struct {
		name    string
		weights []uint32
		// tolerance is the allowed relative deviation of each share.
		ringTol, maglevTol float64
	}{
		{"equal 10", slices.Repeat([]uint32{1}, 10), 0.25, 0.05},
		{"weighted 1-4", []uint32{1, 2, 3, 4}, 0.25, 0.05},
	}
	for _, p := range hashPolicies {
		for _, tt := range tests {
			t.Run(policyName(p)+"/"+tt.name, func(t *testing.T) {
				b := New(p, eps(tt.weights...))
				got := map[string]int{}
				for _, a := range owners(b, keys) {
					got[a]++
				}
				var sum uint32
				for _, w := range tt.weights {
					sum += w
				}
				tol := tt.ringTol
				if p == config.LBMaglev {
					tol = tt.maglevTol
				}
				for i, w := range tt.weights {
					addr := fmt.Sprintf("10.0.0.%d:80", i+1)
					want := float64(keys) * float64(w) / float64(sum)
					if math.Abs(float64(got[addr])-want) > tol*want {
						t.Errorf("%s (weight %d): %d keys, want %.0f ± %.0f%%", addr, w, got[addr], want, tol*100)
					}
				}
			})
		}
	}
}

func TestHashEjectedKeysMoveAndReturn(t *testing.T) {
	const keys = 5000
	for _, p := range hashPolicies {
		t.Run(policyName(p), func(t *testing.T) {
			b := New(p, eps(1, 1, 1, 1, 1))
			before := owners(b, keys)
			out := b.Endpoints()[2]
			out.SetEjected(true)
			during := owners(b, keys)
			for i := range before {
				switch {
				case during[i] == out.Address:
					t.Fatalf("key %d goes to the ejected endpoint", i)
				case before[i] != out.Address && during[i] != before[i]:
					t.Fatalf("key %d of a healthy endpoint moved from %s to %s", i, before[i], during[i])
				}
			}
			out.SetEjected(false)
			if diff := cmp.Diff(before, owners(b, keys)); diff != "" {
				t.Errorf("keys after the endpoint came back (-before +after):\n%s", diff)
			}
		})
	}
}

func TestRingSize(t *testing.T) {
	tests := []struct {
		name     string
		weights  []uint32
		minSize  uint64
		min, max int
	}{
		// minSize/8 points per unit of weight, whatever the number of
		// endpoints: 1024/8 = 128.
		{"default minimum", []uint32{1, 1, 1}, 0, 3 * 128, 3 * 128},
		{"eight endpoints make the minimum", []uint32{1, 1, 1, 1, 1, 1, 1, 1}, 0, 1024, 1024},
		{"configured minimum", []uint32{1, 1}, 4096, 2 * 512, 2 * 512},
		// Weights are reduced by their gcd (100): 1+3+6 units.
		{"large weights", []uint32{100, 300, 600}, 0, 10 * 128, 10 * 128},
		{"lightest endpoint gets its share", []uint32{1, 5000}, 0, 5001 * 128, 5001 * 128},
		{"bounded", []uint32{1, math.MaxUint32}, 0, MaxRingSize - 1, MaxRingSize + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &RingHash{MinSize: tt.minSize}
			b.Update(eps(tt.weights...))
			if n := len(b.ring.Load().hashes); n < tt.min || n > tt.max {
				t.Errorf("ring has %d entries, want %d..%d", n, tt.min, tt.max)
			}
		})
	}
}

func TestMaglevTableFull(t *testing.T) {
	b := &Maglev{}
	b.Update(eps(1, 1000, 7))
	mt := b.lookup.Load()
	counts := make([]int, 3)
	for _, s := range mt.slots {
		counts[s]++
	}
	if len(mt.slots) != MaglevTableSize || counts[0] == 0 || counts[0]+counts[1]+counts[2] != MaglevTableSize {
		t.Errorf("table of %d slots with %v per endpoint, want %d slots, every endpoint present", len(mt.slots), counts, MaglevTableSize)
	}
}
