// Package controlplane is the `verge control-plane` role: it opens the store,
// binds the API, xDS and zone-sync listeners, and runs the API server, the
// registry, the xDS server, the health endpoint and the dashboard until its
// context ends, then shuts them down in order. It owns the wiring and the
// shutdown order only; each part lives in its own package. Two things it
// does own: the API and xDS ports' transport (listen.go: TLS and loopback
// plaintext on one port, revoked client certificates refused, refusals
// counted) and the control plane's own SVID (svid.go), because both exist
// only to serve those ports. It also pushes the trust bundle with a CRL of
// the revoked certificates to proxies (trustPusher) at start, after a
// rotation and after a revocation.
//
// Every API request passes apiserver.Guard (admin token or admin SVID for
// writes, workload SVIDs for their own Workload and health), except the
// proxies' telemetry reports: those are checked by the rule of xDS streams
// (xds.Authenticator.AuthorizeWorkload: the SVID of the workload the report
// names), since the guard cannot see the workload, which is in the body.
//
// It also owns the control plane's own metrics that belong to no part:
// store operations (storemetrics.go).
//
// On the API listener:
//
//	/apis/...                 resources (apiserver)
//	/api/v1/proxies           xDS clients and their versions (xds)
//	/api/v1/health/{ns}/{wl}  proxy readiness reports (registry)
//	/api/v1/tokens, /api/v1/certificates, /api/v1/bundle, /api/v1/ca/rotate
//	                          join tokens, SVIDs, their log and revocation,
//	                          trust bundle (identity)
//	/api/v1/telemetry/..., /api/v1/topology, /api/v1/tap
//	                          proxies' reports, service graph, series, taps,
//	                          recent errors, proxy processes (topology)
//	/healthz, /version, /metrics
//	/                         dashboard (web)
package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/store"
	"verge.dev/verge/internal/store/bolt"
	"verge.dev/verge/internal/store/etcd"
	"verge.dev/verge/internal/telemetry"
	"verge.dev/verge/internal/topology"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/web"
)

// Defaults, as DESIGN.md fixes them.
const (
	DefaultAPIAddr  = "127.0.0.1:7700"
	DefaultXDSAddr  = "127.0.0.1:7701"
	DefaultSyncAddr = "127.0.0.1:7702"
	DefaultDataDir  = "./verge-data"
	// DefaultTrustDomain is the SPIFFE trust domain of a mesh that does not
	// name one.
	DefaultTrustDomain = "verge.local"
)

// drainTimeout bounds the graceful part of shutdown for each server.
const drainTimeout = 5 * time.Second

// Config is the role's bootstrap configuration. Zero fields take defaults.
type Config struct {
	// APIAddr serves the REST API, health reports and the dashboard.
	APIAddr string
	// XDSAddr serves gRPC xDS.
	XDSAddr string
	// SyncAddr is held for zone sync (not served yet).
	SyncAddr string
	// DataDir holds the bbolt file verge.db (Store "bolt").
	DataDir string
	// Store is "bolt" (default) or "etcd".
	Store string
	// EtcdEndpoints and EtcdPrefix locate the etcd cluster (Store "etcd").
	EtcdEndpoints []string
	EtcdPrefix    string
	// Version is what /version reports; default the binary's module version.
	Version string

	// TrustDomain is the mesh's SPIFFE trust domain; DefaultTrustDomain when
	// empty.
	TrustDomain string
	// CACert and CAKey are an operator's CA as PEM (--ca-cert, --ca-key):
	// the certificate the mesh signs with, any intermediates, and the root
	// last; and its private key. When set they replace the CA material in
	// DataDir/ca on every start; when empty the material there is used, or
	// a self-signed root is generated on first start.
	CACert, CAKey []byte
	// CAPassphrase encrypts the CA material at rest in DataDir/ca; required.
	CAPassphrase []byte
	// SVIDTTL is the lifetime of issued certificates; ca.DefaultSVIDTTL
	// (24h) when zero.
	SVIDTTL time.Duration

	// AdminToken is the administrators' bearer secret (the CLI's --token);
	// empty leaves only admin client certificates
	// (spiffe://<td>/ns/verge-system/sa/admin).
	AdminToken string
	// AllowAnonymous lets every API write and every xDS stream through
	// without credentials, as before issue 4 (--insecure-allow-anonymous).
	AllowAnonymous bool
	// TLSSANs are extra DNS names and IP addresses of the control plane's
	// certificate (--tls-san), beside localhost, loopback and the bound
	// addresses.
	TLSSANs []string
	// HandshakeTimeout bounds a new connection's first bytes and TLS
	// handshake on the API and xDS ports; 10 s when zero.
	HandshakeTimeout time.Duration
}

