package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// Loopback addresses of the Verge cases. Each process gets its own IP so
// the fixed ports Verge's flags take never clash with anything else.
const (
	ipScaleProxy = "127.88.0.5"
)

// vergeIPs are the loopback addresses of one Verge environment.
type vergeIPs struct{ control, server, client string }

// The plaintext environment (a control plane run with
// --insecure-allow-anonymous: proxies without identity, no mTLS) and the
// zero-trust one (join tokens, SVIDs, MeshTLS STRICT), side by side in one
// run so that the mTLS case is compared with the plaintext one under the
// same machine state.
var (
	plainIPs = vergeIPs{control: "127.88.0.4", server: "127.88.0.2", client: "127.88.0.3"}
	mtlsIPs  = vergeIPs{control: "127.88.0.8", server: "127.88.0.6", client: "127.88.0.7"}
	// policyIPs is the plaintext environment again with issue 5's
	// realistic policy set applied (policySet), compared with plainIPs'.
	policyIPs = vergeIPs{control: "127.88.0.12", server: "127.88.0.10", client: "127.88.0.11"}
)

// binaries are the Verge programs the harness built, stripped (run) and
// unstripped (sizes only).
type binaries struct {
	verge, vergeProxy         string
	vergeFull, vergeProxyFull string
}

// buildVerge builds cmd/verge and cmd/verge-proxy from the module at root
// into dir, stripped (-trimpath -ldflags "-s -w") and unstripped.
func buildVerge(ctx context.Context, root, dir string) (binaries, error) {
	b := binaries{
		verge:          filepath.Join(dir, "verge"),
		vergeProxy:     filepath.Join(dir, "verge-proxy"),
		vergeFull:      filepath.Join(dir, "verge.unstripped"),
		vergeProxyFull: filepath.Join(dir, "verge-proxy.unstripped"),
	}
	builds := [][]string{
		{"build", "-trimpath", "-ldflags", "-s -w", "-o", b.verge, "./cmd/verge"},
		{"build", "-trimpath", "-ldflags", "-s -w", "-o", b.vergeProxy, "./cmd/verge-proxy"},
		{"build", "-trimpath", "-o", b.vergeFull, "./cmd/verge"},
		{"build", "-trimpath", "-o", b.vergeProxyFull, "./cmd/verge-proxy"},
	}
	for _, args := range builds {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		// Static binaries, as they ship to devices.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go %v: %w\n%s", args, err, out)
		}
	}
	return b, nil
}

// vergeEnv is a running control plane with a server-side and a client-side
// proxy in front of the backend.
type vergeEnv struct {
	api, xds string
	// admin is the control plane's admin token; secure says whether the
	// proxies have identities and talk mTLS.
	admin          string
	secure         bool
	cp             *proc
	server, client *proc
	serverAdmin    string
	clientAdmin    string
	// Inbound listeners of the server-side proxy and outbound listeners of
	// the client-side proxy.
	inHTTP, inGRPC   string
	outHTTP, outGRPC string
}

// Ports of the mesh services in front of the backend.
const (
	svcHTTPPort = 80
	svcGRPCPort = 9000
)

