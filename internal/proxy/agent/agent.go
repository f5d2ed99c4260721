// Package agent is the `verge proxy` role: it registers the workload the proxy
// fronts with the control plane, reports the application's readiness, runs the
// xDS client and the data path, and serves the admin port. With a join token
// or a persisted SVID it also runs the proxy's identity (proxy/svid): xDS and
// the API then go over mutual TLS with the SVID, the SDS trust bundle is fed
// to the identity before each configuration reaches the data path, and the
// SPIFFE Workload API (proxy/workloadapi) serves the application. It owns the
// lifecycle of those parts, not their logic.
//
// The agent talks to the REST API with plain JSON rather than through
// internal/apiclient: the client brings the resource types, and with them the
// Kubernetes and Gateway API packages, which the small verge-proxy build for
// devices must not link. The few fields the agent writes are mirrored in
// workload.go.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/internal/memtrim"
	"verge.dev/verge/internal/proxy"
	"verge.dev/verge/internal/proxy/authz"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/tracing"
	"verge.dev/verge/internal/proxy/workloadapi"
	"verge.dev/verge/internal/proxy/xdsclient"
	"verge.dev/verge/internal/telemetry"
)

// Config is the proxy role's bootstrap configuration, read once.
type Config struct {
	// Server is the control plane's REST API base URL.
	Server string
	// XDSAddr is the control plane's xDS (ADS) address, host:port.
	XDSAddr string
	// Name and Namespace name the Workload the proxy registers.
	Name      string
	Namespace string
	// Labels of the workload; Services select workloads by them.
	Labels map[string]string
	// Address is where peers reach this workload's inbound listeners.
	Address        string
	ServiceAccount string
	// Inbound maps application ports to the proxy's inbound listener ports.
	Inbound []PortPair
	// Outbound lists the upstreams the application calls.
	Outbound []Outbound
	// HTTPProxyPort, when not zero, registers the workload's spec.httpProxy:
	// the proxy then listens on HTTPProxyAddress:HTTPProxyPort for
	// applications that set HTTP_PROXY.
	HTTPProxyPort    int32
	HTTPProxyAddress string
	// AppAddress is where the application listens (default 127.0.0.1).
	AppAddress string
	// ReadinessPath, when set, probes the app over HTTP; otherwise TCP connect.
	ReadinessPath string
	// AdminAddr is the admin listener, host:port (port 0 allowed).
	AdminAddr string
	// DataDir holds the last accepted configuration and the proxy's
	// identity (svid.json).
	DataDir string
	// JoinToken proves the workload's identity to the control plane at
	// first issuance. With neither it nor a persisted SVID in DataDir the
	// proxy runs without identity (plaintext xDS and API, no mTLS).
	JoinToken string
	// CAFile optionally names PEM roots verifying an https control plane
	// at first issuance (see svid.Config.CAFile).
	CAFile string
	// WorkloadAPISocket is the Unix socket of the SPIFFE Workload API the
	// application fetches its SVID from; empty disables it. Served only
	// when the proxy has an identity.
	WorkloadAPISocket string
	// AuditLog receives the authorization audit log, one JSON line per
	// deny or audit decision; nil discards it (decisions are still
	// counted). The agent writes it from one goroutine and does not close
	// it; the caller does, after Run returns.
	AuditLog io.Writer
	// ReportInterval is how often the proxy sends its traffic summary to
	// the control plane (default DefaultReportInterval).
	ReportInterval time.Duration
	// Proxy is the data path's own configuration; the agent sets its SVID,
	// Bundle, Authz and telemetry labels.
	Proxy proxy.Config
}

// PortPair maps an application port to the proxy's inbound port.
type PortPair struct {
	AppPort     int32
	InboundPort int32
}

// Outbound is one upstream: Service ("NAME" or "NAME.NS"), its Port, and the
// loopback LocalPort the proxy listens on for it.
type Outbound struct {
	Service   string
	Port      int32
	LocalPort int32
	// LocalAddress is the IP the outbound listener binds (default 127.0.0.1).
	LocalAddress string
}

// trimSettle is how long after the last configuration change the agent
// releases pages it no longer needs (see internal/memtrim).
const trimSettle = 2 * time.Second

