package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

const (
	critical = 0
	standard = 1
	bulk     = 2
)

func newTestShedder(t *testing.T, limit, maxQueue int) *Shedder {
	t.Helper()
	s, err := NewShedder(ShedConfig{Limit: limit, MaxQueue: maxQueue, MaxWait: 10 * time.Second, Classes: 3})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustAcquire(t *testing.T, s *Shedder, class int) func() {
	t.Helper()
	release, err := s.Acquire(t.Context(), class)
	if err != nil {
		t.Fatalf("Acquire(class %d): %v", class, err)
	}
	return release
}

// queuedRequest is a request started in a synctest bubble that records
// its outcome.
type queuedRequest struct {
	name  string
	class int
	err   error
	done  bool
}

// arrive starts r's Acquire and waits until it is queued or done, so that
// arrivals happen in the order of the calls. On admission it appends r's
// name to order and releases at once.
func arrive(s *Shedder, wg *sync.WaitGroup, mu *sync.Mutex, order *[]string, r *queuedRequest) {
	wg.Go(func() {
		release, err := s.Acquire(context.Background(), r.class)
		mu.Lock()
		r.err, r.done = err, true
		if err == nil {
			*order = append(*order, r.name)
		}
		mu.Unlock()
		if err == nil {
			release()
		}
	})
	synctest.Wait()
}

func TestShedderOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestShedder(t, 1, 10)
		release := mustAcquire(t, s, bulk)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			order []string
		)
		for _, r := range []*queuedRequest{
			{name: "bulk1", class: bulk}, {name: "std1", class: standard}, {name: "bulk2", class: bulk},
			{name: "crit1", class: critical}, {name: "std2", class: standard}, {name: "crit2", class: critical},
			{name: "out-of-range", class: 7},
		} {
			arrive(s, &wg, &mu, &order, r)
		}
		if in, q := s.Stats(); in != 1 || q != 7 {
			t.Fatalf("Stats() = %d in flight, %d queued; want 1, 7", in, q)
		}
		release()
		wg.Wait()
		want := []string{"crit1", "crit2", "std1", "std2", "bulk1", "bulk2", "out-of-range"}
		if diff := cmp.Diff(want, order); diff != "" {
			t.Fatalf("admission order (-want +got):\n%s", diff)
		}
		if in, q := s.Stats(); in != 0 || q != 0 {
			t.Fatalf("Stats() = %d in flight, %d queued after all released; want 0, 0", in, q)
		}
	})
}

func TestShedderEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestShedder(t, 1, 2)
		release := mustAcquire(t, s, bulk)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			order []string
		)
		reqs := []*queuedRequest{
			{name: "bulk1", class: bulk},
			{name: "bulk2", class: bulk},
			{name: "std1", class: standard},  // full: evicts bulk2, the newest bulk
			{name: "bulk3", class: bulk},     // full of std1 and bulk1: refused
			{name: "crit1", class: critical}, // evicts bulk1
			{name: "crit2", class: critical}, // evicts std1
			{name: "crit3", class: critical}, // full of critical: refused
		}
		for _, r := range reqs {
			arrive(s, &wg, &mu, &order, r)
		}
		release()
		wg.Wait()
		got := map[string]error{}
		for _, r := range reqs {
			got[r.name] = r.err
		}
		want := map[string]error{
			"bulk1": ErrShed, "bulk2": ErrShed, "bulk3": ErrShed, "std1": ErrShed,
			"crit1": nil, "crit2": nil, "crit3": ErrShed,
		}
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b error) bool { return errors.Is(a, b) })); diff != "" {
			t.Fatalf("outcomes (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"crit1", "crit2"}, order); diff != "" {
			t.Fatalf("admission order (-want +got):\n%s", diff)
		}
	})
}

func TestShedderNoQueue(t *testing.T) {
	s := newTestShedder(t, 1, 0)
	release := mustAcquire(t, s, bulk)
	if _, err := s.Acquire(t.Context(), critical); !errors.Is(err, ErrShed) {
		t.Fatalf("Acquire with no slot and no queue = %v, want ErrShed", err)
	}
	release()
	mustAcquire(t, s, critical)()
}

func TestShedderCancelWhileQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestShedder(t, 1, 4)
		release := mustAcquire(t, s, bulk)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() {
			_, err := s.Acquire(ctx, standard)
			errc <- err
		}()
		synctest.Wait()
		if _, q := s.Stats(); q != 1 {
			t.Fatalf("queued = %d, want 1", q)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Acquire after cancel = %v, want context.Canceled", err)
		}
		if in, q := s.Stats(); in != 1 || q != 0 {
			t.Fatalf("Stats() = %d, %d after cancel; want 1, 0", in, q)
		}
		release()
		if in, _ := s.Stats(); in != 0 {
			t.Fatalf("in flight = %d after release, want 0 (the cancelled waiter must not hold a slot)", in)
		}
	})
}

func TestShedderMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestShedder(t, 1, 4)
		release := mustAcquire(t, s, bulk)
		defer release()
		start := time.Now()
		_, err := s.Acquire(t.Context(), critical)
		if !errors.Is(err, ErrQueueTimeout) {
			t.Fatalf("Acquire = %v, want ErrQueueTimeout", err)
		}
		// Fake time in the bubble: exact, not a timing assertion.
		if waited := time.Since(start); waited != 10*time.Second {
			t.Fatalf("waited %v, want MaxWait 10s", waited)
		}
		if _, q := s.Stats(); q != 0 {
			t.Fatalf("queued = %d after timeout, want 0", q)
		}
	})
}

