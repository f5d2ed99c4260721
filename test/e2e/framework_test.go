package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/svid"
)

// proc is one verge process started by a test.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	log  string

	mu    sync.Mutex
	lines []map[string]any // parsed JSON log lines
	raced bool             // the race detector reported in this process
	done  chan struct{}
}

// startVerge starts `verge args...` with its stderr parsed as JSON log lines
// and copied to a log file under the test's artifact directory. The process
// is killed (its whole group) in t.Cleanup, and its log is shown if the test
// failed.
func startVerge(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.ArtifactDir(), name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vergeBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer f.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			f.Write(line)
			f.Write([]byte{'\n'})
			if bytes.Contains(line, []byte("WARNING: DATA RACE")) {
				p.mu.Lock()
				p.raced = true
				p.mu.Unlock()
			}
			var m map[string]any
			if json.Unmarshal(line, &m) == nil {
				p.mu.Lock()
				p.lines = append(p.lines, m)
				p.mu.Unlock()
			}
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		p.kill()
		p.mu.Lock()
		raced := p.raced
		p.mu.Unlock()
		if raced {
			t.Errorf("the race detector reported a data race in %s", name)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("--- log of %s (%s) ---\n%s", name, logPath, b)
		}
	})
	return p
}

// kill sends SIGKILL to the process group and waits for it.
func (p *proc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to limit for a clean exit.
func (p *proc) stop(limit time.Duration) error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.cmd.ProcessState != nil && !p.cmd.ProcessState.Success() {
			return fmt.Errorf("%s exited: %s", p.name, p.cmd.ProcessState)
		}
		return nil
	case <-time.After(limit):
		p.kill()
		return fmt.Errorf("%s did not stop within %s", p.name, limit)
	}
}

// waitLog waits for a log line with the given msg and returns it.
func (p *proc) waitLog(msg string, limit time.Duration) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, l := range p.lines {
			if l["msg"] == msg {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			p.t.Fatalf("%s exited before logging %q", p.name, msg)
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s did not log %q within %s", p.name, msg, limit)
	return nil
}

// cp is a running control plane.
type cp struct {
	*proc
	api, xds, dataDir string
}

// startCP starts a control plane on loopback ports chosen by the kernel.
func startCP(t *testing.T, dataDir string, extra ...string) *cp {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	args := append([]string{"control-plane", "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
		"--sync-addr", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "debug"}, extra...)
	p := startVerge(t, "control-plane", args...)
	l := p.waitLog("control plane ready", 30*time.Second)
	c := &cp{proc: p, api: "http://" + l["api"].(string), xds: l["xds"].(string), dataDir: dataDir}
	return c
}

// startCPAt restarts a control plane on known addresses (after a kill), so
// proxies configured with them reconnect.
func startCPAt(t *testing.T, dataDir, api, xds string, extra ...string) *cp {
	t.Helper()
	args := append([]string{"control-plane", "--api-addr", strings.TrimPrefix(api, "http://"),
		"--xds-addr", xds, "--sync-addr", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "debug"}, extra...)
	p := startVerge(t, "control-plane-again", args...)
	p.waitLog("control plane ready", 30*time.Second)
	return &cp{proc: p, api: api, xds: xds, dataDir: dataDir}
}

// adminToken is the admin token the control plane wrote on first start.
func (c *cp) adminToken(t *testing.T) string {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(c.dataDir, "admin-token"))
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	return strings.TrimSpace(string(tok))
}