// startVerge starts the control plane, applies the backend's Services and
// then resources (the policy set, a Telemetry: before any proxy starts, so
// the proxies' first configuration carries them) and starts the two
// proxies; it returns once both report ready.
func startVerge(ctx context.Context, dir, name string, ips vergeIPs, secure bool, resources []apiResource, bin binaries, proxyBin string, backendHTTP, backendGRPC string, procs *[]*proc) (*vergeEnv, error) {
	env := &vergeEnv{secure: secure}
	dataDir := filepath.Join(dir, name+"-cp-data")
	args := []string{bin.verge, "control-plane",
		"--api-addr", ips.control + ":0", "--xds-addr", ips.control + ":0", "--sync-addr", ips.control + ":0",
		"--data-dir", dataDir, "--log-format", "json"}
	if !secure {
		args = append(args, "--insecure-allow-anonymous")
	}
	cp, err := startProc(dir, name+"-control-plane", args...)
	if err != nil {
		return nil, err
	}
	*procs = append(*procs, cp)
	env.cp = cp
	line, err := cp.waitLine(ctx, `"control plane ready"`, 60*time.Second)
	if err != nil {
		return nil, err
	}
	var ready struct{ API, XDS string }
	if err := json.Unmarshal([]byte(line), &ready); err != nil || ready.API == "" || ready.XDS == "" {
		return nil, fmt.Errorf("control plane ready line %q: want api and xds attributes", line)
	}
	env.api, env.xds = "http://"+ready.API, ready.XDS
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	if err != nil {
		return nil, fmt.Errorf("read the control plane's admin token: %w", err)
	}
	env.admin = strings.TrimSpace(string(tok))

	bh, bhPort, err := splitHostPort(backendHTTP)
	if err != nil {
		return nil, err
	}
	_, bgPort, err := splitHostPort(backendGRPC)
	if err != nil {
		return nil, err
	}
	for _, svc := range []struct {
		name, protocol string
		port, target   int
	}{{"backend", "HTTP", svcHTTPPort, bhPort}, {"backend-grpc", "GRPC", svcGRPCPort, bgPort}} {
		obj := map[string]any{
			"apiVersion": "verge.dev/v1alpha1", "kind": "Service",
			"metadata": map[string]any{"name": svc.name, "namespace": "default"},
			"spec": map[string]any{
				"selector": map[string]string{"app": "backend"},
				"ports":    []map[string]any{{"port": svc.port, "targetPort": svc.target, "protocol": svc.protocol}},
			},
		}
		if err := putResource(ctx, http.DefaultClient, env, "default", "services", svc.name, obj); err != nil {
			return nil, err
		}
	}
	for _, r := range resources {
		meta := r.obj["metadata"].(map[string]any)
		if err := putResource(ctx, http.DefaultClient, env, meta["namespace"].(string), r.plural, meta["name"].(string), r.obj); err != nil {
			return nil, err
		}
	}
	if secure {
		obj := map[string]any{
			"apiVersion": "verge.dev/v1alpha1", "kind": "MeshTLS",
			"metadata": map[string]any{"name": "mesh", "namespace": "verge-system"},
			"spec":     map[string]any{"mode": "STRICT"},
		}
		if err := putResource(ctx, http.DefaultClient, env, "verge-system", "meshtlses", "mesh", obj); err != nil {
			return nil, err
		}
	}

	in, err := freePorts(ips.server, 2)
	if err != nil {
		return nil, err
	}
	out, err := freePorts(ips.client, 2)
	if err != nil {
		return nil, err
	}
	env.inHTTP = net.JoinHostPort(ips.server, strconv.Itoa(in[0]))
	env.inGRPC = net.JoinHostPort(ips.server, strconv.Itoa(in[1]))
	env.outHTTP = net.JoinHostPort(ips.client, strconv.Itoa(out[0]))
	env.outGRPC = net.JoinHostPort(ips.client, strconv.Itoa(out[1]))

	env.server, env.serverAdmin, err = startVergeProxy(ctx, dir, proxyBin, env, name+"-server", "app=backend", ips.server, bh, procs,
		"--inbound", fmt.Sprintf("%d=%d", bhPort, in[0]), "--inbound", fmt.Sprintf("%d=%d", bgPort, in[1]))
	if err != nil {
		return nil, err
	}
	env.client, env.clientAdmin, err = startVergeProxy(ctx, dir, proxyBin, env, name+"-client", "app=bench-client", ips.client, ips.client, procs,
		"--outbound", fmt.Sprintf("backend:%d=%d", svcHTTPPort, out[0]),
		"--outbound", fmt.Sprintf("backend-grpc:%d=%d", svcGRPCPort, out[1]))
	if err != nil {
		return nil, err
	}
	return env, nil
}

// startVergeProxy starts a proxy of workload name on ip and waits for its
// admin /ready; it returns the process and the admin base URL.
func startVergeProxy(ctx context.Context, dir, bin string, env *vergeEnv, name, labels, ip, appIP string, procs *[]*proc, extra ...string) (*proc, string, error) {
	args := []string{bin}
	if filepath.Base(bin) == "verge" {
		args = append(args, "proxy")
	}
	args = append(args, "--server", env.api, "--xds-addr", env.xds, "--name", name, "--namespace", "default",
		"--labels", labels, "--address", ip, "--app-address", appIP, "--outbound-address", ip,
		"--admin-addr", ip+":0", "--data-dir", filepath.Join(dir, name+"-data"), "--log-format", "json")
	if env.secure {
		tok, err := joinToken(ctx, env, name)
		if err != nil {
			return nil, "", err
		}
		args = append(args, "--service-account", name, "--join-token", tok)
	}
	args = append(args, extra...)
	p, err := startProc(dir, "verge-proxy-"+name, args...)
	if err != nil {
		return nil, "", err
	}
	*procs = append(*procs, p)
	line, err := p.waitLine(ctx, `"proxy started"`, 60*time.Second)
	if err != nil {
		return nil, "", err
	}
	var started struct{ Admin string }
	if err := json.Unmarshal([]byte(line), &started); err != nil || started.Admin == "" {
		return nil, "", fmt.Errorf("proxy %s started line %q: want an admin attribute", name, line)
	}
	admin := "http://" + started.Admin
	if err := waitFor(ctx, "proxy "+name+" /ready", 60*time.Second, httpOK(admin+"/ready")); err != nil {
		return nil, "", fmt.Errorf("%w; log: %s", err, p.tail())
	}
	return p, admin, nil
}