// Addrs are the bound addresses, host:port.
type Addrs struct {
	API, XDS, Sync string
}

func (c Config) withDefaults() Config {
	if c.APIAddr == "" {
		c.APIAddr = DefaultAPIAddr
	}
	if c.XDSAddr == "" {
		c.XDSAddr = DefaultXDSAddr
	}
	if c.SyncAddr == "" {
		c.SyncAddr = DefaultSyncAddr
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Store == "" {
		c.Store = "bolt"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.Version == "" {
		c.Version = "dev"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			c.Version = bi.Main.Version
		}
	}
	return c
}

// Run runs the control plane until ctx ends (it then returns nil) or a part
// fails. Once every listener is bound it calls ready, when not nil, with the
// bound addresses (useful with port 0) and logs "control plane ready".
// Shutdown: stop accepting and drain HTTP and gRPC (each for at most 5 s;
// open API watches end at once), then stop the registry, then close the
// store.
func Run(ctx context.Context, cfg Config, logger *slog.Logger, ready func(Addrs)) (err error) {
	cfg = cfg.withDefaults()
	st, err := openStore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := st.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close store: %w", cerr))
		}
	}()

	authority, err := openCA(cfg, logger)
	if err != nil {
		return err
	}

	var lc net.ListenConfig
	var lis [3]net.Listener
	for i, a := range []struct{ name, addr string }{{"api", cfg.APIAddr}, {"xds", cfg.XDSAddr}, {"sync", cfg.SyncAddr}} {
		l, err := lc.Listen(ctx, "tcp", a.addr)
		if err != nil {
			for _, prev := range lis[:i] {
				prev.Close()
			}
			return fmt.Errorf("listen %s %q: %w", a.name, a.addr, err)
		}
		lis[i] = l
	}
	apiRaw, xdsRaw, syncLis := lis[0], lis[1], lis[2]
	addrs := Addrs{API: apiRaw.Addr().String(), XDS: xdsRaw.Addr().String(), Sync: syncLis.Addr().String()}
	closeAll := func() {
		for _, l := range lis {
			l.Close()
		}
	}

	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every part below uses the store through the metered wrapper; the
	// deferred Close reaches the backend through it.
	st = newMeteredStore(st, metrics)
	td := authority.Bundle().TrustDomain()

	// The identity server comes first: the control plane's own certificate
	// is recorded in its log, and the listeners ask it about revocations.
	// Its hooks reach the xDS server and the SVID, made below; neither
	// hook runs before Run serves.
	var (
		svid  *selfSVID
		idsrv *identity.Server
		trust = &trustPusher{ca: authority, logger: logger}
	)
	idsrv, err = identity.New(identity.Config{
		CA:           authority,
		Tokens:       ca.NewTokens(td, identity.NewStoreTokens(st), nil),
		Certificates: identity.NewStoreCertificates(st),
		Persist:      func(m *ca.Material) error { return m.Save(caDir(cfg), cfg.CAPassphrase) },
		Registerer:   metrics,
		OnRotate: func() {
			trust.push()
			svid.Renew()
		},
		OnRevoke: func() {
			trust.push()
			if idsrv.IsRevoked(svid.serial()) {
				svid.Renew()
			}
		},
	}, logger)
	if err != nil {
		closeAll()
		return err
	}
	// Revocations recorded before a restart hold from the first handshake.
	if _, err := idsrv.Refresh(ctx); err != nil {
		closeAll()
		return err
	}
	svid, err = newSelfSVID(ctx, authority, certSANs(cfg.TLSSANs, apiRaw.Addr(), xdsRaw.Addr()), idsrv.Record, logger)
	if err != nil {
		closeAll()
		return err
	}
	bundle := caBundle{ca: authority}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "verge_cp_connections_refused_total",
		Help: "Connections to the API and xDS ports closed before serving, by port and reason.",
	}, []string{"port", "reason"})
	for _, port := range []string{"api", "xds"} {
		for _, r := range refusedReasons {
			refused.WithLabelValues(port, r)
		}
	}
	metrics.MustRegister(refused)
	portLogger := logger.With("component", "listener")
	apiLis := newDualListener(apiRaw, portConfig{
		name: "api", tls: serverTLS(svid, bundle, td, []string{"h2", "http/1.1"}, idsrv.IsRevoked),
		plaintextOK: apiPlaintextOK, plaintextPeek: 1,
		timeout: cfg.HandshakeTimeout, refused: refused, logger: portLogger,
	})
	xdsLis := newDualListener(xdsRaw, portConfig{
		name: "xds", tls: serverTLS(svid, bundle, td, []string{"h2"}, idsrv.IsRevoked),
		plaintextOK: xdsPlaintextOK, plaintextPeek: len(http2Preface),
		timeout: cfg.HandshakeTimeout, refused: refused, logger: portLogger,
	})
	lis[0], lis[1] = apiLis, xdsLis

	reg := registry.New(st, logger)
	authn, err := newXDSAuthenticator(st, td, bundle, cfg.AllowAnonymous, metrics, logger)
	if err != nil {
		closeAll()
		return err
	}
	xopts := xdsGRPCOptions(authn)
	// Mutual TLS between proxies is on unless the mesh runs without
	// identities (--insecure-allow-anonymous), where proxies may have none.
	xsrv := xds.New(xds.Config{Meshes: reg.Meshes(), Observer: reg, Registerer: metrics,
		ServerOptions: xopts, MTLS: !cfg.AllowAnonymous}, logger)
	trust.ids, trust.xds = idsrv, xsrv
	trust.push()
	adminID, err := ca.WorkloadID(td, SystemNamespace, AdminServiceAccount)
	if err != nil {
		closeAll()
		return fmt.Errorf("admin identity: %w", err)
	}
	guard, err := apiserver.NewGuard(st, apiserver.AuthConfig{
		TrustDomain:    td,
		Bundle:         bundle,
		AdminToken:     cfg.AdminToken,
		AdminID:        adminID,
		AllowAnonymous: cfg.AllowAnonymous,
		Registerer:     metrics,
	}, logger)
	if err != nil {
		closeAll()
		return err
	}
	if cfg.AllowAnonymous {
		logger.Warn("anonymous writes and xds streams allowed (--insecure-allow-anonymous): anyone on the network can change the mesh")
	}
	// Request contexts derive from baseCtx, which ends as soon as shutdown
	// starts: Shutdown waits for every handler, and a ?watch=1 stream only
	// returns when its context ends, so it would otherwise hold shutdown
	// for the whole drain timeout.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	topo := topology.New(topology.Options{})
	tel := topo.Handler(topology.HandlerConfig{
		AuthorizeReport: reportAuthorizer(authn),
		Registerer:      metrics,
		Logger:          logger,
	})
	hs := &http.Server{
		Handler:     withReports(guard.Wrap(apiHandler(cfg, st, reg, xsrv, idsrv, topo, tel, metrics, logger)), tel),
		BaseContext: func(net.Listener) context.Context { return baseCtx },
		// ReadTimeout bounds reading a request (headers and body), not a
		// long-lived watch response.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "http").Handler(), slog.LevelWarn),
	}
	hs.RegisterOnShutdown(cancelBase)

	g, gctx := errgroup.WithContext(ctx)
	// Loops stop only after the servers drained, so that in-flight requests
	// and streams still see a live registry.
	loopCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoops()
	var servers sync.WaitGroup

	servers.Add(3)
	g.Go(func() error {
		defer servers.Done()
		if err := hs.Serve(apiLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve api %s: %w", addrs.API, err)
		}
		return nil
	})
	g.Go(func() error {
		defer servers.Done()
		<-gctx.Done()
		dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		defer cancel()
		if err := hs.Shutdown(dctx); err != nil {
			logger.Warn("api drain timed out", "err", err)
			hs.Close()
		}
		return nil
	})
	g.Go(func() error {
		defer servers.Done()
		return xsrv.Run(gctx, xdsLis)
	})
	g.Go(func() error { return holdSync(gctx, syncLis) })
	g.Go(func() error { return reg.Run(loopCtx) })
	g.Go(func() error { return svid.Run(gctx) })
	g.Go(func() error { return idsrv.Run(gctx) })
	g.Go(func() error {
		servers.Wait()
		stopLoops()
		return nil
	})

	if ready != nil {
		ready(addrs)
	}
	logger.Info("control plane ready", "api", addrs.API, "xds", addrs.XDS, "sync", addrs.Sync, "store", cfg.Store,
		"spiffe_id", svid.id.String())
	err = g.Wait()
	logger.Info("control plane stopped")
	return err
}