// TestShedderAccounting races cancellations against hand-offs: whatever
// the interleaving, every slot comes back.
func TestShedderAccounting(t *testing.T) {
	s, err := NewShedder(ShedConfig{Limit: 3, MaxQueue: 5, MaxWait: 5 * time.Millisecond, Classes: 3})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for g := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				ctx, cancel := context.WithTimeout(t.Context(), time.Duration(rng.IntN(300))*time.Microsecond)
				release, err := s.Acquire(ctx, rng.IntN(3))
				if err == nil {
					admitted.Add(1)
					time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
					release()
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if in, q := s.Stats(); in != 0 || q != 0 {
		t.Fatalf("Stats() = %d in flight, %d queued after everything finished; want 0, 0", in, q)
	}
	if admitted.Load() == 0 {
		t.Fatal("no request admitted")
	}
}

func TestNewShedderErrors(t *testing.T) {
	ok := ShedConfig{Limit: 1, MaxQueue: 0, MaxWait: time.Second, Classes: 1}
	tests := []struct {
		name string
		edit func(*ShedConfig)
		want string
	}{
		{"limit", func(c *ShedConfig) { c.Limit = 0 }, "shedder: limit: invalid value 0: must be at least 1"},
		{"queue", func(c *ShedConfig) { c.MaxQueue = -1 }, "shedder: maxQueue: invalid value -1"},
		{"wait", func(c *ShedConfig) { c.MaxWait = 0 }, "shedder: maxWait: invalid value 0s: must be positive"},
		{"classes", func(c *ShedConfig) { c.Classes = 0 }, "shedder: classes: invalid value 0"},
		{"reserved negative", func(c *ShedConfig) { c.Reserved = -1 }, "shedder: reserved: invalid value -1: must be in [0, limit 1)"},
		{"reserved all", func(c *ShedConfig) { c.Reserved = 1 }, "shedder: reserved: invalid value 1: must be in [0, limit 1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			if _, err := NewShedder(c); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewShedder = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestShedderOverload runs a real in-process workload: bulk clients far
// beyond the limit while a critical client sends requests one after the
// other. It asserts on outcomes and ordering, never on timing: no
// critical request is shed or times out, bulk requests are shed, and no
// slot is ever handed to a waiter while a more important one waits. The
// critical client's latency, unloaded and loaded, is logged.
func TestShedderOverload(t *testing.T) {
	t.Run("no reserve", func(t *testing.T) { testShedderOverload(t, 0) })
	t.Run("one slot reserved", func(t *testing.T) { testShedderOverload(t, 1) })
}

func testShedderOverload(t *testing.T, reserved int) {
	const (
		limit        = 4
		service      = 2 * time.Millisecond
		criticalReqs = 150
		bulkClients  = 24
	)
	s, err := NewShedder(ShedConfig{Limit: limit, MaxQueue: 8, MaxWait: 5 * time.Second, Classes: 3, Reserved: reserved})
	if err != nil {
		t.Fatal(err)
	}
	var handoffs [3]int
	var violations []string
	s.onHandoffLocked = func(class int) {
		handoffs[class]++
		for c := range class {
			if s.queues[c].head != nil {
				violations = append(violations, fmt.Sprintf("slot handed to class %d while class %d waited", class, c))
			}
		}
	}

	serve := func(ctx context.Context, class int) (time.Duration, error) {
		start := time.Now()
		release, err := s.Acquire(ctx, class)
		if err != nil {
			return 0, err
		}
		time.Sleep(service)
		release()
		return time.Since(start), nil
	}
	runCritical := func() []time.Duration {
		var lat []time.Duration
		for range criticalReqs {
			d, err := serve(t.Context(), critical)
			if err != nil {
				t.Errorf("critical request refused: %v", err)
				continue
			}
			lat = append(lat, d)
		}
		return lat
	}

	unloaded := runCritical()

	var (
		stop         atomic.Bool
		wg           sync.WaitGroup
		bulkOK, shed atomic.Int64
	)
	for range bulkClients {
		wg.Go(func() {
			// Bounded in count as well as by stop.
			for i := 0; i < 5000 && !stop.Load(); i++ {
				if _, err := serve(t.Context(), bulk); err != nil {
					shed.Add(1)
					time.Sleep(100 * time.Microsecond) // a client backing off a little
				} else {
					bulkOK.Add(1)
				}
			}
		})
	}
	// Let the overload build before measuring.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, q := s.Stats(); q == 8 {
			break
		}
	}
	loaded := runCritical()
	stop.Store(true)
	wg.Wait()

	if len(violations) > 0 {
		t.Fatalf("priority order broken %d times, first: %s", len(violations), violations[0])
	}
	if shed.Load() == 0 {
		t.Fatal("no bulk request was shed: the workload did not overload the limit")
	}
	if handoffs[bulk] == 0 {
		t.Fatal("no bulk request was admitted from the queue: the workload did not queue")
	}
	if in, q := s.Stats(); in != 0 || q != 0 {
		t.Fatalf("Stats() = %d, %d after the workload; want 0, 0", in, q)
	}
	// With a slot reserved for one critical client, bulk can never hold
	// it: critical requests are admitted at once, never queued.
	if reserved > 0 && handoffs[critical] != 0 {
		t.Fatalf("%d critical requests queued with a reserved slot, want 0", handoffs[critical])
	}
	t.Logf("critical latency unloaded p50 %v p99 %v; with bulk overload p50 %v p99 %v; bulk served %d, shed %d; queued hand-offs per class %v",
		percentile(unloaded, 50), percentile(unloaded, 99), percentile(loaded, 50), percentile(loaded, 99),
		bulkOK.Load(), shed.Load(), handoffs)
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return d[min(len(d)-1, len(d)*p/100)]
}

func TestShedderReserved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := NewShedder(ShedConfig{Limit: 2, MaxQueue: 4, MaxWait: time.Minute, Classes: 3, Reserved: 1})
		if err != nil {
			t.Fatal(err)
		}
		releaseBulk := mustAcquire(t, s, bulk)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			order []string
		)
		// The free slot is reserved: a standard request queues.
		std := &queuedRequest{name: "std", class: standard}
		arrive(s, &wg, &mu, &order, std)
		if std.done {
			t.Fatal("standard request admitted into the reserved slot")
		}
		// A critical one takes it at once, and holds it.
		releaseCrit := mustAcquire(t, s, critical)
		// Freeing the critical slot leaves it free rather than handing it
		// to the standard waiter (one bulk still in flight).
		releaseCrit()
		synctest.Wait()
		if std.done {
			t.Fatal("standard request got the reserved slot on release")
		}
		if in, q := s.Stats(); in != 1 || q != 1 {
			t.Fatalf("Stats() = %d, %d; want 1 in flight, 1 queued", in, q)
		}
		// Freeing the bulk slot hands it to the standard waiter.
		releaseBulk()
		wg.Wait()
		if diff := cmp.Diff([]string{"std"}, order); diff != "" {
			t.Fatalf("admission order (-want +got):\n%s", diff)
		}
		if in, q := s.Stats(); in != 0 || q != 0 {
			t.Fatalf("Stats() = %d, %d at the end; want 0, 0", in, q)
		}
	})
}