// joinToken creates a join token for service account sa through the API.
func joinToken(ctx context.Context, env *vergeEnv, sa string) (string, error) {
	body := fmt.Sprintf(`{"serviceAccount":%q,"namespace":"default","ttl":"1h"}`, sa)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, env.api+"/api/v1/tokens", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+env.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("create join token for %s: %w", sa, err)
	}
	defer resp.Body.Close()
	var created struct{ Token string }
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("create join token for %s: %s: %s", sa, resp.Status, bytes.TrimSpace(msg))
	}
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil || created.Token == "" {
		return "", fmt.Errorf("create join token for %s: bad answer: %v", sa, err)
	}
	return created.Token, nil
}

// putResource PUTs obj as JSON to the control plane's REST API.
func putResource(ctx context.Context, c *http.Client, env *vergeEnv, ns, plural, name string, obj any) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", plural, name, err)
	}
	// The object's own apiVersion names its group (the Gateway API's
	// routes are not under verge.dev).
	apiVersion := "verge.dev/v1alpha1"
	if m, ok := obj.(map[string]any); ok {
		if v, ok := m["apiVersion"].(string); ok && v != "" {
			apiVersion = v
		}
	}
	url := fmt.Sprintf("%s/apis/%s/namespaces/%s/%s/%s", env.api, apiVersion, ns, plural, name)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", plural, name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+env.admin)
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", plural, name, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("put %s/%s: status %d: %s", plural, name, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// Scale of the idle-memory measurement.
const (
	scaleServices  = 100
	scaleEndpoints = 10
)

// scaleResult is the idle RSS of a proxy holding many services.
// scaleSettle is how long the scale proxy is left idle after its config is
// complete before its memory is read.
const scaleSettle = 10 * time.Second

type scaleResult struct {
	rss       int64
	anon      int64
	clusters  int
	endpoints int
	wait      time.Duration
}

// measureScale applies scaleServices Services of scaleEndpoints Workloads
// each (no proxies behind them), starts one more proxy with an outbound
// upstream per service, waits until its config dump holds them all, and
// reads its RSS.
func measureScale(ctx context.Context, dir, proxyBin string, env *vergeEnv, procs *[]*proc) (scaleResult, error) {
	var res scaleResult
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer c.CloseIdleConnections()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for s := range scaleServices {
		svc := fmt.Sprintf("scale-%03d", s)
		g.Go(func() error {
			return putResource(gctx, c, env, "default", "services", svc, map[string]any{
				"apiVersion": "verge.dev/v1alpha1", "kind": "Service",
				"metadata": map[string]any{"name": svc, "namespace": "default"},
				"spec": map[string]any{
					"selector": map[string]string{"app": svc},
					"ports":    []map[string]any{{"port": 8080, "protocol": "HTTP"}},
				},
			})
		})
		for e := range scaleEndpoints {
			name := fmt.Sprintf("%s-%d", svc, e)
			addr := fmt.Sprintf("127.89.%d.%d", s, e+1)
			g.Go(func() error {
				return putResource(gctx, c, env, "default", "workloads", name, map[string]any{
					"apiVersion": "verge.dev/v1alpha1", "kind": "Workload",
					"metadata": map[string]any{"name": name, "namespace": "default", "labels": map[string]string{"app": svc}},
					"spec":     map[string]any{"address": addr, "ports": []map[string]any{{"port": 8080}}},
				})
			})
		}
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	ports, err := freePorts(ipScaleProxy, scaleServices)
	if err != nil {
		return res, err
	}
	var extra []string
	for s, p := range ports {
		extra = append(extra, "--outbound", fmt.Sprintf("scale-%03d:8080=%d", s, p))
	}
	start := time.Now()
	p, admin, err := startVergeProxy(ctx, dir, proxyBin, env, "bench-scale", "app=bench-scale", ipScaleProxy, ipScaleProxy, procs, extra...)
	if err != nil {
		return res, err
	}
	// Ready means some config arrived, not necessarily all of it: wait
	// until every service's cluster holds its endpoints (or report how far
	// it got).
	err = waitFor(ctx, "scale proxy config", 60*time.Second, func() error {
		cl, ep, err := countClusters(admin)
		res.clusters, res.endpoints = cl, ep
		if err != nil {
			return err
		}
		if cl < scaleServices || ep < scaleServices*scaleEndpoints {
			return fmt.Errorf("config dump has %d clusters with %d endpoints, want %d with %d", cl, ep, scaleServices, scaleServices*scaleEndpoints)
		}
		return nil
	})
	res.wait = time.Since(start)
	// "Idle" is the steady state: the proxy settles after a configuration
	// change (it returns free heap and start-up pages, see
	// internal/memtrim), so the harness leaves it alone for scaleSettle
	// before reading its memory.
	if err == nil {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(scaleSettle):
		}
	}
	// The RSS is worth reporting even when the config is incomplete; the
	// error says how incomplete.
	var rerr error
	res.rss, rerr = rss(p.pid())
	res.anon, _ = rssAnon(p.pid())
	return res, errors.Join(err, rerr)
}