// certSANs are the control plane certificate's DNS names and IP addresses:
// localhost, both loopback addresses, the addresses the API and xDS ports
// are bound to (unless unspecified) and the operator's extra ones.
func certSANs(extra []string, bound ...net.Addr) []string {
	sans := []string{"localhost", "127.0.0.1", "::1"}
	for _, a := range bound {
		if t, ok := a.(*net.TCPAddr); ok && !t.IP.IsUnspecified() && !t.IP.IsLoopback() {
			sans = append(sans, t.IP.String())
		}
	}
	for _, e := range extra {
		if !slices.Contains(sans, e) {
			sans = append(sans, e)
		}
	}
	return sans
}

// trustPusher hands the xDS server the CA's bundle and a CRL of the
// revoked certificates, signed afresh, in one push (at start, after a
// rotation, after a revocation, and on the identity server's sweeps).
type trustPusher struct {
	ca     *ca.CA
	logger *slog.Logger
	// ids and xds are set once, before anything calls push.
	ids *identity.Server
	xds *xds.Server

	// mu serializes pushes: each reads the revocations when it starts, so
	// without it an older CRL could be pushed after a newer one.
	mu sync.Mutex
}

func (p *trustPusher) push() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var crlPEM []byte
	if revs := p.ids.Revocations(); len(revs) > 0 {
		der, err := p.ca.CRL(revs)
		if err != nil {
			// The control plane's own listeners and renewals still refuse
			// the revoked certificates; proxies do not learn of them.
			p.logger.Error("crl not signed: proxies are not told of revoked certificates", "revoked", len(revs), "err", err)
		} else {
			crlPEM = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
		}
	}
	p.xds.SetTrustBundle(p.ca.Bundle().TrustDomain().Name(), rootsDER(p.ca), crlPEM)
}

