package balancer

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// fakeClock is a manual monotonic clock for the latency tests. The tests
// that use it drive it from one goroutine.
type fakeClock struct{ ns int64 }

func (c *fakeClock) now() int64              { return c.ns }
func (c *fakeClock) advance(d time.Duration) { c.ns += int64(d) }

// newEWMA returns a Priority of PeakEWMA children on a fake clock.
func newEWMA(clock *fakeClock, eps []config.Endpoint) *Priority {
	p := &Priority{policy: config.LBPeakEWMA}
	p.own.now = clock.now
	p.Update(eps)
	return p
}

func TestObservePeakAndDecay(t *testing.T) {
	clock := &fakeClock{ns: 1}
	e := newEWMA(clock, eps(1)).Endpoints()[0]
	if _, ok := e.RTT(); ok {
		t.Fatal("RTT reports a sample before any")
	}
	e.inFlight.Add(4)
	e.Done()
	if _, ok := e.RTT(); ok {
		t.Fatal("Done recorded a latency sample, want none")
	}
	e.DoneRTT(10 * time.Millisecond)
	e.DoneRTT(50 * time.Millisecond) // a peak replaces the estimate at once
	if got, _ := e.RTT(); got != 50*time.Millisecond {
		t.Errorf("after a 50ms peak RTT = %v, want 50ms", got)
	}
	clock.advance(DefaultDecay)
	e.DoneRTT(10 * time.Millisecond)
	// 50·e⁻¹ + 10·(1-e⁻¹)
	want := 50*math.Exp(-1) + 10*(1-math.Exp(-1))
	if got, _ := e.RTT(); math.Abs(got.Seconds()*1000-want) > 0.01 {
		t.Errorf("one tau after the peak RTT = %v, want %.2fms", got, want)
	}
	// Without responses the estimate decays toward zero as it is read.
	clock.advance(2 * DefaultDecay)
	if got, _ := e.RTT(); math.Abs(got.Seconds()*1000-want*math.Exp(-2)) > 0.01 {
		t.Errorf("two idle tau later RTT = %v, want %.2fms", got, want*math.Exp(-2))
	}
	if e.InFlight() != 0 {
		t.Errorf("in flight = %d, want 0", e.InFlight())
	}
}

// completion is an outstanding simulated request.
type completion struct {
	at  int64
	e   *Endpoint
	rtt time.Duration
}

type completions []completion

func (c completions) Len() int           { return len(c) }
func (c completions) Less(i, j int) bool { return c[i].at < c[j].at }
func (c completions) Swap(i, j int)      { c[i], c[j] = c[j], c[i] }
func (c *completions) Push(x any)        { *c = append(*c, x.(completion)) }
func (c *completions) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// TestPeakEWMASteersAwayAndBack simulates 4000 requests a second over four
// endpoints on a fake clock, each request held for its endpoint's latency.
func TestPeakEWMASteersAwayAndBack(t *testing.T) {
	clock := &fakeClock{ns: 1}
	b := newEWMA(clock, eps(1, 1, 1, 1))
	slow := b.Endpoints()[0]
	latency := func(e *Endpoint, slowNow bool) time.Duration {
		if e == slow && slowNow {
			return 50 * time.Millisecond
		}
		return time.Millisecond
	}
	var pending completions
	// run simulates d and returns slow's share of the picks made in its
	// last window.
	run := func(d, window time.Duration, slowNow bool) float64 {
		end := clock.ns + int64(d)
		var picks, slowPicks int
		for clock.ns < end {
			clock.advance(250 * time.Microsecond)
			for pending.Len() > 0 && pending[0].at <= clock.ns {
				c := heap.Pop(&pending).(completion)
				c.e.DoneRTT(c.rtt)
			}
			e := b.Pick()
			rtt := latency(e, slowNow)
			heap.Push(&pending, completion{at: clock.ns + int64(rtt), e: e, rtt: rtt})
			if clock.ns >= end-int64(window) {
				picks++
				if e == slow {
					slowPicks++
				}
			}
		}
		return float64(slowPicks) / float64(picks)
	}
	if share := run(5*time.Second, 5*time.Second, false); share < 0.15 {
		t.Fatalf("all fast: the endpoint got %.1f%% of picks, want about 25%%", share*100)
	}
	// Slow: within two seconds its share is small.
	if share := run(10*time.Second, 8*time.Second, true); share >= 0.10 {
		t.Errorf("slow endpoint got %.1f%% of picks from 2s to 10s after it turned slow, want under 10%%", share*100)
	} else {
		t.Logf("slow endpoint's share from 2s to 10s: %.2f%%", share*100)
	}
	// Fast again: within a few tau it is back to a fair share.
	// (It waits out its 50ms peak decaying below the others' 1ms, about
	// ln 50 ≈ 3.9 tau after its last slow response, then wins its share
	// back.)
	share := run(5*DefaultDecay, DefaultDecay, false)
	t.Logf("share in the fifth tau after recovery: %.1f%%", share*100)
	if share < 0.15 {
		t.Errorf("recovered endpoint got %.1f%% of picks in the fifth tau after it turned fast, want at least 15%%", share*100)
	}
}

func TestPeakEWMATriesNewEndpoint(t *testing.T) {
	clock := &fakeClock{ns: 1}
	b := newEWMA(clock, eps(1, 1))
	for range 100 {
		clock.advance(time.Millisecond)
		b.Pick().DoneRTT(20 * time.Millisecond)
	}
	b.Update(eps(1, 1, 1))
	fresh := b.Endpoints()[2]
	got := 0
	for range 300 {
		clock.advance(time.Millisecond)
		if e := b.Pick(); e == fresh {
			got++
			e.Done() // no sample: it stays at DefaultRTT
		} else {
			e.DoneRTT(20 * time.Millisecond)
		}
	}
	// It wins every comparison it is part of: 2 of 3 pairs.
	if got < 150 {
		t.Errorf("new endpoint got %d of 300 picks, want about 200", got)
	}
}

// TestCheaperMatchesCost checks the clock-free comparison against the costs
// computed directly.
func TestCheaperMatchesCost(t *testing.T) {
	clock := &fakeClock{ns: int64(time.Hour)}
	b := newEWMA(clock, eps(1, 1))
	x, y := b.Endpoints()[0], b.Endpoints()[1]
	r := rand.New(rand.NewPCG(1, 2))
	set := func(e *Endpoint) {
		e.inFlight.Store(r.Int64N(5))
		if r.IntN(5) == 0 {
			e.rtt.est.Store(0) // no sample
		} else {
			e.rtt.est.Store(math.Float64bits(float64(r.Int64N(int64(100 * time.Millisecond)))))
		}
		e.rtt.stamp.Store(clock.ns - r.Int64N(int64(60*time.Second)))
	}
	for i := range 10000 {
		set(x)
		set(y)
		tau := float64(DefaultDecay)
		ex, _ := x.rttAt(clock.ns, tau)
		ey, _ := y.rttAt(clock.ns, tau)
		cx, cy := ex*float64(x.InFlight()+1), ey*float64(y.InFlight()+1)
		if math.Abs(cx-cy) < 1e-6*max(cx, cy) {
			continue // too close to call
		}
		if got := x.cheaper(y); got != (cx < cy) {
			t.Fatalf("case %d: cheaper = %v, costs %.3f vs %.3f", i, got, cx, cy)
		}
	}
	x.inFlight.Store(0)
	y.inFlight.Store(0)
}
