package resilience

import (
	"fmt"
	"net/http"
	"testing"
)

func BenchmarkBudgetRequest(b *testing.B) {
	bu, err := NewBudget(DefaultBudgetConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		bu.Request()
	}
}

func BenchmarkBudgetTryRetry(b *testing.B) {
	bu, err := NewBudget(DefaultBudgetConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		// A request and a retry attempt each time: the budget stays
		// open (ratio 0.2 plus the floor) only part of the time, so both
		// outcomes are measured.
		bu.Request()
		bu.TryRetry()
	}
}

func BenchmarkBreakerAcquireRelease(b *testing.B) {
	br, err := NewBreaker(BreakerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if br.TryAcquire(Requests) {
			br.Release(Requests)
		}
	}
}

func BenchmarkBreakerAcquireReleaseParallel(b *testing.B) {
	br, err := NewBreaker(BreakerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if br.TryAcquire(Requests) {
				br.Release(Requests)
			}
		}
	})
}

func BenchmarkDetectorReport(b *testing.B) {
	d, err := NewDetector(DefaultDetectorConfig())
	if err != nil {
		b.Fatal(err)
	}
	eps := map[string]Ejector{}
	var addrs []string
	for i := range 100 {
		a := fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)
		addrs = append(addrs, a)
		eps[a] = nil
	}
	d.Update(eps)
	for _, tc := range []struct {
		name string
		r    Result
	}{{"success", ResultSuccess}, {"5xx", Result5xx}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// 5xx on one endpoint at a time never reaches the
				// threshold of 5 because the next one is different.
				d.Report(addrs[i%len(addrs)], tc.r)
				i++
			}
		})
	}
}

func BenchmarkShouldRetry(b *testing.B) {
	cond, err := ParseRetryOn("5xx,reset,connect-failure,unavailable")
	if err != nil {
		b.Fatal(err)
	}
	trailer := http.Header{"Grpc-Status": {"14"}}
	b.ReportAllocs()
	for b.Loop() {
		ShouldRetry(cond, 200, GRPCStatus(trailer, nil), FailureNone)
	}
}
