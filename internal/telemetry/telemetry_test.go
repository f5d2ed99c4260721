package telemetry

import (
	"math"
	"testing"
	"time"
)

func TestBucketIndex(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{500 * time.Microsecond, 0}, // bounds are inclusive, as Prometheus' le
		{501 * time.Microsecond, 1},
		{time.Second, 10},
		{10 * time.Second, len(LatencyBuckets) - 1},
		{time.Minute, len(LatencyBuckets)}, // +Inf
	} {
		if got := BucketIndex(tt.d); got != tt.want {
			t.Errorf("BucketIndex(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

func TestQuantile(t *testing.T) {
	counts := make([]uint64, len(LatencyBuckets)+1)
	if got := Quantile(0.5, counts); got != 0 {
		t.Errorf("Quantile of nothing = %v, want 0", got)
	}
	// 100 requests in (1 ms, 2.5 ms]: the median interpolates to the
	// bucket's middle, p99 near its top.
	counts[BucketIndex(2*time.Millisecond)] = 100
	if got, want := Quantile(0.5, counts), 0.00175; math.Abs(got-want) > 1e-9 {
		t.Errorf("p50 = %v, want %v", got, want)
	}
	if got, want := Quantile(0.99, counts), 0.001+0.0015*0.99; math.Abs(got-want) > 1e-9 {
		t.Errorf("p99 = %v, want %v", got, want)
	}
	// Requests past the last bound report the last bound.
	counts[len(LatencyBuckets)] = 1000
	if got := Quantile(0.99, counts); got != LatencyBuckets[len(LatencyBuckets)-1] {
		t.Errorf("p99 with +Inf requests = %v, want %v", got, LatencyBuckets[len(LatencyBuckets)-1])
	}
}

func TestFailed(t *testing.T) {
	for _, tt := range []struct {
		status, grpc int
		want         bool
	}{
		{200, -1, false}, {404, -1, false}, {429, -1, false}, {500, -1, true}, {503, -1, true},
		{0, -1, true}, {200, 0, false}, {200, 5, false}, {200, 14, true}, {200, 13, true}, {200, 4, true},
	} {
		if got := Failed(tt.status, tt.grpc); got != tt.want {
			t.Errorf("Failed(%d, %d) = %v, want %v", tt.status, tt.grpc, got, tt.want)
		}
	}
}
