package h1

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// statsRouter forwards to addr and keeps each exchange's Stats.
type statsRouter struct {
	addr    string
	traffic *Traffic
	mu      sync.Mutex
	stats   []Stats
}

func (r *statsRouter) Route(*Request) Decision {
	st := new(Stats)
	return Decision{Addr: r.addr, Traffic: r.traffic, Stats: st, Done: func(int, error) {
		r.mu.Lock()
		r.stats = append(r.stats, *st)
		r.mu.Unlock()
	}}
}

func (r *statsRouter) wait(t *testing.T, n int) []Stats {
	t.Helper()
	waitFor(t, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.stats) >= n })
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Stats(nil), r.stats...)
}

// TestStats: Decision.Stats counts the decoded body bytes both ways, for
// fixed-length and chunked bodies, and the retries of a Traffic exchange.
func TestStats(t *testing.T) {
	var calls sync.Map
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/flaky" {
			if _, again := calls.LoadOrStore(r.Header.Get("x-id"), true); !again {
				w.WriteHeader(503)
				return
			}
		}
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // no Content-Length: chunked
		}
		_, _ = io.WriteString(w, strings.Repeat("r", int(n)*2))
	}))
	defer up.Close()
	addr := strings.TrimPrefix(up.URL, "http://")

	t.Run("fixed and chunked", func(t *testing.T) {
		r := &statsRouter{addr: addr}
		p := startProxy(t, r, Options{})
		c := &http.Client{Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		resp, err := c.Post("http://"+p.addr+"/fixed", "text/plain", strings.NewReader("0123456789"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		// A reader of unknown length makes the client send chunked.
		resp, err = c.Post("http://"+p.addr+"/chunked", "text/plain", io.MultiReader(strings.NewReader("abcde")))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got := r.wait(t, 2)
		want := []Stats{{BytesIn: 10, BytesOut: 20, Addr: addr}, {BytesIn: 5, BytesOut: 10, Addr: addr}}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("exchange %d: Stats %+v, want %+v", i, got[i], want[i])
			}
		}
	})

	t.Run("retries", func(t *testing.T) {
		r := &statsRouter{addr: addr, traffic: &Traffic{
			Attempts: 2,
			RetryOn:  func(status int, _ Failure) bool { return status == 503 },
			Next: func(int, Failure) (string, Upstream, bool) {
				return addr, nil, true
			},
		}}
		p := startProxy(t, r, Options{})
		req, _ := http.NewRequest("POST", "http://"+p.addr+"/flaky", strings.NewReader("xyz"))
		req.Header.Set("x-id", "one")
		c := &http.Client{Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got := r.wait(t, 1)[0]
		if want := (Stats{BytesIn: 3, BytesOut: 6, Retries: 1, Addr: addr}); got != want {
			t.Errorf("Stats %+v, want %+v", got, want)
		}
	})
}
