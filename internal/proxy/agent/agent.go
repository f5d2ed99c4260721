// Package agent is the `verge proxy` role: it registers the workload the proxy
// fronts with the control plane, reports the application's readiness, runs the
// xDS client and the data path, and serves the admin port. It owns the
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
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/internal/memtrim"
	"verge.dev/verge/internal/proxy"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/xdsclient"
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
	// AppAddress is where the application listens (default 127.0.0.1).
	AppAddress string
	// ReadinessPath, when set, probes the app over HTTP; otherwise TCP connect.
	ReadinessPath string
	// AdminAddr is the admin listener, host:port (port 0 allowed).
	AdminAddr string
	// DataDir holds the last accepted configuration.
	DataDir string
	// Proxy is the data path's own configuration.
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
	adminLis, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("listen admin %q: %w", cfg.AdminAddr, err)
	}

	p := proxy.New(cfg.Proxy, logger)
	if snap, err := xdsclient.LoadCache(cfg.DataDir); err == nil && snap != nil {
		// Serve with the last accepted configuration straight away; the
		// control plane may be unreachable, and the xDS client replaces it
		// as soon as it gets a newer one.
		log.Info("serving cached config", "versions", snap.Versions)
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
	xc := xdsclient.New(xdsclient.Config{
		ServerAddr: cfg.XDSAddr,
		Node:       cfg.node(),
		CacheDir:   cfg.DataDir,
	}, func(s *config.Snapshot) {
		p.Update(s)
		settled.Reset(trimSettle)
	}, logger)

	reg := &registrar{cfg: cfg, http: &http.Client{Timeout: 5 * time.Second}, log: log,
		connected: func() bool { return xc.Status().Connected }}

	admin := &http.Server{
		Handler: p.AdminHandler(proxy.AdminSources{
			HasConfig: func() bool { return p.Ready() },
			Status:    func() any { return xc.Status() },
		}),
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
	g.Go(func() error {
		defer close(xdsDone)
		return xc.Run(xctx)
	})
	g.Go(func() error { return reg.run(gctx) })
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
