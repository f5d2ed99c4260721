package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/proxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeControlPlane records registrations and readiness reports. Its first
// readiness report is refused as for an unknown workload.
type fakeControlPlane struct {
	mu        sync.Mutex
	registers int
	reports   []bool
}

func (f *fakeControlPlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/workloads/"):
		f.registers++
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/api/v1/health/"):
		var body struct{ Ready bool }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if f.registers == 1 && len(f.reports) == 0 {
			f.reports = append(f.reports, body.Ready)
			http.Error(w, "no such workload", http.StatusNotFound)
			return
		}
		f.reports = append(f.reports, body.Ready)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeControlPlane) state() (int, []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.registers, append([]bool(nil), f.reports...)
}

// On shutdown the agent reports not ready to the control plane first and
// keeps its admin port up while the data path drains; it closes it last.
func TestShutdownOrder(t *testing.T) {
	const delay = 3 * time.Second
	cp := &fakeControlPlane{}
	srv := httptest.NewServer(cp)
	defer srv.Close()
	xds, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := xds.Addr().String()
	xds.Close() // nothing serves xDS: the client keeps retrying

	cfg := Config{
		Server: srv.URL, XDSAddr: xdsAddr, Name: "w", Namespace: "default", Address: "127.0.0.1",
		AdminAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		Proxy: proxy.Config{DrainDelay: delay, DrainTimeout: time.Second},
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, logger, func(a Addrs) { admin <- a.Admin }) }()
	adminURL := "http://" + <-admin + "/ready"

	// The refused first report (unknown workload) makes the agent register
	// again, then report.
	waitFor(t, "registered twice and reported ready", func() bool {
		n, reports := cp.state()
		return n == 2 && len(reports) == 2
	})

	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	start := time.Now()
	cancel()
	waitFor(t, "ready:false reported", func() bool {
		_, reports := cp.state()
		return len(reports) == 3
	})
	res, err := client.Get(adminURL)
	if time.Since(start) < delay {
		if err != nil {
			t.Errorf("admin during the drain delay: %v, want it still serving", err)
		} else if res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/ready during the drain delay = %d, want 503", res.StatusCode)
		}
	} else {
		t.Logf("drain delay passed before the checks (%v); skipped them", time.Since(start))
	}
	if err == nil {
		res.Body.Close()
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if elapsed := time.Since(start); elapsed < delay {
		t.Errorf("Run returned after %v, before the %v drain delay", elapsed, delay)
	}
	client.CloseIdleConnections()
	if _, err := client.Get(adminURL); err == nil {
		t.Error("admin still serving after Run returned")
	}
	n, reports := cp.state()
	if diff := cmp.Diff([]bool{true, true, false}, reports); diff != "" || n != 2 {
		t.Errorf("registrations %d (want 2), readiness reports (-want +got):\n%s", n, diff)
	}
}

func TestNewCommandServerDefault(t *testing.T) {
	tests := []struct {
		name, env, want string
	}{
		{"from the environment", "http://cp.example:7700", "http://cp.example:7700"},
		{"unset", "", DefaultServer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewCommand(tt.env).Flags()
			got := []string{f.Lookup("server").DefValue, f.Lookup("drain-delay").DefValue}
			if diff := cmp.Diff([]string{tt.want, "2s"}, got); diff != "" {
				t.Errorf("--server, --drain-delay defaults (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIdentityFlags(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("vt1.file.secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	long := "/" + strings.Repeat("d", 120)
	tests := []struct {
		name       string
		args       []string
		env        string
		wantToken  string
		wantSocket string
		wantErr    string // substring naming the flag; empty: no error
	}{
		{name: "none", wantSocket: "data/spiffe.sock"},
		{name: "from the environment", env: "vt1.env.secret", wantToken: "vt1.env.secret", wantSocket: "data/spiffe.sock"},
		{name: "flag over environment", args: []string{"--join-token", "vt1.flag.secret"}, env: "vt1.env.secret",
			wantToken: "vt1.flag.secret", wantSocket: "data/spiffe.sock"},
		{name: "file, trimmed", args: []string{"--join-token-file", tokenFile}, env: "vt1.env.secret",
			wantToken: "vt1.file.secret", wantSocket: "data/spiffe.sock"},
		{name: "both flags", args: []string{"--join-token", "x", "--join-token-file", tokenFile}, wantErr: "--join-token, --join-token-file"},
		{name: "missing file", args: []string{"--join-token-file", filepath.Join(dir, "nope")}, wantErr: "--join-token-file"},
		{name: "empty file", args: []string{"--join-token-file", emptyFile}, wantErr: "--join-token-file"},
		{name: "white space in token", args: []string{"--join-token", "a b"}, wantErr: "white space"},
		{name: "socket off", args: []string{"--workload-api-socket", "off"}},
		{name: "socket dash", args: []string{"--workload-api-socket", "-"}},
		{name: "socket path", args: []string{"--workload-api-socket", "/run/app/spiffe.sock"}, wantSocket: "/run/app/spiffe.sock"},
		{name: "socket too long", args: []string{"--workload-api-socket", long}, wantErr: "--workload-api-socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := NewCommandEnv(Env{JoinToken: tt.env})
			if err := cmd.Flags().Parse(append([]string{"--data-dir", "data"}, tt.args...)); err != nil {
				t.Fatal(err)
			}
			var f identityFlags
			f.token, _ = cmd.Flags().GetString("join-token")
			f.tokenFile, _ = cmd.Flags().GetString("join-token-file")
			f.socket, _ = cmd.Flags().GetString("workload-api-socket")
			f.tokenSet = cmd.Flags().Changed("join-token")
			cfg := Config{DataDir: "data"}
			err := f.apply(&cfg, tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("apply() = %v, want an error naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("apply() = %v", err)
			}
			if diff := cmp.Diff([]string{tt.wantToken, tt.wantSocket}, []string{cfg.JoinToken, cfg.WorkloadAPISocket}); diff != "" {
				t.Errorf("join token, socket (-want +got):\n%s", diff)
			}
		})
	}
	// The token never shows in --help.
	if def := NewCommandEnv(Env{JoinToken: "vt1.env.secret"}).Flags().Lookup("join-token").DefValue; def != "" {
		t.Errorf("--join-token default = %q, want empty", def)
	}
}
