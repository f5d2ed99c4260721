package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

const grpcRetryMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: gflaky}
spec:
  selector: {app: gflaky}
  ports: [{port: 9000, targetPort: 9000, protocol: GRPC}]
---
apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: gflaky-retry}
spec:
  targetRef: {kind: Service, name: gflaky}
  retry:
    attempts: 2
    retryOn: [unavailable]
    budget: {percent: 100, minRetriesPerSecond: 10}
`

// flakyGRPC answers every other EmptyCall with UNAVAILABLE.
type flakyGRPC struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64
}

func (f *flakyGRPC) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	if f.calls.Add(1)%2 == 1 {
		return nil, status.Error(codes.Unavailable, "flaky: try again")
	}
	return &testgrpc.Empty{}, nil
}

// TestGRPCRetries: a gRPC service failing every other call with
// UNAVAILABLE is seen healthy through a retry policy on the gRPC status
// (read from the trailers-only response), over mTLS between the proxies.
func TestGRPCRetries(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	srvHost := newHost()
	lis, err := net.Listen("tcp", srvHost.addr(9000))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	flaky := &flakyGRPC{}
	testgrpc.RegisterTestServiceServer(srv, flaky)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	c.apply(t, grpcRetryMesh)
	server := startProxy(t, c, proxyOpts{name: "gflaky", labels: "app=gflaky", host: srvHost, inbound: []string{"9000=15090"}})
	client, fe := startClient(t, c, "app=client", "gflaky:9000=10006")
	waitAllReady(t, server, client)

	conn, err := grpc.NewClient(fe.addr(10006), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := testgrpc.NewTestServiceClient(conn)
	call := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := tc.EmptyCall(ctx, &testgrpc.Empty{})
		return err
	}
	// The retry policy reaches the client proxy with the rest of its
	// configuration; once one call succeeds after a failure, it is in.
	eventually(t, 30*time.Second, func() error {
		for range 4 {
			if err := call(); err != nil {
				return err
			}
		}
		return nil
	})

	const n = 100
	before := flaky.calls.Load()
	got := map[codes.Code]int{}
	for range n {
		got[status.Code(call())]++
	}
	calls := flaky.calls.Load() - before
	t.Logf("%d calls: %v; the server saw %d (every other one failing)", n, got, calls)
	if got[codes.OK] != n {
		t.Errorf("%d calls through a retry on UNAVAILABLE: %v, want all OK", n, got)
	}
	if calls <= n {
		t.Errorf("the server saw %d calls for %d: nothing was retried", calls, n)
	}
}

const sourceLimitMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: persource}
spec:
  selector: {app: persource}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: persource-limit}
spec:
  targetRef: {kind: Service, name: persource}
  rateLimit: {requestsPerSecond: 1, burst: 4, by: source}
`

// TestRateLimitBySource: a rate limit keyed by the caller's identity gives
// each caller (here two proxies with SVIDs of different service accounts)
// its own bucket: one caller spending its burst does not starve the other.
func TestRateLimitBySource(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	srv := newHost()
	httpServer(t, srv.addr(8080), "persource")
	c.apply(t, sourceLimitMesh)
	ps := startProxy(t, c, proxyOpts{name: "persource", labels: "app=persource", host: srv, sa: "persource", inbound: []string{"8080=15006"}})
	ha, hb := newHost(), newHost()
	pa := startProxy(t, c, proxyOpts{name: "caller-a", labels: "app=caller-a", host: ha, sa: "caller-a", outbound: []string{"persource:80=10001"}})
	pb := startProxy(t, c, proxyOpts{name: "caller-b", labels: "app=caller-b", host: hb, sa: "caller-b", outbound: []string{"persource:80=10001"}})
	waitAllReady(t, ps, pa, pb)
	hc := &http.Client{Timeout: 20 * time.Second}
	ua, ub := "http://"+ha.addr(10001)+"/", "http://"+hb.addr(10001)+"/"
	for _, u := range []string{ua, ub} {
		eventually(t, 20*time.Second, func() error {
			code, body, err := get(hc, u)
			if err != nil || code != 200 {
				return fmt.Errorf("GET %s: %d %q %v", u, code, body, err)
			}
			return nil
		})
	}
	time.Sleep(4500 * time.Millisecond) // refill both buckets (pacing, not synchronisation)

	burst := func(u string, n int) map[int]int {
		got := map[int]int{}
		for range n {
			code, _, err := get(hc, u)
			if err != nil {
				t.Fatalf("GET %s: %v", u, err)
			}
			got[code]++
		}
		return got
	}
	a := burst(ua, 8)
	b := burst(ub, 4)
	t.Logf("caller a, 8 quick requests: %v; then caller b, 4: %v", a, b)
	if a[http.StatusTooManyRequests] == 0 || a[200] < 4 {
		t.Errorf("caller a: %v, want its burst of 4 (and a refill at most) then 429", a)
	}
	if b[200] != 4 {
		t.Errorf("caller b after a spent its bucket: %v, want all 4 admitted (a bucket of its own)", b)
	}
}
