// Package demo owns `verge demo`: a control plane and a few services with their
// proxies started as separate processes on loopback, a light bounded load
// through them, and the hidden `demo-app` command that plays the services.
//
// Each workload gets its own loopback address (127.77.0.N by default), so every process
// can use the same well-known ports without clashing and a Service's
// targetPort is the same for all its workloads, as on real hosts.
package demo

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
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
)

// Ports every demo workload uses on its own address.
const (
	appHTTPPort  = 8080
	appGRPCPort  = 9000
	inboundPort  = 15006
	adminPort    = 9901
	backendLocal = 10001
	greeterLocal = 10002
)

// Config is the demo's bootstrap configuration.
type Config struct {
	APIAddr  string
	XDSAddr  string
	Duration time.Duration
	// RPS is the load's request rate against the frontend.
	RPS int
	// Hosts is the first three octets of the workloads' loopback addresses.
	Hosts string
	// Out receives the banner and progress lines.
	Out io.Writer
}

// NewCommand returns `verge demo`.
func NewCommand() *cobra.Command {
	cfg := Config{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a local mesh on loopback: control plane, services, proxies, load and dashboard",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Out = cmd.OutOrStdout()
			return Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.APIAddr, "api-addr", "127.0.0.1:7700", "control plane API and dashboard address")
	f.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:7701", "control plane xDS address")
	f.DurationVar(&cfg.Duration, "duration", time.Hour, "stop the demo after this long")
	f.IntVar(&cfg.RPS, "rps", 10, "requests per second sent to the frontend")
	f.StringVar(&cfg.Hosts, "hosts", "127.77.0", "first three octets of the workloads' loopback addresses")
	_ = f.MarkHidden("hosts")
	return cmd
}

// process is one child the demo started.
type process struct {
	name string
	cmd  *exec.Cmd
}

// Run starts the demo and blocks until ctx ends or Duration passes; then it
// stops every process it started.
func Run(ctx context.Context, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "verge-demo-")
	if err != nil {
		return err
	}
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	// The children need to know the control plane's addresses before it
	// starts, so port 0 is resolved here.
	for _, a := range []*string{&cfg.APIAddr, &cfg.XDSAddr} {
		bound, err := reserve(*a)
		if err != nil {
			return fmt.Errorf("%w (is another control plane or demo running? pass --api-addr/--xds-addr)", err)
		}
		*a = bound
	}
	api := "http://" + cfg.APIAddr

	var (
		mu    sync.Mutex
		procs []*process
	)
	start := func(name string, args ...string) error {
		f, err := os.Create(filepath.Join(logs, name+".log"))
		if err != nil {
			return err
		}
		cmd := exec.Command(exe, args...)
		cmd.Stdout, cmd.Stderr = f, f
		// Own process group: the terminal's Ctrl-C reaches only the demo,
		// which then stops its children in order. Pdeathsig covers the demo
		// itself dying.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			f.Close()
			return fmt.Errorf("start %s: %w", name, err)
		}
		f.Close()
		mu.Lock()
		procs = append(procs, &process{name: name, cmd: cmd})
		mu.Unlock()
		return nil
	}
	defer func() { stopAll(procs) }()

	if err := start("control-plane", "control-plane", "--api-addr", cfg.APIAddr, "--xds-addr", cfg.XDSAddr,
		"--sync-addr", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "control-plane"), "--log-format", "text"); err != nil {
		return err
	}
	if err := waitHTTP(ctx, api+"/healthz", 20*time.Second); err != nil {
		return fmt.Errorf("control plane did not come up (log: %s): %w", filepath.Join(logs, "control-plane.log"), err)
	}
	// The control plane wrote its admin token on first start; the CLI
	// takes it from the file, as a user of the demo would.
	tokenFile := filepath.Join(dir, "control-plane", "admin-token")
	resources := filepath.Join(dir, "mesh.yaml")
	if err := writeResources(resources); err != nil {
		return err
	}
	if err := apply(ctx, exe, api, tokenFile, resources); err != nil {
		return err
	}

	ip := func(n int) string { return fmt.Sprintf("%s.%d", cfg.Hosts, n) }
	type wl struct {
		name, labels, kind string
		n, appPort         int
		extra              []string
		appArgs            []string
	}
	frontendIP := ip(4)
	wls := []wl{
		{name: "backend-v1", labels: "app=backend,version=v1", kind: "http", n: 1, appPort: appHTTPPort},
		{name: "backend-v2", labels: "app=backend,version=v2", kind: "http", n: 2, appPort: appHTTPPort},
		{name: "greeter", labels: "app=greeter,version=v1", kind: "grpc", n: 3, appPort: appGRPCPort},
		{name: "frontend", labels: "app=frontend,version=v1", kind: "http", n: 4, appPort: appHTTPPort,
			extra:   []string{"--outbound", fmt.Sprintf("backend:80=%d", backendLocal), "--outbound", fmt.Sprintf("greeter:9000=%d", greeterLocal), "--outbound-address", frontendIP},
			appArgs: []string{"--backend-url", fmt.Sprintf("http://%s:%d/", frontendIP, backendLocal), "--greeter-addr", fmt.Sprintf("%s:%d", frontendIP, greeterLocal)}},
	}
	for _, w := range wls {
		addr := ip(w.n)
		appArgs := append([]string{"demo-app", "--kind", w.kind, "--name", w.name, "--listen", fmt.Sprintf("%s:%d", addr, w.appPort)}, w.appArgs...)
		if err := start(w.name+"-app", appArgs...); err != nil {
			return err
		}
		// Each proxy proves its identity (service account = the
		// workload's name) with a join token of its own.
		joinFile, err := joinToken(ctx, exe, api, tokenFile, w.name, filepath.Join(dir, w.name+"-join-token"))
		if err != nil {
			return err
		}
		args := append([]string{"proxy", "--server", api, "--xds-addr", cfg.XDSAddr, "--name", w.name + "-0", "--labels", w.labels,
			"--service-account", w.name, "--join-token-file", joinFile,
			"--address", addr, "--app-address", addr, "--inbound", fmt.Sprintf("%d=%d", w.appPort, inboundPort),
			"--admin-addr", fmt.Sprintf("%s:%d", addr, adminPort), "--data-dir", filepath.Join(dir, w.name+"-proxy"), "--log-format", "text"}, w.extra...)
		if err := start(w.name+"-proxy", args...); err != nil {
			return err
		}
	}
	target := fmt.Sprintf("http://%s:%d/", frontendIP, inboundPort)
	// The banner and the load wait until traffic flows end to end, so the
	// first numbers a newcomer sees are not start-up failures.
	if err := waitHTTP(ctx, target, 60*time.Second); err != nil {
		return fmt.Errorf("the mesh did not start serving (logs: %s): %w", logs, err)
	}
	fmt.Fprintf(cfg.Out, `
Verge demo is running.

  Dashboard and API:  %[1]s
  Frontend (ingress): %[2]s      (frontend -> backend 90%% v1 / 10%% v2, frontend -> greeter over gRPC)
  State and logs:     %[3]s

Try, in another terminal:
  go run ./cmd/verge get services
  go run ./cmd/verge get workloads -o yaml
  go run ./cmd/verge proxy-status
  curl -s %[2]s
  VERGE_TOKEN_FILE=%[5]s \
    go run ./cmd/verge apply -f %[4]s      # the mesh's resources; edit weights and apply again

Ctrl-C stops every process the demo started.
`, api, target, dir, resources, tokenFile)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return drive(gctx, cfg.Out, target, cfg.RPS) })
	g.Go(func() error { return watchChildren(gctx, &mu, &procs) })
	err = g.Wait()
	fmt.Fprintln(cfg.Out, "stopping the demo")
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return nil
	}
	return err
}

