package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHealthRemoval: an endpoint whose proxy goes away, or whose application
// fails its readiness check, leaves the others' endpoint sets within seconds,
// and comes back when healthy again.
func TestHealthRemoval(t *testing.T) {
	t.Parallel()
	f := newMeshFixture(t)
	c := &http.Client{Timeout: 10 * time.Second}
	onlyFrom := func(want string) func() error {
		return func() error {
			for range 20 {
				code, body, err := get(c, f.url+"/")
				if err != nil || code != 200 {
					return fmt.Errorf("%d %q %v", code, body, err)
				}
				if got := strings.Fields(body)[0]; got != want {
					return fmt.Errorf("answered by %s, want only %s", got, want)
				}
			}
			return nil
		}
	}
	both := func() error {
		seen := map[string]bool{}
		for range 40 {
			code, body, err := get(c, f.url+"/")
			if err != nil || code != 200 {
				return fmt.Errorf("%d %q %v", code, body, err)
			}
			seen[strings.Fields(body)[0]] = true
		}
		if !seen["v1"] || !seen["v2"] {
			return fmt.Errorf("seen %v, want both", seen)
		}
		return nil
	}
	eventually(t, 20*time.Second, both)

	// The proxy of v2 goes away: its endpoint leaves.
	start := time.Now()
	f.p2.kill()
	eventually(t, 15*time.Second, onlyFrom("v1"))
	t.Logf("dead proxy removed from traffic after %s", time.Since(start).Round(100*time.Millisecond))

	// It comes back (same data dir, new process).
	f.p2 = startProxy(t, f.cp, proxyOpts{name: "backend-v2-0", labels: "app=backend,version=v2", host: f.b2, inbound: []string{"8080=15006"}})
	eventually(t, 20*time.Second, both)

	// The v1 application stops answering its readiness probe: v1 leaves.
	// The probe is a TCP connect to the app port, so closing the app's
	// listener fails it while its proxy stays connected.
	t.Run("application unready", func(t *testing.T) {
		// A second application server on its own host replaces the fixture's
		// v1 so the test can stop it.
		h := newHost()
		stopApp := httpServerStoppable(t, h.addr(8080), "v3")
		p3 := startProxy(t, f.cp, proxyOpts{name: "backend-v3-0", labels: "app=backend,version=v3", host: h, inbound: []string{"8080=15006"}})
		p3.waitReady(t)
		eventually(t, 20*time.Second, func() error {
			seen := map[string]bool{}
			for range 60 {
				_, body, _ := get(c, f.url+"/")
				seen[strings.Fields(body + " x")[0]] = true
			}
			if !seen["v3"] {
				return fmt.Errorf("v3 not in rotation yet: %v", seen)
			}
			return nil
		})
		stopApp()
		eventually(t, 15*time.Second, func() error {
			for range 40 {
				code, body, err := get(c, f.url+"/")
				if err != nil || code != 200 {
					return fmt.Errorf("%d %q %v", code, body, err)
				}
				if strings.HasPrefix(body, "v3") {
					return fmt.Errorf("unready v3 still served")
				}
			}
			return nil
		})

		// The application answers again: v3 comes back into rotation.
		httpServer(t, h.addr(8080), "v3")
		eventually(t, 20*time.Second, func() error {
			for range 60 {
				if _, body, _ := get(c, f.url+"/"); strings.HasPrefix(body, "v3") {
					return nil
				}
			}
			return fmt.Errorf("ready again, but v3 not back in rotation")
		})
	})
}

func httpServerStoppable(t *testing.T, addr, name string) (stop func()) {
	t.Helper()
	var once sync.Once
	srv := newNamedServer(t, addr, name)
	return func() { once.Do(func() { srv.Close() }) }
}