// rootsDER is the CA's current bundle as DER certificates.
func rootsDER(authority *ca.CA) [][]byte {
	var out [][]byte
	for _, c := range authority.Bundle().X509Authorities() {
		out = append(out, c.Raw)
	}
	return out
}

// xdsServerOptions are the xDS port's gRPC options: credentials that hand
// the TLS state dualListener negotiated to gRPC, and the interceptor that
// checks a proxy's SVID against the Workload its node names.
func xdsServerOptions(st store.Store, td spiffeid.TrustDomain, bundle x509bundle.Source, allowAnonymous bool, metrics prometheus.Registerer, logger *slog.Logger) ([]grpc.ServerOption, error) {
	authn, err := newXDSAuthenticator(st, td, bundle, allowAnonymous, metrics, logger)
	if err != nil {
		return nil, err
	}
	return xdsGRPCOptions(authn), nil
}

// newXDSAuthenticator is the check that a proxy's SVID is that of the
// Workload it names, for its xDS streams and its telemetry reports.
func newXDSAuthenticator(st store.Store, td spiffeid.TrustDomain, bundle x509bundle.Source, allowAnonymous bool, metrics prometheus.Registerer, logger *slog.Logger) (*xds.Authenticator, error) {
	return xds.NewAuthenticator(xds.AuthnConfig{
		TrustDomain:    td,
		Bundle:         bundle,
		Workloads:      storeWorkloads(st),
		AllowAnonymous: allowAnonymous,
		Registerer:     metrics,
	}, logger)
}

