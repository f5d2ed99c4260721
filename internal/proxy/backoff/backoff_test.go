package backoff

import (
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	tests := []struct {
		name      string
		base, max time.Duration
		// bounds[i] is the upper bound of attempt i; the lower is half.
		bounds []time.Duration
	}{
		{
			name: "agent and xds",
			base: 200 * time.Millisecond, max: 5 * time.Second,
			bounds: []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
				1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second},
		},
		{
			name: "base above max",
			base: time.Minute, max: time.Second,
			bounds: []time.Duration{time.Second, time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Many runs, so that a delay outside its bounds shows up.
			for range 200 {
				b := Backoff{Base: tt.base, Max: tt.max}
				for i, hi := range tt.bounds {
					if got := b.Next(); got < hi/2 || got > hi {
						t.Fatalf("attempt %d: Next() = %v, want in [%v, %v]", i, got, hi/2, hi)
					}
				}
			}
		})
	}
}

func TestNeverOverflows(t *testing.T) {
	b := Backoff{Base: time.Second, Max: time.Hour}
	for i := range 1000 {
		got := b.Next()
		// From attempt 12 on (2^12 s > 1 h) the cap holds, however large
		// the shift would grow.
		if i >= 12 && (got < 30*time.Minute || got > time.Hour) {
			t.Fatalf("attempt %d: Next() = %v, want in [30m, 1h]", i, got)
		}
	}
}

func TestReset(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}
	for range 10 {
		b.Next()
	}
	b.Reset()
	if got := b.Next(); got > 100*time.Millisecond {
		t.Errorf("Next() after Reset = %v, want at most the base 100ms", got)
	}
}
