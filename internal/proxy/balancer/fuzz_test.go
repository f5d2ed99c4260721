package balancer

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// FuzzUpdatePick runs a byte-coded sequence of Updates (random addresses,
// weights, priorities), picks, hash picks, ends and ejections against every
// policy and checks the invariants: a pick is an endpoint of the current
// set, nil exactly when the set is empty; the level loads add up to 100;
// in-flight counts return to zero once every picked request ends.
func FuzzUpdatePick(f *testing.F) {
	f.Add(byte(0), []byte{0, 3, 1, 1, 0, 2, 2, 1, 3, 5, 2, 1, 1, 2, 9, 3, 4, 7})
	f.Add(byte(2), []byte{0, 4, 1, 0, 0, 2, 0, 1, 3, 9, 2, 4, 1, 2, 5, 0, 5, 1, 5, 2, 1, 2, 200, 0, 0, 1})
	f.Add(byte(3), []byte{0, 2, 1, 255, 0, 2, 1, 1, 5, 0, 5, 1, 1, 1, 2, 77, 4, 20, 3})
	f.Add(byte(4), []byte{0, 5, 1, 1, 0, 2, 3, 1, 3, 1, 2, 4, 1, 2, 5, 9, 2, 1, 4, 50, 1, 4, 1, 0, 1, 0, 0, 1, 4, 2})
	f.Fuzz(runOps)
}

func runOps(t *testing.T, policy byte, ops []byte) {
	p := allPolicies[int(policy)%len(allPolicies)]
	b := New(p, nil)
	var held []*Endpoint
	seen := map[*Endpoint]bool{}
	updates := 0
	next := func() byte {
		if len(ops) == 0 {
			return 0
		}
		c := ops[0]
		ops = ops[1:]
		return c
	}
	check := func(e *Endpoint, how string) {
		cur := b.Endpoints()
		switch {
		case e == nil && len(cur) != 0:
			t.Fatalf("%s returned nil with %d endpoints", how, len(cur))
		case e != nil && !slices.Contains(cur, e):
			t.Fatalf("%s returned %s, not in the current set", how, e.Address)
		case e != nil:
			held = append(held, e)
			seen[e] = true
		}
	}
	for steps := 0; len(ops) > 0 && steps < 1000; steps++ {
		switch next() % 6 {
		case 0:
			// A Maglev table costs milliseconds to build: few Updates
			// per input keep the fuzzer fast.
			if updates++; updates > 16 {
				continue
			}
			n := int(next() % 12)
			in := make([]config.Endpoint, 0, n)
			for range n {
				in = append(in, config.Endpoint{
					Address:  fmt.Sprintf("10.0.0.%d:80", next()%16),
					Weight:   uint32(next()),
					Priority: uint32(next() % 3),
				})
			}
			b.Update(in)
		case 1:
			check(b.Pick(), "Pick")
		case 2:
			check(b.(HashPicker).PickHash(HashString(string([]byte{next()}))), "PickHash")
		case 3, 4:
			if len(held) > 0 {
				e := held[len(held)-1]
				held = held[:len(held)-1]
				if next()%2 == 0 {
					e.Done()
				} else {
					e.DoneRTT(time.Duration(next()) * time.Millisecond)
				}
			}
		case 5:
			if cur := b.Endpoints(); len(cur) > 0 {
				e := cur[int(next())%len(cur)]
				e.SetEjected(!e.Ejected())
			}
		}
		if loads := b.(*Priority).Loads(); len(loads) > 0 {
			var sum uint32
			for _, l := range loads {
				sum += l.Percent
			}
			if sum != 100 {
				t.Fatalf("level loads %v add up to %d, want 100", loads, sum)
			}
		}
	}
	for _, e := range held {
		e.Done()
	}
	for e := range seen {
		if e.InFlight() != 0 {
			t.Fatalf("%s has %d in flight after every request ended, want 0", e.Address, e.InFlight())
		}
	}
}
