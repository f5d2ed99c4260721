package resilience

import (
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// failingRequest drives one request against an upstream that always fails,
// with up to retries retries, and returns the attempts made.
func failingRequest(b *Budget, retries int) int {
	b.Request()
	attempts := 1
	for range retries {
		if !b.TryRetry() {
			break
		}
		attempts++
	}
	return attempts
}

func TestBudgetCapsRetriesInOneWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultBudgetConfig()
		b, err := NewBudget(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// 1000 requests over 5 s, all within one window, every attempt
		// failing and each request allowed 3 retries.
		const requests = 1000
		attempts := 0
		for range requests {
			attempts += failingRequest(b, 3)
			time.Sleep(5 * time.Millisecond)
		}
		limit := requests*(1+cfg.Ratio) + cfg.MinRetriesPerSecond*cfg.Window.Seconds()
		if float64(attempts) > limit {
			t.Errorf("attempts = %d, want at most requests*(1+ratio)+floor*window = %v", attempts, limit)
		}
		// The budget is used, not just respected: without retries the
		// test above would pass too.
		if float64(attempts) < limit-1 {
			t.Errorf("attempts = %d, want close to %v: the budget was not spent", attempts, limit)
		}
		if req, ret := b.Window(); req != requests || ret != uint64(attempts-requests) {
			t.Errorf("Window() = %d, %d; want %d, %d", req, ret, requests, attempts-requests)
		}
	})
}

func TestBudgetSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultBudgetConfig()
		b, err := NewBudget(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// 100 requests a second for 60 s, all failing. In any window the
		// retries stay within ratio*requests+floor*window, so over the run
		// they stay within that rate plus one window's worth.
		const rate, seconds = 100, 60
		requests, attempts := 0, 0
		for range rate * seconds {
			attempts += failingRequest(b, 3)
			requests++
			time.Sleep(time.Second / rate)
		}
		retries := float64(attempts - requests)
		w := cfg.Window.Seconds()
		limit := cfg.Ratio*float64(requests) + cfg.MinRetriesPerSecond*seconds +
			(cfg.Ratio*rate+cfg.MinRetriesPerSecond)*w
		if retries > limit {
			t.Errorf("retries = %v over %d requests, want at most %v", retries, requests, limit)
		}
		// As the window slides, old retries leave it and the budget
		// refills: at least the ratio is granted over the run.
		if retries < cfg.Ratio*float64(requests) {
			t.Errorf("retries = %v over %d requests, want at least %v: the budget did not refill", retries, requests, cfg.Ratio*float64(requests))
		}
	})
}

func TestBudgetFloorAfterIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, err := NewBudget(BudgetConfig{Ratio: 0.5, MinRetriesPerSecond: 1, Window: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for range 100 {
			b.Request()
		}
		granted := 0
		for range 200 {
			if b.TryRetry() {
				granted++
			}
		}
		if want := 50 + 10; granted != want {
			t.Errorf("granted %d retries, want %d (ratio 0.5 of 100 plus floor 1/s over 10 s)", granted, want)
		}
		// After a quiet window only the floor is left.
		time.Sleep(11 * time.Second)
		if req, ret := b.Window(); req != 0 || ret != 0 {
			t.Errorf("Window() after idle = %d, %d; want 0, 0", req, ret)
		}
		granted = 0
		for range 200 {
			if b.TryRetry() {
				granted++
			}
		}
		if granted != 10 {
			t.Errorf("granted %d retries after idle, want the floor of 10", granted)
		}
	})
}

func TestBudgetConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultBudgetConfig()
		b, err := NewBudget(cfg)
		if err != nil {
			t.Fatal(err)
		}
		const workers, each = 4, 5000
		var mu sync.Mutex
		granted := 0
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				n := 0
				for range each {
					b.Request()
					if b.TryRetry() {
						n++
					}
				}
				mu.Lock()
				granted += n
				mu.Unlock()
			})
		}
		wg.Wait()
		// The fake clock stands still: everything falls in one bucket.
		limit := cfg.Ratio*workers*each + cfg.MinRetriesPerSecond*cfg.Window.Seconds()
		if float64(granted) > limit {
			t.Errorf("granted %d retries, want at most %v", granted, limit)
		}
		if _, ret := b.Window(); ret != uint64(granted) {
			t.Errorf("Window() retries = %d, want the %d granted", ret, granted)
		}
	})
}

func TestBudgetConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     BudgetConfig
		wantErr string
	}{
		{name: "default", cfg: DefaultBudgetConfig()},
		{name: "negative ratio", cfg: BudgetConfig{Ratio: -1, Window: time.Second}, wantErr: "ratio -1"},
		{name: "huge ratio", cfg: BudgetConfig{Ratio: 1001, Window: time.Second}, wantErr: "ratio 1001"},
		{name: "negative floor", cfg: BudgetConfig{MinRetriesPerSecond: -1, Window: time.Second}, wantErr: "minRetriesPerSecond -1"},
		{name: "zero window", cfg: BudgetConfig{Ratio: 0.2}, wantErr: "window 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewBudget(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewBudget: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewBudget error = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
}