// Addrs are the bound addresses the agent reports once it is serving.
type Addrs struct {
	Admin string
}

// NodeID is the xDS node id of the workload's proxy: NAME.NAMESPACE.
func (c Config) NodeID() string { return c.Name + "." + c.Namespace }

// Run runs the proxy until ctx ends, then drains and returns nil. ready, if
// set, is called once the admin listener is bound.
func Run(ctx context.Context, cfg Config, logger *slog.Logger, ready func(Addrs)) error {
	log := logger.With("component", "agent", "node", cfg.NodeID())
	if err := cfg.validate(); err != nil {
		return err
	}
	// The identity, the xDS cache and the Workload API socket live there.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	adminLis, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("listen admin %q: %w", cfg.AdminAddr, err)
	}

	id, err := newIdentity(cfg, logger)
	if err != nil {
		adminLis.Close()
		return err
	}
	if id == nil {
		log.Warn("proxy runs without identity: no join token and no persisted svid; xDS, API and proxy-to-proxy traffic are plaintext")
	} else {
		// The data path reads the source on every handshake; a persisted
		// SVID serves the cached configuration below at once.
		cfg.Proxy.SVID, cfg.Proxy.Bundle = id, id
	}

	// The recorder outlives the data path: it is closed, flushing the
	// audit log, after the proxy has drained.
	rec := authz.NewRecorder(cfg.AuditLog)
	defer rec.Close()
	cfg.Proxy.Authz = rec

	tracing.LogErrors(log)
	cfg.Proxy.Node, cfg.Proxy.Workload = cfg.NodeID(), cfg.Namespace+"/"+cfg.Name
	cfg.Proxy.Zone = cfg.Labels["zone"]
	p := proxy.New(cfg.Proxy, logger)
	collectors := rec.Collectors()
	if id != nil {
		collectors = append(collectors, id.Metrics()...)
	}
	if err := p.Register(collectors...); err != nil {
		adminLis.Close()
		return err
	}
	if snap, err := xdsclient.LoadCache(cfg.DataDir); err == nil && snap != nil {
		// Serve with the last accepted configuration straight away; the
		// control plane may be unreachable, and the xDS client replaces it
		// as soon as it gets a newer one.
		log.Info("serving cached config", "versions", snap.Versions)
		feedTrustBundle(id, snap, log)
		p.Update(snap)
	} else if err != nil {
		log.Warn("cached config unusable", "error", err)
	}

	trim := func() {
		// Return the heap the configuration change left free, then the
		// binary's pages; both come back on demand.
		debug.FreeOSMemory()
		if n, err := memtrim.Trim(); err != nil {
			log.Debug("memory trim skipped", "error", err)
		} else {
			log.Debug("memory trimmed", "bytes_advised", n)
		}
	}
	// Start-up (descriptor registration) and applying a configuration (the
	// first unmarshal of each xDS type, opening listeners) touch code and
	// data that the proxy does not use again; release them at start and
	// once a burst of configuration changes has settled.
	trim()
	settled := time.AfterFunc(time.Hour, trim)
	settled.Stop()
	defer settled.Stop()
	xcfg := xdsclient.Config{
		ServerAddr: cfg.XDSAddr,
		Node:       cfg.node(),
		CacheDir:   cfg.DataDir,
	}
	regCfg, regHTTP := cfg, &http.Client{Timeout: 5 * time.Second}
	if id != nil {
		// xDS and the API over mutual TLS with the SVID; new connections
		// pick up renewed certificates.
		xcfg.DialOptions = []grpc.DialOption{id.GRPCDialOption()}
		regCfg.Server = id.APIBase()
		regHTTP = id.HTTPClient()
		regHTTP.Timeout = 5 * time.Second
	}
	xc := xdsclient.New(xcfg, func(s *config.Snapshot) {
		// The trust bundle first: listeners and clusters of this
		// snapshot may already need it. Its revoked serials travel in
		// the snapshot itself: Update applies them.
		feedTrustBundle(id, s, log)
		p.Update(s)
		settled.Reset(trimSettle)
	}, logger)

	reg := &registrar{cfg: regCfg, http: regHTTP, log: log,
		connected: func() bool { return xc.Status().Connected }}
	adminAddr := adminLis.Addr().String()
	rep := &reporter{obs: p.Observer(), server: regCfg.Server, http: regHTTP, log: log,
		interval: cfg.ReportInterval, idle: func() { settled.Reset(trimSettle) },
		fill: func(r *telemetry.Report) {
			r.AdminAddress = adminAddr
			if svc := p.LocalService(); svc != "" {
				r.Service, r.Namespace, _ = strings.Cut(svc, ".")
			}
		}}
	if rep.interval <= 0 {
		rep.interval = DefaultReportInterval
	}

	adminHandler := p.AdminHandler(proxy.AdminSources{
		HasConfig: func() bool { return p.Ready() },
		Status:    func() any { return xc.Status() },
	})
	admin := &http.Server{
		Handler:           adminHandler,
		ReadHeaderTimeout: 5 * time.Second,
	}
	if ready != nil {
		ready(Addrs{Admin: adminLis.Addr().String()})
	}
	log.Info("proxy started", "admin", adminLis.Addr().String(), "xds", cfg.XDSAddr, "server", cfg.Server)

	// Shutdown has an order. When gctx ends, the proxy reports not ready
	// on /ready and the registrar tells the control plane, which takes the
	// workload's endpoints out of its peers' EDS; the proxy keeps accepting
	// for Proxy.DrainDelay while that propagates, then stops accepting and
	// drains. Only then does the xDS client stop (configuration keeps
	// arriving while requests drain), and the admin server goes last, so
	// that /ready can be watched throughout.
	g, gctx := errgroup.WithContext(ctx)
	xctx, stopXDS := context.WithCancel(context.WithoutCancel(ctx))
	defer stopXDS()
	proxyDone, xdsDone := make(chan struct{}), make(chan struct{})
	g.Go(func() error {
		defer close(proxyDone)
		defer stopXDS()
		return p.Run(gctx)
	})
	if id != nil {
		// Renewal goes on while requests drain; it stops with xDS.
		g.Go(func() error { return id.Run(xctx) })
		if cfg.WorkloadAPISocket != "" {
			wl := workloadapi.New(cfg.WorkloadAPISocket, id, logger)
			g.Go(func() error { return wl.Run(gctx) })
		}
	}
	g.Go(func() error {
		defer close(xdsDone)
		// The xDS stream and the API need the SVID; a refused token is
		// reported by id.Run.
		if id != nil && id.Wait(xctx) != nil {
			return nil
		}
		return xc.Run(xctx)
	})
	g.Go(func() error {
		if id != nil {
			if id.Wait(gctx) != nil {
				return nil
			}
			reg.cfg.ServiceAccount = workloadServiceAccount(cfg, id.ID(), log)
		}
		return reg.run(gctx)
	})
	g.Go(func() error {
		// Reports need the SVID, as registration does.
		if id != nil && id.Wait(gctx) != nil {
			return nil
		}
		return rep.run(gctx)
	})
	g.Go(func() error {
		err := admin.Serve(adminLis)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve admin: %w", err)
	})
	g.Go(func() error {
		<-proxyDone
		<-xdsDone
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 2*time.Second)
		defer cancel()
		return admin.Shutdown(sctx)
	})
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		log.Info("proxy stopped")
	}
	return err
}

func (c Config) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("--name: required"))
	}
	if c.Namespace == "" {
		errs = append(errs, errors.New("--namespace: required"))
	}
	if net.ParseIP(c.Address) == nil {
		errs = append(errs, fmt.Errorf("--address: invalid IP %q", c.Address))
	}
	if c.XDSAddr == "" {
		errs = append(errs, errors.New("--xds-addr: required"))
	}
	for i, o := range c.Outbound {
		if o.Service == "" || o.Port <= 0 || o.LocalPort <= 0 {
			errs = append(errs, fmt.Errorf("--outbound[%d]: want SERVICE:PORT=LOCALPORT", i))
		}
	}
	return errors.Join(errs...)
}

func (c Config) node() *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"workload":  c.Namespace + "/" + c.Name,
		"namespace": c.Namespace,
	})
	return &corev3.Node{Id: c.NodeID(), Cluster: c.Namespace, Metadata: md, UserAgentName: "verge-proxy"}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