// TestProxyRestartFromDisk: a proxy restarted while the control plane is
// down serves with the configuration it accepted last.
func TestProxyRestartFromDisk(t *testing.T) {
	t.Parallel()
	f := newMeshFixture(t)
	c := &http.Client{Timeout: 10 * time.Second}
	eventually(t, 20*time.Second, func() error {
		code, _, err := get(c, f.url+"/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	dataDir := filepath.Join(t.TempDir(), "frontend")
	// Restart the client proxy once with a known data dir so it caches there.
	f.pf.kill()
	f.pf = startProxy(t, f.cp, proxyOpts{name: "frontend-0", labels: "app=frontend", host: f.fe, outbound: []string{"backend:80=10001"}, dataDir: dataDir})
	f.pf.waitReady(t)
	eventually(t, 20*time.Second, func() error {
		if entries, _ := os.ReadDir(dataDir); len(entries) == 0 {
			return fmt.Errorf("no cached config in %s yet", dataDir)
		}
		code, _, err := get(c, f.url+"/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})

	f.cp.kill()
	f.pf.kill()
	f.pf = startProxy(t, f.cp, proxyOpts{name: "frontend-0", labels: "app=frontend", host: f.fe, outbound: []string{"backend:80=10001"}, dataDir: dataDir})
	// The backend proxies still run with their config; the restarted client
	// proxy has only its disk.
	eventually(t, 20*time.Second, func() error {
		for range 10 {
			code, body, err := get(c, f.url+"/")
			if err != nil || code != 200 {
				return fmt.Errorf("%d %q %v", code, body, err)
			}
		}
		return nil
	})
}

// TestBadInputRefusedWhole: an invalid resource is refused with every bad
// field named, with a non-zero exit, and nothing of it is stored.
func TestBadInputRefusedWhole(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	bad := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad}
spec:
  parentRefs: [{group: "", kind: Service, name: backend, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: "no-slash"}}]
    backendRefs:
    - {name: backend-v1, port: 80, weight: 10}
    - {name: backend-v2, port: 0, weight: -1}
`
	out, code := c.verge(t, bad, "apply", "-f", "-")
	if code == 0 {
		t.Fatalf("invalid route accepted:\n%s", out)
	}
	for _, want := range []string{"spec.rules[0].backendRefs[1].weight", "spec.rules[0].backendRefs[1].port", "spec.rules[0].matches[0].path.value"} {
		if !strings.Contains(out, want) {
			t.Errorf("error does not name %s:\n%s", want, out)
		}
	}
	if out, code := c.verge(t, "", "get", "httproutes", "bad"); code == 0 {
		t.Errorf("refused route was stored:\n%s", out)
	}

	// The API answers 422 with every cause.
	req, _ := http.NewRequest(http.MethodPut, c.api+"/apis/verge.dev/v1alpha1/namespaces/default/services/web",
		strings.NewReader(`{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"web"},"spec":{"ports":[{"port":0},{"port":70000,"protocol":"QUIC"}]}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.adminToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Code    int
		Details struct{ Causes []struct{ Field string } }
	}
	json.NewDecoder(resp.Body).Decode(&st)
	if resp.StatusCode != http.StatusUnprocessableEntity || len(st.Details.Causes) < 3 {
		t.Errorf("PUT invalid service: %s, causes %+v; want 422 with ≥3 causes", resp.Status, st.Details.Causes)
	}

	// Garbage is a clear 400, not a crash.
	req2, _ := http.NewRequest(http.MethodPost, c.api+"/apis/verge.dev/v1alpha1/namespaces/default/services", strings.NewReader("\x00\x01{{{"))
	req2.Header.Set("Content-Type", "application/json")
	req2.Header.Set("Authorization", "Bearer "+c.adminToken(t))
	resp2, err := http.DefaultClient.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadRequest {
		t.Errorf("garbage body: %s, want 400", resp2.Status)
	}
}

// TestSIGTERMDrains: a proxy told to stop finishes the request in flight,
// then exits cleanly.
func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	f := newMeshFixture(t)
	c := &http.Client{Timeout: 10 * time.Second}
	eventually(t, 20*time.Second, func() error {
		code, _, err := get(c, f.url+"/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, body, err := get(c, f.url+"/slow")
		done <- result{code, body, err}
	}()
	// Stop the client proxy once the slow request is in flight there.
	eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(f.pf.admin + "/stats/prometheus")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `verge_proxy_http_active_requests{listener="outbound_10001"} 1`) {
			return fmt.Errorf("slow request not in flight yet")
		}
		return nil
	})
	if err := f.pf.stop(15 * time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	r := <-done
	if r.err != nil || r.code != 200 {
		t.Fatalf("request in flight during SIGTERM: %d %q %v", r.code, r.body, r.err)
	}
	if _, _, err := get(c, f.url+"/"); err == nil {
		t.Errorf("stopped proxy still accepts requests")
	}
}