// watchChildren fails the demo when a child exits before it is told to.
func watchChildren(ctx context.Context, mu *sync.Mutex, procs *[]*process) error {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		mu.Lock()
		ps := append([]*process(nil), *procs...)
		mu.Unlock()
		for _, p := range ps {
			if err := p.cmd.Process.Signal(syscall.Signal(0)); err != nil {
				return fmt.Errorf("%s exited early; see its log", p.name)
			}
		}
	}
}

// stopAll stops children in reverse start order: proxies and apps drain
// before the control plane goes.
func stopAll(procs []*process) {
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].cmd.Process.Signal(syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() {
		for _, p := range procs {
			p.cmd.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		for _, p := range procs {
			p.cmd.Process.Kill()
		}
		<-done
	}
}

// reserve checks that addr is free and returns it with port 0 replaced by a
// port the kernel chose.
func reserve(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("address %s is in use", addr)
	}
	bound := l.Addr().String()
	return bound, l.Close()
}

func waitHTTP(ctx context.Context, url string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// apply runs `verge apply -f` as a user would, so the demo exercises the CLI.
func apply(ctx context.Context, exe, api, tokenFile, file string) error {
	out, err := exec.CommandContext(ctx, exe, "apply", "--server", api, "--token-file", tokenFile, "-f", file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("verge apply -f %s: %w\n%s", file, err, out)
	}
	return nil
}

// joinToken creates a single-use join token for service account sa with
// `verge token create` and writes it to path (0600) for the proxy's
// --join-token-file, which keeps it out of the process list.
func joinToken(ctx context.Context, exe, api, tokenFile, sa, path string) (string, error) {
	out, err := exec.CommandContext(ctx, exe, "token", "create", "--server", api, "--token-file", tokenFile, "--service", sa).Output()
	if err != nil {
		return "", fmt.Errorf("verge token create --service %s: %w", sa, err)
	}
	var tok string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "vt1.") {
			tok = strings.TrimSpace(l)
		}
	}
	if tok == "" {
		return "", fmt.Errorf("verge token create --service %s: no token in %q", sa, out)
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// drive sends a light, bounded load to the frontend and prints a line of
// totals every 10 s.
func drive(ctx context.Context, out io.Writer, target string, rps int) error {
	if rps <= 0 {
		<-ctx.Done()
		return nil
	}
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(rps))
	defer tick.Stop()
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	var ok, failed int
	versions := map[string]int{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-report.C:
			fmt.Fprintf(out, "load: %d ok, %d failed; backend answers %s\n", ok, failed, fmtCounts(versions))
		case <-tick.C:
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
			resp, err := client.Do(req)
			if err != nil {
				failed++
				continue
			}
			var a answer
			derr := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&a)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || derr != nil || a.Backend == nil {
				failed++
				continue
			}
			ok++
			versions[a.Backend.Service]++
		}
	}
}

func fmtCounts(m map[string]int) string {
	var b strings.Builder
	for _, k := range []string{"backend-v1", "backend-v2"} {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// writeResources writes the demo mesh's resources, for `verge apply -f` and
// for the user to edit.
func writeResources(path string) error {
	var buf bytes.Buffer
	if err := resourcesTmpl.Execute(&buf, map[string]int{"HTTP": appHTTPPort, "GRPC": appGRPCPort}); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

var resourcesTmpl = template.Must(template.New("mesh").Parse(Resources))