// verge runs the CLI against the control plane and returns its combined
// output and exit code.
func (c *cp) verge(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	global := []string{"--server", c.api}
	if tok, err := os.ReadFile(filepath.Join(c.dataDir, "admin-token")); err == nil {
		global = append(global, "--token", strings.TrimSpace(string(tok)))
	}
	cmd := exec.CommandContext(ctx, vergeBin, append(global, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("verge %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// apply applies YAML through `verge apply -f -` and fails the test on error.
func (c *cp) apply(t *testing.T, yaml string) {
	t.Helper()
	out, code := c.verge(t, yaml, "apply", "-f", "-")
	if code != 0 {
		t.Fatalf("verge apply: exit %d:\n%s", code, out)
	}
}

// host is one workload's loopback address. Every workload in the e2e tests
// gets its own 127.x.y.z, so fixed ports never clash between workloads or
// between tests running in parallel.
type host string

func newHost() host {
	return host(fmt.Sprintf("127.%d.%d.%d", 100+rand.IntN(100), rand.IntN(256), 1+rand.IntN(254)))
}

func (h host) addr(port int) string { return net.JoinHostPort(string(h), fmt.Sprint(port)) }

// proxyOpts describes a proxy to start.
type proxyOpts struct {
	name     string
	labels   string
	host     host
	inbound  []string // "APP=INBOUND"
	outbound []string // "SVC:PORT=LOCAL"
	dataDir  string
	extra    []string
	// sa is the workload's service account ("default" when empty).
	sa string
	// token is the join token to start with; when empty and the data
	// dir holds no identity yet, startProxy creates a single-use one for
	// sa. noIdentity starts the proxy without any.
	token      string
	noIdentity bool
}

// proxy is a running verge proxy.
type proxy struct {
	*proc
	admin string
}

func startProxy(t *testing.T, c *cp, o proxyOpts) *proxy {
	t.Helper()
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	args := []string{"proxy", "--server", c.api, "--xds-addr", c.xds, "--name", o.name, "--labels", o.labels,
		"--address", string(o.host), "--app-address", string(o.host), "--outbound-address", string(o.host),
		"--admin-addr", o.host.addr(0), "--data-dir", o.dataDir, "--log-level", "debug", "--drain-timeout", "5s"}
	if o.sa != "" {
		args = append(args, "--service-account", o.sa)
	}
	if o.token == "" && !o.noIdentity && !hasIdentity(o.dataDir) {
		o.token = c.joinToken(t, cmp.Or(o.sa, "default"))
	}
	if o.token != "" {
		args = append(args, "--join-token", o.token)
	}
	for _, s := range o.inbound {
		args = append(args, "--inbound", s)
	}
	for _, s := range o.outbound {
		args = append(args, "--outbound", s)
	}
	args = append(args, o.extra...)
	p := startVerge(t, "proxy-"+o.name, args...)
	l := p.waitLog("proxy started", 30*time.Second)
	px := &proxy{proc: p, admin: "http://" + l["admin"].(string)}
	return px
}

// hasIdentity reports whether a proxy data dir already holds an identity
// from an earlier start.
func hasIdentity(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, svid.FileName))
	return err == nil
}

// joinToken creates a single-use join token for the service account sa in
// namespace default.
func (c *cp) joinToken(t *testing.T, sa string) string {
	t.Helper()
	out, code := c.verge(t, "", "token", "create", "--service", sa)
	tok := tokenRE.FindString(out)
	if code != 0 || tok == "" {
		t.Fatalf("verge token create --service %s: exit %d\n%s", sa, code, out)
	}
	return tok
}

// waitReady waits until the proxy's /ready answers 200.
func (p *proxy) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(p.admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ready: %s", resp.Status)
		}
		return nil
	})
}

// eventually polls f until it returns nil or limit passes.
func eventually(t *testing.T, limit time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("condition not met within %s: %v", limit, err)
}

// httpServer starts a real HTTP/1.1 + h2c server on addr answering with its
// name, and stops it in t.Cleanup.
func httpServer(t *testing.T, addr, name string) {
	t.Helper()
	newNamedServer(t, addr, name)
}

func newNamedServer(t *testing.T, addr, name string) *http.Server {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/slow" {
			time.Sleep(time.Second) // a request still in flight when a proxy is told to stop
		}
		w.Header().Set("X-Served-By", name)
		w.Header().Set("X-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s %s %d", name, r.Method, r.URL.Path, len(body))
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return srv
}

// get sends a GET with optional headers and returns status and body.
func get(c *http.Client, url string, hdr ...string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(b)), err
}
