package resilience

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestBreakerOpensAndCloses(t *testing.T) {
	b, err := NewBreaker(BreakerConfig{MaxRequests: 2, MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Remaining(Connections); got != DefaultMaxConnections {
		t.Errorf("Remaining(connections) = %d, want the default %d", got, DefaultMaxConnections)
	}
	for i := range 2 {
		if !b.TryAcquire(Requests) {
			t.Fatalf("TryAcquire(requests) #%d = false, want true", i+1)
		}
	}
	if !b.Open(Requests) || b.Remaining(Requests) != 0 || b.InUse(Requests) != 2 {
		t.Errorf("at the limit: Open = %v, Remaining = %d, InUse = %d; want true, 0, 2",
			b.Open(Requests), b.Remaining(Requests), b.InUse(Requests))
	}
	if b.TryAcquire(Requests) {
		t.Fatal("TryAcquire(requests) past the limit = true, want false")
	}
	if got := b.Overflows(Requests); got != 1 {
		t.Errorf("Overflows(requests) = %d, want 1", got)
	}
	// Other resources are independent.
	if !b.TryAcquire(Retries) || b.TryAcquire(Retries) {
		t.Error("retries: want one acquisition, then refusal")
	}
	b.Release(Requests)
	if b.Open(Requests) || b.Remaining(Requests) != 1 {
		t.Errorf("after a release: Open = %v, Remaining = %d; want false, 1", b.Open(Requests), b.Remaining(Requests))
	}
	if !b.TryAcquire(Requests) {
		t.Error("TryAcquire(requests) after a release = false, want true")
	}
}

func TestBreakerSetConfigKeepsUse(t *testing.T) {
	b, err := NewBreaker(BreakerConfig{MaxConnections: 3})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		b.TryAcquire(Connections)
	}
	if err := b.SetConfig(BreakerConfig{MaxConnections: 1}); err != nil {
		t.Fatal(err)
	}
	if b.TryAcquire(Connections) || b.Remaining(Connections) != 0 {
		t.Fatal("lowered limit below use: want refusals and nothing remaining")
	}
	b.Release(Connections)
	b.Release(Connections)
	if b.TryAcquire(Connections) {
		t.Fatal("one in use with a limit of 1: want refusal")
	}
	b.Release(Connections)
	if !b.TryAcquire(Connections) {
		t.Fatal("none in use: want acquisition")
	}
}

func TestBreakerConfigValidate(t *testing.T) {
	_, err := NewBreaker(BreakerConfig{MaxRetries: -1})
	if err == nil || !strings.Contains(err.Error(), "max retries -1") {
		t.Fatalf("NewBreaker error = %v, want one naming max retries -1", err)
	}
}

func TestBreakerConcurrentNeverExceeds(t *testing.T) {
	const limit = 3
	b, err := NewBreaker(BreakerConfig{MaxRequests: limit})
	if err != nil {
		t.Fatal(err)
	}
	var held, peak atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				if !b.TryAcquire(Requests) {
					continue
				}
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				held.Add(-1)
				b.Release(Requests)
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit {
		t.Errorf("peak holders = %d, want at most %d", p, limit)
	}
	if b.InUse(Requests) != 0 {
		t.Errorf("InUse after all released = %d, want 0", b.InUse(Requests))
	}
}