func xdsGRPCOptions(authn *xds.Authenticator) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.Creds(dualCredentials{}), grpc.ChainStreamInterceptor(authn.StreamInterceptor())}
}

// reportAuthorizer lets a telemetry report through when the caller's client
// certificate is the SVID of the workload the report names, the rule of
// xDS streams; it maps the refusal to 401 (no or bad certificate), 403
// (another identity) or 503 (the workload could not be looked up).
func reportAuthorizer(authn *xds.Authenticator) func(*http.Request, string, string) error {
	return func(r *http.Request, ns, name string) error {
		var certs []*x509.Certificate
		if r.TLS != nil {
			certs = r.TLS.PeerCertificates
		}
		err := authn.AuthorizeWorkload(r.Context(), certs, ns, name)
		if err == nil {
			return nil
		}
		ref, ok := errors.AsType[*xds.WorkloadRefusal](err)
		switch {
		case !ok:
			return err
		case ref.Unavailable:
			return &topology.Refusal{Status: http.StatusServiceUnavailable, Message: ref.Message}
		case ref.Reason == xds.AuthNoCertificate || ref.Reason == xds.AuthInvalidCertificate:
			return &topology.Refusal{Status: http.StatusUnauthorized, Message: ref.Message}
		default:
			return &topology.Refusal{Status: http.StatusForbidden, Message: ref.Message}
		}
	}
}

