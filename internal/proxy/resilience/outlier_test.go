package resilience

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeEndpoint records what the detector told it.
type fakeEndpoint struct {
	mu    sync.Mutex
	calls []bool
}

func (e *fakeEndpoint) SetEjected(v bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, v)
}

func (e *fakeEndpoint) got() []bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]bool(nil), e.calls...)
}

// cluster makes n endpoints named 10.0.0.i:80 and a detector holding them.
func cluster(t *testing.T, cfg DetectorConfig, n int) (*Detector, []string, map[string]*fakeEndpoint) {
	t.Helper()
	d, err := NewDetector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, n)
	fakes := map[string]*fakeEndpoint{}
	eps := map[string]Ejector{}
	for i := range n {
		addrs[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
		fakes[addrs[i]] = &fakeEndpoint{}
		eps[addrs[i]] = fakes[addrs[i]]
	}
	d.Update(eps)
	return d, addrs, fakes
}

func report(d *Detector, addr string, r Result, n int) {
	for range n {
		d.Report(addr, r)
	}
}

func TestDetectorConsecutive5xx(t *testing.T) {
	cfg := DefaultDetectorConfig()
	cfg.MaxEjectionPercent = 100
	d, addrs, fakes := cluster(t, cfg, 2)
	a := addrs[0]

	report(d, a, Result5xx, 4)
	if d.Ejected(a) {
		t.Fatal("ejected after 4 consecutive 5xx, want 5")
	}
	d.Report(a, ResultSuccess) // resets the count
	report(d, a, Result5xx, 4)
	if d.Ejected(a) {
		t.Fatal("ejected after 4 5xx, a success and 4 5xx: the success must reset the count")
	}
	d.Report(a, Result5xx)
	if !d.Ejected(a) {
		t.Fatal("not ejected after 5 consecutive 5xx")
	}
	if diff := cmp.Diff([]bool{true}, fakes[a].got()); diff != "" {
		t.Errorf("SetEjected calls (-want +got):\n%s", diff)
	}
	if d.Ejected(addrs[1]) || len(fakes[addrs[1]].got()) != 0 {
		t.Error("the other endpoint was touched")
	}
	if n, ej, total := d.Stats(); n != 2 || ej != 1 || total != 1 {
		t.Errorf("Stats() = %d, %d, %d; want 2, 1, 1", n, ej, total)
	}
}

func TestDetectorResultKinds(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*DetectorConfig)
		results []Result
		want    bool
	}{
		{name: "local failures count as 5xx", results: []Result{ResultLocalFailure, Result5xx, ResultLocalFailure, Result5xx, ResultGatewayError}, want: true},
		{name: "gateway errors disabled by default", cfg: func(c *DetectorConfig) { c.Consecutive5xx = 0 },
			results: []Result{ResultGatewayError, ResultGatewayError, ResultGatewayError, ResultGatewayError, ResultGatewayError}},
		{name: "gateway errors when enabled", cfg: func(c *DetectorConfig) { c.Consecutive5xx = 0; c.ConsecutiveGatewayFailure = 3 },
			results: []Result{ResultGatewayError, ResultLocalFailure, ResultGatewayError}, want: true},
		{name: "a plain 5xx resets the gateway count", cfg: func(c *DetectorConfig) { c.Consecutive5xx = 0; c.ConsecutiveGatewayFailure = 3 },
			results: []Result{ResultGatewayError, ResultGatewayError, Result5xx, ResultGatewayError}},
		{name: "ignored results change nothing", cfg: func(c *DetectorConfig) { c.Consecutive5xx = 2 },
			results: []Result{Result5xx, ResultIgnore, Result5xx}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultDetectorConfig()
			cfg.MaxEjectionPercent = 100
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			d, addrs, _ := cluster(t, cfg, 1)
			for _, r := range tt.results {
				d.Report(addrs[0], r)
			}
			if got := d.Ejected(addrs[0]); got != tt.want {
				t.Errorf("Ejected = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestResultOf(t *testing.T) {
	tests := []struct {
		status  int
		failure Failure
		want    Result
	}{
		{200, FailureNone, ResultSuccess},
		{404, FailureNone, ResultSuccess},
		{500, FailureNone, Result5xx},
		{502, FailureNone, ResultGatewayError},
		{503, FailureNone, ResultGatewayError},
		{504, FailureNone, ResultGatewayError},
		{0, FailureConnect, ResultLocalFailure},
		{0, FailureReset, ResultLocalFailure},
		{0, FailureTimeout, ResultLocalFailure},
		{0, FailureOverflow, ResultIgnore},
	}
	for _, tt := range tests {
		if got := ResultOf(tt.status, tt.failure); got != tt.want {
			t.Errorf("ResultOf(%d, %d) = %d, want %d", tt.status, tt.failure, got, tt.want)
		}
	}
}

// ejectionLength ejects addr, then lets Run sweep until it is back, and
// returns how long it was out (a multiple of the interval).
func ejectionLength(t *testing.T, d *Detector, cfg DetectorConfig, addr string) time.Duration {
	t.Helper()
	report(d, addr, Result5xx, int(cfg.Consecutive5xx))
	if !d.Ejected(addr) {
		t.Fatalf("%s not ejected", addr)
	}
	start := time.Now()
	for range 100 {
		time.Sleep(cfg.Interval)
		synctest.Wait() // let Run finish its sweep of this instant
		if !d.Ejected(addr) {
			return time.Since(start)
		}
	}
	t.Fatalf("%s still ejected after 100 intervals", addr)
	return 0
}

func TestDetectorEjectionTimeGrowsAndReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultDetectorConfig()
		cfg.MaxEjectionTime = 75 * time.Second
		d, addrs, fakes := cluster(t, cfg, 1)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() { _ = d.Run(ctx) })
		defer wg.Wait()
		defer cancel()

		a := addrs[0]
		var got []time.Duration
		for range 4 {
			got = append(got, ejectionLength(t, d, cfg, a))
		}
		// 30 s, 60 s, then capped at 75 s, which the 10 s sweep rounds
		// up to 80 s.
		want := []time.Duration{30 * time.Second, 60 * time.Second, 80 * time.Second, 80 * time.Second}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ejection lengths (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]bool{true, false, true, false, true, false, true, false}, fakes[a].got()); diff != "" {
			t.Errorf("SetEjected calls (-want +got):\n%s", diff)
		}

		// Healthy sweeps bring the multiplier back down: after four of
		// them (4 ejections, so multiplier 4) the next ejection is the
		// base time again.
		time.Sleep(4 * cfg.Interval)
		synctest.Wait()
		if got := ejectionLength(t, d, cfg, a); got != cfg.BaseEjectionTime {
			t.Errorf("ejection after a healthy spell lasted %v, want %v", got, cfg.BaseEjectionTime)
		}
	})
}

func TestDetectorMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name      string
		endpoints int
		percent   int
		want      int // endpoints ejected when all of them fail
	}{
		// Envoy: "will eject at least one host regardless of the value".
		{name: "one of ten at 10%", endpoints: 10, percent: 10, want: 1},
		{name: "at least one at 0%", endpoints: 3, percent: 0, want: 1},
		{name: "at least one of a small cluster", endpoints: 3, percent: 10, want: 1},
		{name: "the only endpoint", endpoints: 1, percent: 10, want: 1},
		{name: "half of four", endpoints: 4, percent: 50, want: 2},
		{name: "two of ten at 25%", endpoints: 10, percent: 25, want: 2},
		{name: "all at 100%", endpoints: 5, percent: 100, want: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultDetectorConfig()
			cfg.MaxEjectionPercent = tt.percent
			d, addrs, _ := cluster(t, cfg, tt.endpoints)
			for _, a := range addrs {
				report(d, a, Result5xx, 5)
			}
			ejected := 0
			for _, a := range addrs {
				if d.Ejected(a) {
					ejected++
				}
			}
			if ejected != tt.want {
				t.Errorf("%d of %d endpoints ejected, want %d", ejected, tt.endpoints, tt.want)
			}
			if _, n, _ := d.Stats(); n != ejected {
				t.Errorf("Stats() ejected = %d, want %d", n, ejected)
			}
		})
	}
}

func TestDetectorUpdate(t *testing.T) {
	cfg := DefaultDetectorConfig()
	cfg.MaxEjectionPercent = 50
	d, addrs, fakes := cluster(t, cfg, 2)
	a, b := addrs[0], addrs[1]
	report(d, a, Result5xx, 5)
	report(d, b, Result5xx, 3)

	// a stays with a new Ejector (told at once), b stays with its count,
	// c is new.
	a2, c := &fakeEndpoint{}, &fakeEndpoint{}
	d.Update(map[string]Ejector{a: a2, b: fakes[b], "10.0.0.9:80": c})
	if !d.Ejected(a) {
		t.Fatal("a lost its ejection across Update")
	}
	if diff := cmp.Diff([]bool{true}, a2.got()); diff != "" {
		t.Errorf("new Ejector of a (-want +got):\n%s", diff)
	}
	report(d, b, Result5xx, 2)
	if d.Ejected(b) {
		// 2 of 3 ejected would pass 50%.
		t.Error("b ejected past maxEjectionPercent")
	}

	// Removing a frees its share: b can now be ejected.
	d.Update(map[string]Ejector{b: fakes[b], "10.0.0.9:80": c})
	if d.Ejected(a) {
		t.Error("removed endpoint still reported ejected")
	}
	report(d, b, Result5xx, 5)
	if !d.Ejected(b) {
		t.Error("b not ejected once a was removed")
	}
	// Reports for unknown addresses are ignored.
	report(d, a, Result5xx, 10)
	if n, ej, _ := d.Stats(); n != 2 || ej != 1 {
		t.Errorf("Stats() = %d endpoints, %d ejected; want 2, 1", n, ej)
	}
}

func TestDetectorConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*DetectorConfig)
		wantErr string
	}{
		{name: "interval", edit: func(c *DetectorConfig) { c.Interval = 0 }, wantErr: "interval 0s"},
		{name: "base", edit: func(c *DetectorConfig) { c.BaseEjectionTime = -time.Second }, wantErr: "baseEjectionTime -1s"},
		{name: "max time", edit: func(c *DetectorConfig) { c.MaxEjectionTime = -time.Second }, wantErr: "maxEjectionTime -1s"},
		{name: "percent", edit: func(c *DetectorConfig) { c.MaxEjectionPercent = 101 }, wantErr: "maxEjectionPercent 101"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultDetectorConfig()
			tt.edit(&cfg)
			_, err := NewDetector(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewDetector error = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
}
