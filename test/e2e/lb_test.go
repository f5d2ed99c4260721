package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

const lbService = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
`

const lbPolicy = `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-lb}
spec:
  targetRef: {kind: Service, name: backend}
  loadBalancer:
    policy: LeastRequest
`

// lbCluster is the client proxy's cluster for the backend service.
const lbCluster = "backend.default.mesh:80"

// holdServer answers every request with its name at once, except /hold,
// which it holds until release is called: a controllable number of
// requests in flight on one endpoint, with no timing involved.
type holdServer struct {
	name string

	mu      sync.Mutex
	gate    chan struct{} // closed by release; replaced for the next holds
	waiting int           // /hold requests now held
}

func startHoldServer(t *testing.T, addr, name string) *holdServer {
	t.Helper()
	s := &holdServer{name: name, gate: make(chan struct{})}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(lis)
	t.Cleanup(func() {
		s.release()
		srv.Close()
	})
	return s
}

func (s *holdServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hold" {
		s.mu.Lock()
		gate := s.gate
		s.waiting++
		s.mu.Unlock()
		select {
		case <-gate:
		case <-r.Context().Done():
		}
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
	}
	fmt.Fprint(w, s.name)
}

// release lets every held request finish.
func (s *holdServer) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.gate)
	s.gate = make(chan struct{})
}

func (s *holdServer) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting
}

// lbFixture is a control plane, the backend service on two endpoints a and
// b (each behind its proxy, each a holdServer) and a client proxy with an
// outbound port for the backend.
type lbFixture struct {
	cp     *cp
	a, b   *holdServer
	client *proxy
	url    string
	http   *http.Client
}

func newLBFixture(t *testing.T) *lbFixture {
	t.Helper()
	ha, hb, fe := newHost(), newHost(), newHost()
	f := &lbFixture{cp: startCP(t, ""), a: startHoldServer(t, ha.addr(8080), "a"), b: startHoldServer(t, hb.addr(8080), "b"),
		http: &http.Client{Timeout: 60 * time.Second}}
	f.cp.apply(t, lbService)
	pa := startProxy(t, f.cp, proxyOpts{name: "backend-a", labels: "app=backend", host: ha, inbound: []string{"8080=15006"}})
	pb := startProxy(t, f.cp, proxyOpts{name: "backend-b", labels: "app=backend", host: hb, inbound: []string{"8080=15006"}})
	f.client = startProxy(t, f.cp, proxyOpts{name: "client", labels: "app=client", host: fe, outbound: []string{"backend:80=10001"}})
	for _, p := range []*proxy{pa, pb, f.client} {
		p.waitReady(t)
	}
	f.url = "http://" + fe.addr(10001)
	return f
}

// clusterLB reads the backend cluster's policy and endpoint count from the
// client proxy's /config_dump.
func (f *lbFixture) clusterLB() (config.LBPolicy, int, error) {
	resp, err := http.Get(f.client.admin + "/config_dump")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var dump struct {
		Snapshot *struct {
			Clusters map[string]struct {
				LB        config.LBPolicy
				Endpoints []json.RawMessage
			}
		} `json:"snapshot"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		return 0, 0, fmt.Errorf("decode /config_dump: %w", err)
	}
	if dump.Snapshot == nil {
		return 0, 0, fmt.Errorf("/config_dump: no snapshot yet")
	}
	c, ok := dump.Snapshot.Clusters[lbCluster]
	if !ok {
		return 0, 0, fmt.Errorf("/config_dump: no cluster %s", lbCluster)
	}
	return c.LB, len(c.Endpoints), nil
}

func (f *lbFixture) waitLB(t *testing.T, want config.LBPolicy) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		lb, n, err := f.clusterLB()
		if err != nil {
			return err
		}
		if lb != want || n != 2 {
			return fmt.Errorf("cluster %s: lb %d with %d endpoints, want lb %d with 2", lbCluster, lb, n, want)
		}
		return nil
	})
}