// withReports sends POSTs of telemetry reports to reports, past the API
// guard (which lets only administrators and workloads' own Workload and
// health writes through), and everything else to api.
func withReports(api, reports http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == telemetry.ReportPath {
			reports.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

// storeWorkloads looks Workloads up in the store rather than the registry,
// whose view lags the store: a proxy connects right after registering.
func storeWorkloads(st store.Store) xds.WorkloadLookup {
	k, _ := v1alpha1.KindByName("Workload")
	return func(ctx context.Context, ns, name string) (string, bool, error) {
		kv, err := st.Get(ctx, apiserver.Key(k, ns, name))
		if errors.Is(err, store.ErrNotFound) {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		obj, err := apiserver.DecodeStored(k, kv)
		if err != nil {
			return "", false, err
		}
		wl, ok := obj.(*v1alpha1.Workload)
		if !ok {
			return "", false, fmt.Errorf("workload %s/%s: stored object is a %T", ns, name, obj)
		}
		v1alpha1.Default(wl)
		return wl.Spec.ServiceAccount, true, nil
	}
}

// caDir holds the CA material, encrypted (ca.Material.Save).
func caDir(cfg Config) string { return filepath.Join(cfg.DataDir, "ca") }

// openCA builds the CA from the operator's PEM when given, else from the
// material a previous run saved, else from a new self-signed root, and saves
// the material unless it came from the file.
func openCA(cfg Config, logger *slog.Logger) (*ca.CA, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("open ca: trust domain %q: %w", cfg.TrustDomain, err)
	}
	if len(cfg.CAPassphrase) == 0 {
		return nil, errors.New("open ca: passphrase is empty")
	}
	dir := caDir(cfg)
	var (
		mat    *ca.Material
		source string
	)
	switch {
	case len(cfg.CACert) > 0 || len(cfg.CAKey) > 0:
		if mat, err = ca.MaterialFromPEM(cfg.CACert, cfg.CAKey); err != nil {
			return nil, fmt.Errorf("open ca: %w", err)
		}
		source = "operator"
	default:
		mat, err = ca.Load(dir, cfg.CAPassphrase)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			source = "generated"
		case err != nil:
			return nil, fmt.Errorf("open ca %q: %w", dir, err)
		default:
			source = "saved"
		}
	}
	authority, err := ca.New(ca.Config{TrustDomain: td, SVIDTTL: cfg.SVIDTTL, Material: mat})
	if err != nil {
		return nil, fmt.Errorf("open ca %q: %w", dir, err)
	}
	if source != "saved" {
		if err := authority.Material().Save(dir, cfg.CAPassphrase); err != nil {
			return nil, fmt.Errorf("open ca: %w", err)
		}
	}
	logger.Info("ca ready", "trust_domain", td.Name(), "source", source,
		"trusted_roots", len(authority.Bundle().X509Authorities()))
	return authority, nil
}

func openStore(ctx context.Context, cfg Config, logger *slog.Logger) (store.Store, error) {
	switch cfg.Store {
	case "bolt":
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		st, err := bolt.Open(filepath.Join(cfg.DataDir, "verge.db"), logger)
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return st, nil
	case "etcd":
		st, err := etcd.New(ctx, etcd.Config{Endpoints: cfg.EtcdEndpoints, Prefix: cfg.EtcdPrefix, DialTimeout: 5 * time.Second}, logger)
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		return st, nil
	default:
		return nil, fmt.Errorf("open store: unknown backend %q: want bolt or etcd", cfg.Store)
	}
}

// holdSync keeps the zone-sync address bound (so a second control plane
// cannot take it and clients get a clean refusal pattern) until zone sync
// is implemented: it accepts connections and closes them at once.
func holdSync(ctx context.Context, lis net.Listener) error {
	stop := context.AfterFunc(ctx, func() { lis.Close() })
	defer stop()
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept sync %s: %w", lis.Addr(), err)
		}
		c.Close()
	}
}

func apiHandler(cfg Config, st store.Store, reg *registry.Registry, xsrv *xds.Server, idsrv *identity.Server, topo *topology.Aggregator, tel http.Handler, metrics *prometheus.Registry, logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	api := apiserver.New(st, logger).Handler()
	mux.Handle("/apis", api)
	mux.Handle("/apis/", api)
	mux.Handle("/api/v1/proxies", xsrv.Handler())
	mux.Handle(registry.HealthPath, reg.HealthHandler())
	ids := idsrv.Handler()
	for _, p := range []string{identity.TokensPath, identity.TokensPath + "/", identity.CertificatesPath, identity.CertificatesPath + "/", identity.BundlePath, identity.RotatePath} {
		mux.Handle(p, ids)
	}
	for _, p := range []string{telemetry.ReportPath, telemetry.TopologyPath, telemetry.SeriesPath, telemetry.TapPath, telemetry.ErrorsPath, telemetry.ProxiesPath} {
		mux.Handle(p, tel)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"version": cfg.Version})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.Handle("/", web.Handler(dashboardSource{reg: reg, xds: xsrv, certs: newCertCache(identity.NewStoreCertificates(st))}, topo))
	return mux
}