// countClusters reads the proxy's /config_dump and counts the clusters
// whose name mentions a scale service, and their endpoints.
func countClusters(admin string) (clusters, endpoints int, err error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(admin + "/config_dump")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var dump struct {
		Snapshot *struct {
			Clusters map[string]struct {
				Endpoints []json.RawMessage
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		return 0, 0, fmt.Errorf("decode config dump: %w", err)
	}
	if dump.Snapshot == nil {
		return 0, 0, nil
	}
	for name, cl := range dump.Snapshot.Clusters {
		if !bytes.Contains([]byte(name), []byte("scale-")) {
			continue
		}
		clusters++
		endpoints += len(cl.Endpoints)
	}
	return clusters, endpoints, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("split address %q: %w", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("split address %q: %w", addr, err)
	}
	return h, n, nil
}

// fileSize is the size of path in bytes, or -1.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// apiResource is one object the harness applies and its API plural; the
// object's metadata names its namespace.
type apiResource struct {
	plural string
	obj    map[string]any
}

// policySet is issue 5's "realistic policy set" on the benchmark's
// services: an HTTPRoute of 20 rules (the benchmark's requests match the
// last, so every rule is tried), retries, a circuit breaker, a rate limit
// and outlier detection, with limits high enough that none of them refuses
// a request of the benchmark: what is measured is their cost, not their
// effect. The gRPC service gets the same DestinationPolicy sections.
func policySet() []apiResource {
	rules := make([]map[string]any, 0, 20)
	for i := 1; i < 20; i++ {
		rules = append(rules, map[string]any{
			"name":        fmt.Sprintf("r%d", i),
			"matches":     []map[string]any{{"path": map[string]any{"type": "PathPrefix", "value": fmt.Sprintf("/api/v%d", i)}, "headers": []map[string]any{{"name": "x-tenant", "value": fmt.Sprintf("t%d", i)}}}},
			"backendRefs": []map[string]any{{"name": "backend", "port": svcHTTPPort}},
		})
	}
	rules = append(rules, map[string]any{
		"name":        "default",
		"matches":     []map[string]any{{"path": map[string]any{"type": "PathPrefix", "value": "/"}}},
		"backendRefs": []map[string]any{{"name": "backend", "port": svcHTTPPort}},
	})
	route := map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": "backend", "namespace": "default"},
		"spec": map[string]any{
			"parentRefs": []map[string]any{{"group": "", "kind": "Service", "name": "backend", "port": svcHTTPPort}},
			"rules":      rules,
		},
	}
	out := []apiResource{{"httproutes", route}}
	for _, svc := range []string{"backend", "backend-grpc"} {
		out = append(out, apiResource{"destinationpolicies", map[string]any{
			"apiVersion": "verge.dev/v1alpha1", "kind": "DestinationPolicy",
			"metadata": map[string]any{"name": svc + "-policy", "namespace": "default"},
			"spec": map[string]any{
				"targetRef":        map[string]any{"kind": "Service", "name": svc},
				"retry":            map[string]any{"attempts": 2, "retryOn": []string{"5xx", "connect-failure", "reset"}},
				"circuitBreaker":   map[string]any{"maxConnections": 100000, "maxPendingRequests": 100000, "maxRequests": 100000, "maxRetries": 1000},
				"outlierDetection": map[string]any{"consecutive5xx": 5},
				"rateLimit":        map[string]any{"requestsPerSecond": 1000000, "burst": 1000000},
			},
		}})
	}
	return out
}
