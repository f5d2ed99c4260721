package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"verge.dev/verge/internal/proxy/backoff"
)

// workload mirrors the fields of v1alpha1.Workload that the agent writes; see
// the package comment for why it is not the API type itself.
type workload struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	Metadata   workloadMeta `json:"metadata"`
	Spec       workloadSpec `json:"spec"`
}

type workloadMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
}

type workloadSpec struct {
	Address        string             `json:"address"`
	ServiceAccount string             `json:"serviceAccount,omitempty"`
	Ports          []workloadPort     `json:"ports,omitempty"`
	Proxy          workloadProxy      `json:"proxy"`
	Upstreams      []workloadUpstream `json:"upstreams,omitempty"`
	HTTPProxy      *workloadHTTPProxy `json:"httpProxy,omitempty"`
}

type workloadHTTPProxy struct {
	Port    int32  `json:"port"`
	Address string `json:"address,omitempty"`
}

type workloadPort struct {
	Port        int32 `json:"port"`
	InboundPort int32 `json:"inboundPort,omitempty"`
}

type workloadProxy struct {
	ReadinessPath string `json:"readinessPath,omitempty"`
	AppAddress    string `json:"appAddress,omitempty"`
}

type workloadUpstream struct {
	Service      string `json:"service"`
	Port         int32  `json:"port"`
	LocalPort    int32  `json:"localPort"`
	LocalAddress string `json:"localAddress,omitempty"`
}

func (c Config) workload() workload {
	w := workload{
		APIVersion: "verge.dev/v1alpha1",
		Kind:       "Workload",
		Metadata:   workloadMeta{Name: c.Name, Namespace: c.Namespace, Labels: c.Labels},
		Spec: workloadSpec{
			Address:        c.Address,
			ServiceAccount: c.ServiceAccount,
			Proxy:          workloadProxy{ReadinessPath: c.ReadinessPath, AppAddress: c.AppAddress},
		},
	}
	for _, p := range c.Inbound {
		w.Spec.Ports = append(w.Spec.Ports, workloadPort{Port: p.AppPort, InboundPort: p.InboundPort})
	}
	for _, o := range c.Outbound {
		w.Spec.Upstreams = append(w.Spec.Upstreams, workloadUpstream(o))
	}
	if c.HTTPProxyPort > 0 {
		w.Spec.HTTPProxy = &workloadHTTPProxy{Port: c.HTTPProxyPort, Address: c.HTTPProxyAddress}
	}
	return w
}

// Intervals of the registration loop. Readiness is reported when it
// changes, whenever the xDS stream (re)connects (a restarted control plane
// keeps health in memory only, and counts a reconnected proxy as ready until
// told otherwise), and at least every reportEvery as a safety net. Reports
// are rare on purpose: on a small device each one pulls the HTTP client's
// code back into memory.
const (
	probeEvery   = time.Second
	reportEvery  = 30 * time.Second
	probeTimeout = time.Second
	// leaveTimeout bounds the not-ready report sent on shutdown.
	leaveTimeout = 2 * time.Second
	// Registration retries back off between these bounds.
	registerRetryBase = 200 * time.Millisecond
	registerRetryMax  = 5 * time.Second
)

// registrar registers the workload and keeps the control plane told of the
// application's readiness.
type registrar struct {
	cfg  Config
	http *http.Client
	log  *slog.Logger
	// connected reports whether the xDS stream is up.
	connected func() bool
}

func (r *registrar) run(ctx context.Context) error {
	if r.cfg.Server == "" {
		<-ctx.Done()
		return nil
	}
	// Run has released everything when it returns, kept-alive
	// connections to the control plane included.
	defer r.http.CloseIdleConnections()
	registered := false
	retry := backoff.Backoff{Base: registerRetryBase, Max: registerRetryMax}
	var lastReady *bool
	var lastReport time.Time
	wasConnected := false
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if registered {
				r.reportLeaving(ctx)
			}
			return nil
		case <-t.C:
		}
		wait := probeEvery
		if !registered {
			if err := r.register(ctx); err != nil {
				r.log.Warn("workload registration failed", "error", err)
				t.Reset(retry.Next())
				continue
			}
			r.log.Info("workload registered")
			registered, lastReady = true, nil
			retry.Reset()
		}
		ready := r.probe(ctx)
		connected := r.connected()
		reconnected := connected && !wasConnected
		wasConnected = connected
		if lastReady == nil || *lastReady != ready || reconnected || time.Since(lastReport) >= reportEvery {
			switch err := r.report(ctx, ready); {
			case errors.Is(err, errUnknownWorkload):
				// The workload was deleted (or the store lost it): register again.
				registered = false
				wait = 0
			case err != nil:
				r.log.Debug("readiness report failed", "error", err)
			default:
				if lastReady == nil || *lastReady != ready {
					r.log.Info("readiness reported", "ready", ready)
				}
				lastReady, lastReport = &ready, time.Now()
			}
		}
		t.Reset(wait)
	}
}

// reportLeaving tells the control plane, as the proxy starts shutting
// down, that the workload is no longer ready, so that peers stop being sent
// to it before its listeners close. ctx has ended; the report gets its own
// short deadline.
func (r *registrar) reportLeaving(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
	defer cancel()
	if err := r.report(ctx, false); err != nil {
		r.log.Warn("readiness report failed", "ready", false, "error", err)
		return
	}
	r.log.Info("readiness reported", "ready", false)
}

// errUnknownWorkload is a readiness report refused because the control
// plane has no such workload.
var errUnknownWorkload = errors.New("agent: workload unknown to the control plane")

func (r *registrar) register(ctx context.Context) error {
	body, err := json.Marshal(r.cfg.workload())
	if err != nil {
		return err
	}
	u := fmt.Sprintf("%s/apis/verge.dev/v1alpha1/namespaces/%s/workloads/%s",
		strings.TrimRight(r.cfg.Server, "/"), url.PathEscape(r.cfg.Namespace), url.PathEscape(r.cfg.Name))
	return r.do(ctx, http.MethodPut, u, body)
}

func (r *registrar) report(ctx context.Context, ready bool) error {
	body, _ := json.Marshal(map[string]bool{"ready": ready})
	u := fmt.Sprintf("%s/api/v1/health/%s/%s",
		strings.TrimRight(r.cfg.Server, "/"), url.PathEscape(r.cfg.Namespace), url.PathEscape(r.cfg.Name))
	return r.do(ctx, http.MethodPut, u, body)
}

func (r *registrar) do(ctx context.Context, method, u string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusNotFound && method == http.MethodPut && strings.Contains(u, "/api/v1/health/"):
		return errUnknownWorkload
	case resp.StatusCode >= 300:
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// probe reports whether the application is ready: an HTTP GET of
// ReadinessPath answering 2xx/3xx, or else a TCP connect to its first port.
// A proxy with no inbound port fronts no application and is always ready.
func (r *registrar) probe(ctx context.Context) bool {
	if len(r.cfg.Inbound) == 0 {
		return true
	}
	addr := net.JoinHostPort(r.cfg.AppAddress, itoa(r.cfg.Inbound[0].AppPort))
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if r.cfg.ReadinessPath == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+r.cfg.ReadinessPath, nil)
	if err != nil {
		return false
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode < 400
}