// skew holds requests on endpoint a (at least minHeld of them), lets those
// that went to b finish, and then sends n requests one after another,
// counting which endpoint answers each. Under least request a, with its
// held requests, is never picked; under round robin it gets every other
// request. Every held request is released before skew returns.
func (f *lbFixture) skew(t *testing.T, minHeld, n int) map[string]int {
	t.Helper()
	var (
		wg         sync.WaitGroup
		doneB      atomic.Int64 // held requests b has answered
		holdErrors atomic.Int64
	)
	defer func() {
		f.a.release()
		f.b.release()
		wg.Wait()
	}()
	// Each /hold goes to a or b and stays there, so every round adds one
	// to exactly one of them. Both hold, so under either policy a reaches
	// minHeld within about 2*minHeld rounds.
	for i := 0; f.a.held() < minHeld && i < 10*minHeld; i++ {
		before := f.a.held() + f.b.held()
		wg.Go(func() {
			code, body, err := get(f.http, f.url+"/hold")
			switch {
			case err != nil || code != http.StatusOK:
				holdErrors.Add(1)
			case body == "b":
				doneB.Add(1)
			}
		})
		eventually(t, 20*time.Second, func() error {
			if holdErrors.Load() > 0 {
				t.Fatalf("a /hold request failed")
			}
			if got := f.a.held() + f.b.held(); got <= before {
				return fmt.Errorf("held requests: %d, want more than %d", got, before)
			}
			return nil
		})
	}
	if f.a.held() < minHeld {
		t.Fatalf("endpoint a holds %d requests, want %d", f.a.held(), minHeld)
	}
	heldB := int64(f.b.held())
	f.b.release()
	eventually(t, 20*time.Second, func() error {
		if got := doneB.Load(); got != heldB {
			return fmt.Errorf("%d of b's %d held requests answered", got, heldB)
		}
		return nil
	})

	counts := map[string]int{}
	for range n {
		code, body, err := get(f.http, f.url+"/")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /: %d %q %v", code, body, err)
		}
		counts[body]++
	}
	return counts
}

// TestDestinationPolicyLeastRequest applies a DestinationPolicy that makes
// the backend LeastRequest and checks it end to end: the CLI lists it, the
// client proxy's cluster switches policy, and requests avoid the endpoint
// with requests in flight, which round robin, before the policy, does not.
func TestDestinationPolicyLeastRequest(t *testing.T) {
	t.Parallel()
	f := newLBFixture(t)

	// Round robin, the default, balances over both endpoints.
	f.waitLB(t, config.LBRoundRobin)
	eventually(t, 20*time.Second, func() error {
		counts := map[string]int{}
		for range 10 {
			code, body, err := get(f.http, f.url+"/")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("GET /: %d %q %v", code, body, err)
			}
			counts[body]++
		}
		if counts["a"] == 0 || counts["b"] == 0 {
			return fmt.Errorf("not balanced over both endpoints yet: %v", counts)
		}
		return nil
	})
	const held, n = 4, 40
	got := f.skew(t, held, n)
	t.Logf("round robin, %d held on a: %v", held, got)
	if got["a"] == 0 || got["a"]+got["b"] != n {
		t.Fatalf("round robin with %d requests held on a: %v, want a share for a", held, got)
	}

	f.cp.apply(t, lbPolicy)
	out, code := f.cp.verge(t, "", "get", "destinationpolicies")
	if code != 0 || !strings.Contains(out, "backend-lb") || !strings.Contains(out, "service/backend") || !strings.Contains(out, "LeastRequest") {
		t.Errorf("verge get destinationpolicies: exit %d:\n%s", code, out)
	}
	f.waitLB(t, config.LBLeastRequest)

	// a holds at least 4 requests and b none (or the last one, finishing):
	// the power of two choices between the two always picks b.
	got = f.skew(t, held, n)
	t.Logf("least request, %d held on a: %v", held, got)
	if got["b"] != n {
		t.Errorf("least request with %d requests held on a: %v, want all %d on b", held, got, n)
	}

	// Deleting the policy brings round robin back.
	if out, code := f.cp.verge(t, "", "delete", "dp", "backend-lb"); code != 0 {
		t.Fatalf("verge delete dp: exit %d: %s", code, out)
	}
	f.waitLB(t, config.LBRoundRobin)
}
