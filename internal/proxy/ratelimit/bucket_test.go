package ratelimit

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTestBucket(t *testing.T, rate float64, burst int) (*Bucket, *fakeClock) {
	t.Helper()
	clk := &fakeClock{}
	b, err := NewBucket(BucketConfig{Rate: rate, Burst: burst, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return b, clk
}

func TestBucketAllow(t *testing.T) {
	type step struct {
		advance   time.Duration
		wantOK    bool
		wantRetry time.Duration
	}
	tests := []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{
			name: "burst then refill", rate: 10, burst: 3,
			steps: []step{
				{0, true, 0}, {0, true, 0}, {0, true, 0},
				{0, false, 100 * time.Millisecond},
				{40 * time.Millisecond, false, 60 * time.Millisecond},
				{60 * time.Millisecond, true, 0},
				{0, false, 100 * time.Millisecond},
			},
		},
		{
			name: "refill caps at burst", rate: 1, burst: 2,
			steps: []step{
				{time.Hour, true, 0}, {0, true, 0}, {0, false, time.Second},
			},
		},
		{
			name: "fractional rate", rate: 0.5, burst: 1,
			steps: []step{{0, true, 0}, {0, false, 2 * time.Second}, {time.Second, false, time.Second}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk := newTestBucket(t, tt.rate, tt.burst)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				ok, retry := b.Allow()
				if ok != s.wantOK || retry != s.wantRetry {
					t.Fatalf("step %d: Allow() = %v, %v; want %v, %v", i, ok, retry, s.wantOK, s.wantRetry)
				}
			}
		})
	}
}

func TestBucketAllowN(t *testing.T) {
	b, _ := newTestBucket(t, 100, 10)
	if ok, _ := b.AllowN(11); ok {
		t.Fatal("AllowN(11) on a burst of 10 succeeded")
	}
	if ok, _ := b.AllowN(7); !ok {
		t.Fatal("AllowN(7) on a full bucket of 10 failed")
	}
	// All or none: 3 left, so 4 fails and takes nothing.
	if ok, retry := b.AllowN(4); ok || retry != 10*time.Millisecond {
		t.Fatalf("AllowN(4) = %v, %v; want false, 10ms", ok, retry)
	}
	if ok, _ := b.AllowN(3); !ok {
		t.Fatal("AllowN(3) with 3 left failed")
	}
}

func TestBucketReserve(t *testing.T) {
	// 1000 tokens a second, burst 100: the first 100 are free, then every
	// reservation waits for the debt before it.
	b, clk := newTestBucket(t, 1000, 100)
	for i, want := range []time.Duration{0, 50 * time.Millisecond, 150 * time.Millisecond} {
		n := []int{100, 50, 100}[i]
		if got := b.Reserve(n); got != want {
			t.Fatalf("reservation %d of %d: wait %v, want %v", i, n, got, want)
		}
	}
	clk.Advance(150 * time.Millisecond)
	if got := b.Reserve(1); got != time.Millisecond {
		t.Fatalf("after paying the debt: wait %v, want 1ms", got)
	}
}

func TestBucketConcurrent(t *testing.T) {
	// The clock stands still, so exactly Burst of many concurrent takes
	// succeed however the compare-and-swaps interleave.
	b, _ := newTestBucket(t, 1, 500)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if ok, _ := b.Allow(); ok {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 500 {
		t.Fatalf("allowed %d of 8000 takes, want the burst of 500", got)
	}
}

func TestNewBucketErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  BucketConfig
		want string
	}{
		{"zero rate", BucketConfig{Rate: 0, Burst: 1}, "token bucket: rate: invalid value 0"},
		{"negative rate", BucketConfig{Rate: -1, Burst: 1}, "rate: invalid value -1"},
		{"rate too high", BucketConfig{Rate: 2e9, Burst: 1}, "rate: invalid value 2e+09"},
		{"zero burst", BucketConfig{Rate: 1, Burst: 0}, "token bucket: burst: invalid value 0: must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewBucket(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewBucket(%+v) = %v, want an error containing %q", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tt := range []struct {
		wait time.Duration
		want int64
	}{
		{0, 1}, {time.Millisecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {59500 * time.Millisecond, 60},
	} {
		if got := RetryAfterSeconds(tt.wait); got != tt.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tt.wait, got, tt.want)
		}
	}
}
