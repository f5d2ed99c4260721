// Package xds owns the control plane's xDS server: the gRPC ADS endpoint (and
// the separate LDS, RDS, CDS, EDS and SDS services, state-of-the-world and delta)
// built on go-control-plane, the per-client snapshots it offers, and what it
// knows of each client (sent, acknowledged and rejected versions). It does not
// translate mesh resources (package xds/translate does) nor keep them (package
// registry does): it receives each new translate.Mesh on a channel.
//
// Data flow:
//
//	registry --Mesh--> Server.Run loop --translate.NewIndex--> per-client
//	Resources --Validate, hash--> cache.Snapshot --SetSnapshot--> streams
//
// A client whose node metadata has "workload": "namespace/name" is a Verge
// proxy and gets translate's ForWorkload output; any other client (Envoy,
// proxyless gRPC) gets ForProxyless. Each type's version is a hash of its
// resources, so a change reaches every client it affects, and only those.
//
// A Verge proxy whose Workload is not in the current mesh gets no snapshot at
// all, never an empty one: a proxy applies what it is sent and saves it as
// its on-disk cache, so an empty snapshot would tear down every listener it
// has. That makes it the edge guarantee that a deleted workload's proxy keeps
// serving the last configuration it accepted until it is stopped; a proxy
// whose Workload does not exist yet waits for it. A node that reconnects
// naming a different workload is re-read on each new stream and republished.
//
// Trust bundle: once SetTrustBundle has been called, every Verge proxy's
// snapshot carries the SDS secret "ROOTCA" (translate.TrustBundleSecret), so
// a new root or a new CRL (revoked certificates) reaches every proxy as a
// new secret version; the proxyless view
// never carries it. Mutual TLS in the translated resources (Mesh.MTLS) is
// honoured only while a bundle is set, since every TLS context refers to it.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/xds/translate"
)

// MetadataWorkload is the node metadata field a Verge proxy sets to
// "namespace/name" of its Workload.
const MetadataWorkload = "workload"

// ConnectionObserver learns when a Verge proxy's xDS streams open and close
// (the registry uses it for workload health). The server calls
// ProxyConnected once per stream, when the stream's first request names the
// node, and ProxyDisconnected once when that stream ends, so the calls are
// balanced per stream: a workload's proxy is connected while it has more
// connected than disconnected calls. Calls come from gRPC stream goroutines,
// possibly concurrently, and must not block.
type ConnectionObserver interface {
	ProxyConnected(namespace, name string)
	ProxyDisconnected(namespace, name string)
}

// Config is the server's bootstrap configuration.
type Config struct {
	// Meshes delivers each new mesh state; Run reads it until ctx ends. The
	// sender coalesces (latest wins); nil means no updates.
	Meshes <-chan translate.Mesh
	// Observer, when set, is told of Verge proxy streams opening and closing.
	Observer ConnectionObserver
	// Registerer, when set, receives the server's metrics.
	Registerer prometheus.Registerer
	// GoneAfter is how long a node's snapshot and status outlive its last
	// stream; default 1 minute.
	GoneAfter time.Duration
	// ShutdownTimeout bounds the graceful drain of streams; default 5 s.
	ShutdownTimeout time.Duration
	// ServerOptions are added to the gRPC server's own (the control plane
	// installs its transport credentials and the check that a proxy's
	// certificate matches the workload it claims).
	ServerOptions []grpc.ServerOption
	// MTLS turns on mutual TLS between Verge proxies in every translated
	// mesh, once a trust bundle is set (see SetTrustBundle).
	MTLS bool
}

// Server is the xDS server. Create it with New, serve with Run. ProxyStatus
// and Handler are safe to call at any time from any goroutine.
type Server struct {
	cfg    Config
	logger *slog.Logger
	// proxies holds Verge proxies' snapshots and answers in ADS mode, which
	// orders responses so a proxy never sees a route before its cluster.
	// proxyless holds everyone else's: a gRPC client subscribes only to the
	// listener it dials, and an ADS-mode cache stays silent on a request
	// that does not name every resource of the type. mux picks by node.
	proxies, proxyless cache.SnapshotCache
	mux                cache.Cache

	nacks        *prometheus.CounterVec
	inconsistent prometheus.Counter
	invalid      prometheus.Counter
	connected    *prometheus.GaugeVec
	pushes       *prometheus.CounterVec
	pushLatency  prometheus.Histogram

	// pubMu serialises computing and setting snapshots, so that a snapshot
	// built from an older mesh never replaces one built from a newer mesh.
	pubMu sync.Mutex
	// cur is the latest mesh's state; nil until the first mesh. Guarded by pubMu.
	cur *meshState
	// published maps a node ID to the workload key ("" for proxyless) of
	// the snapshot last set for it. Guarded by pubMu.
	published map[string]string
	// mesh is the latest mesh as received (hasMesh once one came); bundle
	// and bundleTD are the trust bundle secret and its trust domain, nil
	// until SetTrustBundle. Guarded by pubMu.
	mesh     translate.Mesh
	hasMesh  bool
	bundle   *tlsv3.Secret
	bundleTD string

	// mu guards the fields below; never held while calling out.
	mu      sync.Mutex
	nodes   map[string]*nodeState
	streams map[streamKey]*streamState
}

// meshState is one mesh's translation index and the snapshots built from it
// so far, shared by every client with the same workload ("" for proxyless).
type meshState struct {
	ix        *translate.Index
	workloads map[string]*v1alpha1.Workload
	snaps     map[string]*cache.Snapshot
}

type nodeState struct {
	id string
	// namespace and workload are read from the metadata of the node's
	// newest stream.
	namespace, workload string
	streams             int
	// kind is the cache kind (kindProxy, kindProxyless) the node was
	// counted under in verge_xds_connected_clients when its first stream
	// opened.
	kind           string
	connectedAt    time.Time
	disconnectedAt time.Time
	types          map[string]*TypeStatus
}

// streamKey tells apart streams of the state-of-the-world and delta servers,
// which number their streams independently.
type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	nodeID string
	// namespace and workload are what the stream's first request named, so
	// that the observer hears of its close under the name it was told of
	// at its opening even when the node later reconnects as another.
	namespace, workload string
	// nonces maps a delta response's nonce to its system version, so that
	// an ACK (which carries only the nonce) can be attributed; order holds
	// the same nonces oldest first, to evict the oldest when full.
	nonces map[string]string
	order  []string
}

// maxNonces bounds streamState.nonces; a client that never answers cannot
// grow it further.
const maxNonces = 64

// rememberNonce records a delta response's nonce, evicting the oldest one
// when maxNonces are outstanding.
func (st *streamState) rememberNonce(nonce, version string) {
	if _, ok := st.nonces[nonce]; ok {
		st.nonces[nonce] = version
		return
	}
	for len(st.order) >= maxNonces {
		delete(st.nonces, st.order[0])
		st.order = st.order[1:]
	}
	st.nonces[nonce] = version
	st.order = append(st.order, nonce)
}

// takeNonce returns and forgets the version sent with nonce; ok is false
// for a nonce never sent on the stream or already evicted.
func (st *streamState) takeNonce(nonce string) (version string, ok bool) {
	version, ok = st.nonces[nonce]
	if ok {
		delete(st.nonces, nonce)
		if i := slices.Index(st.order, nonce); i >= 0 {
			st.order = slices.Delete(st.order, i, i+1)
		}
	}
	return version, ok
}

// servedTypes are the type URLs the server offers. Requests name a type
// before go-control-plane checks it, so only these are recorded: any other
// would let a client grow the status map and the NACK metric at will.
var servedTypes = map[string]bool{
	resource.ListenerType: true,
	resource.RouteType:    true,
	resource.ClusterType:  true,
	resource.EndpointType: true,
	resource.SecretType:   true,
}

// maxNACKBytes bounds the NACK message kept and logged per type.
const maxNACKBytes = 1024

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// New returns a server; it serves nothing until Run.
func New(cfg Config, logger *slog.Logger) *Server {
	if cfg.GoneAfter <= 0 {
		cfg.GoneAfter = time.Minute
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	logger = logger.With("component", "xds")
	s := &Server{
		cfg:       cfg,
		logger:    logger,
		proxies:   cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger{logger}),
		proxyless: cache.NewSnapshotCache(false, cache.IDHash{}, cacheLogger{logger}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_xds_nacks_total",
			Help: "xDS responses rejected by clients, by type URL.",
		}, []string{"type_url"}),
		inconsistent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verge_xds_inconsistent_snapshots_total",
			Help: "Snapshots withheld because they failed Consistent().",
		}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verge_xds_invalid_resources_total",
			Help: "Snapshots withheld because their resources failed validation.",
		}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "verge_xds_connected_clients",
			Help: "Nodes with at least one open xDS stream, by kind (proxy: a Verge proxy naming its workload; proxyless: any other client).",
		}, []string{"kind"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_xds_pushes_total",
			Help: "xDS responses sent to clients, by type URL.",
		}, []string{"type_url"}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "verge_xds_push_latency_seconds",
			Help: "Time from a new mesh (or trust bundle) reaching the xDS server to a node's changed snapshot being set, from which it is sent at once.",
			// 1 ms to about 16 s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		published: map[string]string{},
		nodes:     map[string]*nodeState{},
		streams:   map[streamKey]*streamState{},
	}
	s.mux = &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return cacheKind(r.GetNode()) },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return cacheKind(r.GetNode()) },
		Caches:        map[string]cache.Cache{kindProxy: s.proxies, kindProxyless: s.proxyless},
	}
	for _, k := range []string{kindProxy, kindProxyless} {
		s.connected.WithLabelValues(k)
	}
	for t := range servedTypes {
		s.pushes.WithLabelValues(t)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.nacks, s.inconsistent, s.invalid, s.connected, s.pushes, s.pushLatency)
	}
	return s
}

const (
	kindProxy     = "proxy"
	kindProxyless = "proxyless"
)

// cacheKind tells a Verge proxy (it names its workload) from any other client.
func cacheKind(node *corev3.Node) string {
	if _, name := parseWorkload(node); name != "" {
		return kindProxy
	}
	return kindProxyless
}

// Run serves xDS on lis until ctx ends or serving fails, applying each mesh
// from Config.Meshes. On cancellation it drains streams for at most
// Config.ShutdownTimeout, then closes them, and returns nil. It closes lis.
func (s *Server) Run(ctx context.Context, lis net.Listener) error {
	g, ctx := errgroup.WithContext(ctx)

	gs := grpc.NewServer(append([]grpc.ServerOption{
		// Verge proxies ping every 10 s to notice a dead control plane
		// quickly; without this policy grpc-go would close them with
		// ENHANCE_YOUR_CALM. MinTime sits below 10 s so that timer jitter
		// on the client never counts as a strike.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             5 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
	}, s.cfg.ServerOptions...)...)
	xs := serverv3.NewServer(ctx, s.mux, s.callbacks())
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xs)
	secretservice.RegisterSecretDiscoveryServiceServer(gs, xs)

	s.logger.Info("xds server started", "addr", lis.Addr().String())
	g.Go(func() error {
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve xds %s: %w", lis.Addr(), err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() {
			gs.GracefulStop()
			close(stopped)
		}()
		t := time.NewTimer(s.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C:
			s.logger.Warn("xds drain timed out", "timeout", s.cfg.ShutdownTimeout)
			gs.Stop()
			<-stopped
		}
		return nil
	})
	g.Go(func() error { return s.loop(ctx) })
	err := g.Wait()
	s.logger.Info("xds server stopped")
	return err
}

// loop applies meshes and forgets nodes gone for longer than GoneAfter.
func (s *Server) loop(ctx context.Context) error {
	sweep := time.NewTicker(max(s.cfg.GoneAfter/4, time.Second))
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-s.cfg.Meshes:
			if !ok {
				// The producer has stopped; keep serving the last mesh.
				s.cfg.Meshes = nil
				continue
			}
			s.apply(m)
		case now := <-sweep.C:
			s.sweep(now)
		}
	}
}

// SetTrustBundle makes rootsDER (DER certificates, every root a peer may
// chain to) the trust bundle served to every Verge proxy as the SDS secret
// "ROOTCA", with crlPEM (PEM "X509 CRL" blocks of the revoked certificates;
// nil when none is revoked) as its CRL, and trustDomain the mesh's trust
// domain when the Mesh names none. Proxies get the new bundle and CRL at
// once, in one push; until the first call no secret is served and
// Mesh.MTLS is ignored. Safe to call at any time, before or during Run,
// from any goroutine; the caller serializes calls so that an older CRL
// never replaces a newer one.
func (s *Server) SetTrustBundle(trustDomain string, rootsDER [][]byte, crlPEM []byte) {
	secret := translate.TrustBundleSecret(rootsDER, crlPEM)
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	s.bundle, s.bundleTD = secret, trustDomain
	s.logger.Info("trust bundle set", "trust_domain", trustDomain, "roots", len(rootsDER), "crl_bytes", len(crlPEM))
	if s.hasMesh {
		s.rebuildLocked()
	}
}

// apply makes m the current mesh and updates every known node's snapshot.
func (s *Server) apply(m translate.Mesh) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	s.mesh, s.hasMesh = m, true
	s.rebuildLocked()
}

// rebuildLocked translates the current mesh with the current trust bundle
// and updates every known node's snapshot. s.pubMu must be held: a
// translation from an older mesh or bundle must never replace a newer one.
func (s *Server) rebuildLocked() {
	start := time.Now()
	m := s.mesh
	m.MTLS = (m.MTLS || s.cfg.MTLS) && s.bundle != nil
	if m.TrustDomain == "" {
		m.TrustDomain = s.bundleTD
	}
	st := &meshState{
		ix:        translate.NewIndex(m),
		workloads: make(map[string]*v1alpha1.Workload, len(m.Workloads)),
		snaps:     map[string]*cache.Snapshot{},
	}
	for _, wl := range m.Workloads {
		st.workloads[wl.Namespace+"/"+wl.Name] = wl
	}
	s.cur = st
	s.mu.Lock()
	ids := make([]string, 0, len(s.nodes))
	for id := range s.nodes {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.publishLocked(id, start)
	}
	s.logger.Debug("mesh applied", "nodes", len(ids), "duration", time.Since(start))
}

// publishLocked computes and sets the snapshot of node id from the current
// mesh. When changedAt is set (the time the mesh or bundle arrived) and the
// node's snapshot changed, the time since is observed as push latency.
// s.pubMu must be held.
func (s *Server) publishLocked(id string, changedAt time.Time) {
	if s.cur == nil {
		return
	}
	s.mu.Lock()
	n, ok := s.nodes[id]
	var key string
	if ok && n.workload != "" {
		key = n.namespace + "/" + n.workload
	}
	s.mu.Unlock()
	if !ok {
		return
	}

	var wl *v1alpha1.Workload
	if key != "" {
		if wl, ok = s.cur.workloads[key]; !ok {
			s.withholdLocked(id, key)
			return
		}
	}
	snap, ok := s.cur.snaps[key]
	if !ok {
		if wl == nil {
			snap = s.snapshot(id, key, s.cur.ix.ForProxyless())
		} else {
			r := s.cur.ix.ForWorkload(wl)
			if s.bundle != nil {
				r.Secrets = []*tlsv3.Secret{s.bundle}
			}
			snap = s.snapshot(id, key, r)
		}
		s.cur.snaps[key] = snap
	}
	if snap == nil {
		return
	}
	c := s.cacheFor(key)
	changed := true
	if !changedAt.IsZero() {
		if prev, err := c.GetSnapshot(id); err == nil {
			changed = !sameVersions(prev, snap)
		}
	}
	// The cache only writes to buffered channels sized for one response per
	// type per stream, so this does not block on a slow client.
	if err := c.SetSnapshot(context.Background(), id, snap); err != nil {
		s.logger.Error("set snapshot", "node", id, "err", err)
		return
	}
	s.published[id] = key
	if !changedAt.IsZero() && changed {
		s.pushLatency.Observe(time.Since(changedAt).Seconds())
	}
}

// sameVersions reports whether two snapshots carry the same version of
// every served type, so that setting b in place of a sends nothing.
func sameVersions(a cache.ResourceSnapshot, b *cache.Snapshot) bool {
	for t := range servedTypes {
		if a.GetVersion(t) != b.GetVersion(t) {
			return false
		}
	}
	return true
}

// withholdLocked leaves node id, a Verge proxy naming the unknown workload
// key, without a new snapshot (see the package comment): the proxy keeps
// what it has. What it has must still be its own, though: a snapshot set
// while the node named another workload (or none) is cleared rather than
// served under the new name. s.pubMu must be held.
func (s *Server) withholdLocked(id, key string) {
	prev, had := s.published[id]
	if had && prev != key {
		s.cacheFor(prev).ClearSnapshot(id)
		delete(s.published, id)
		s.logger.Info("snapshot cleared, workload changed", "node", id, "workload", key, "previous_workload", prev)
	}
	s.logger.Debug("snapshot withheld, workload unknown", "node", id, "workload", key, "keeps_last", had && prev == key)
}

// cacheFor is the cache that serves clients with workload key.
func (s *Server) cacheFor(key string) cache.SnapshotCache {
	if key == "" {
		return s.proxyless
	}
	return s.proxies
}

// snapshot validates r with translate's Validate (which also opens the
// messages packed in Anys and checks references, for proxyless clients too)
// and builds node id's snapshot from it. It returns nil, counted and logged,
// when r is invalid or, for a Verge proxy, the snapshot fails Consistent():
// nothing half-valid is ever offered.
func (s *Server) snapshot(id, key string, r translate.Resources) *cache.Snapshot {
	if err := r.Validate(); err != nil {
		s.invalid.Inc()
		s.logger.Error("snapshot withheld", "node", id, "workload", key, "err", err)
		return nil
	}
	snap, err := buildSnapshot(r)
	if err != nil {
		s.invalid.Inc()
		s.logger.Error("snapshot withheld", "node", id, "workload", key, "err", err)
		return nil
	}
	// Proxyless api listeners reference no RDS, so only Verge proxy
	// snapshots can be held to Consistent().
	if key != "" {
		if err := snap.Consistent(); err != nil {
			s.inconsistent.Inc()
			s.logger.Error("snapshot withheld", "node", id, "workload", key, "err", err)
			return nil
		}
	}
	return snap
}

// sweep forgets nodes without streams since before now-GoneAfter.
func (s *Server) sweep(now time.Time) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	var gone []string
	s.mu.Lock()
	for id, n := range s.nodes {
		if n.streams == 0 && now.Sub(n.disconnectedAt) > s.cfg.GoneAfter {
			delete(s.nodes, id)
			gone = append(gone, id)
		}
	}
	s.mu.Unlock()
	for _, id := range gone {
		s.proxies.ClearSnapshot(id)
		s.proxyless.ClearSnapshot(id)
		delete(s.published, id)
		s.logger.Debug("node forgotten", "node", id)
	}
}

func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			s.onRequest(streamKey{id: id}, req.GetNode(), req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.onResponse(streamKey{id: id}, resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce())
		},
		StreamClosedFunc: func(id int64, _ *corev3.Node) { s.onClose(streamKey{id: id}) },
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			s.onRequest(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), "", req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			s.onResponse(streamKey{delta: true, id: id}, resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce())
		},
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { s.onClose(streamKey{delta: true, id: id}) },
	}
}

// onRequest records a client request: the first on a stream registers the
// stream (and the node, which then gets its snapshot at once; a known node
// whose workload metadata changed is republished); an ACK or NACK of a
// served type updates the type's status. versionInfo is empty for delta
// requests, whose ACKs are attributed through the nonce.
func (s *Server) onRequest(k streamKey, node *corev3.Node, typeURL, versionInfo, nonce, nackMsg string, nack bool) {
	now := time.Now()
	var publish, recorded bool
	var ns, name, nodeID string
	nackMsg = truncateUTF8(nackMsg, maxNACKBytes)

	s.mu.Lock()
	st, ok := s.streams[k]
	newStream := !ok
	if newStream {
		st = &streamState{nodeID: node.GetId(), nonces: map[string]string{}}
		st.namespace, st.workload = parseWorkload(node)
		s.streams[k] = st
	}
	n, ok := s.nodes[st.nodeID]
	if !ok {
		publish = true
		n = &nodeState{id: st.nodeID, types: map[string]*TypeStatus{}}
		n.namespace, n.workload = st.namespace, st.workload
		s.nodes[st.nodeID] = n
	} else if newStream && (n.namespace != st.namespace || n.workload != st.workload) {
		// The node came back as another workload (or as none): what it
		// was sent and acknowledged describes the old one.
		publish = true
		n.namespace, n.workload = st.namespace, st.workload
		n.types = map[string]*TypeStatus{}
	}
	if newStream {
		if n.streams == 0 {
			n.connectedAt = now
			n.kind = kindProxyless
			if n.workload != "" {
				n.kind = kindProxy
			}
			s.connected.WithLabelValues(n.kind).Inc()
		}
		n.streams++
	}
	nodeID, ns, name = n.id, n.namespace, n.workload
	if servedTypes[typeURL] && nonce != "" {
		known := true
		if k.delta {
			// A delta ACK carries only the nonce: one never sent, or
			// evicted, says nothing about which version was accepted.
			versionInfo, known = st.takeNonce(nonce)
		}
		if known {
			recorded = true
			ts := n.types[typeURL]
			if ts == nil {
				ts = &TypeStatus{}
				n.types[typeURL] = ts
			}
			if nack {
				ts.NACK = nackMsg
			} else {
				ts.AckedVersion = versionInfo
				ts.NACK = ""
			}
			ts.UpdatedAt = now
		}
	}
	s.mu.Unlock()

	if newStream {
		s.logger.Info("proxy stream opened", "node", nodeID, "workload", joinWorkload(ns, name), "delta", k.delta)
		if st.workload != "" && s.cfg.Observer != nil {
			s.cfg.Observer.ProxyConnected(st.namespace, st.workload)
		}
	}
	if nack && recorded {
		s.nacks.WithLabelValues(typeURL).Inc()
		s.logger.Warn("config rejected", "node", nodeID, "type_url", typeURL, "version", versionInfo, "error", nackMsg)
	}
	if publish {
		s.pubMu.Lock()
		s.publishLocked(nodeID, time.Time{})
		s.pubMu.Unlock()
	}
}

func (s *Server) onResponse(k streamKey, typeURL, version, nonce string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[k]
	if !ok {
		return
	}
	n, ok := s.nodes[st.nodeID]
	if !ok {
		return
	}
	if k.delta {
		st.rememberNonce(nonce, version)
	}
	if servedTypes[typeURL] {
		s.pushes.WithLabelValues(typeURL).Inc()
	}
	ts := n.types[typeURL]
	if ts == nil {
		ts = &TypeStatus{}
		n.types[typeURL] = ts
	}
	ts.SentVersion = version
	ts.UpdatedAt = now
}

func (s *Server) onClose(k streamKey) {
	s.mu.Lock()
	st, ok := s.streams[k]
	if !ok {
		s.mu.Unlock()
		return
	}
	delete(s.streams, k)
	if n, ok := s.nodes[st.nodeID]; ok {
		n.streams--
		if n.streams == 0 {
			n.disconnectedAt = time.Now()
			s.connected.WithLabelValues(n.kind).Dec()
		}
	}
	s.mu.Unlock()

	s.logger.Info("proxy stream closed", "node", st.nodeID, "workload", joinWorkload(st.namespace, st.workload), "delta", k.delta)
	if st.workload != "" && s.cfg.Observer != nil {
		s.cfg.Observer.ProxyDisconnected(st.namespace, st.workload)
	}
}

// parseWorkload reads the node's "workload" metadata: "namespace/name", or a
// bare name in the default namespace. Both are empty when it is absent.
func parseWorkload(node *corev3.Node) (namespace, name string) {
	v := node.GetMetadata().GetFields()[MetadataWorkload].GetStringValue()
	if v == "" {
		return "", ""
	}
	if ns, n, ok := strings.Cut(v, "/"); ok {
		return ns, n
	}
	return v1alpha1.DefaultNamespace, v
}

func joinWorkload(ns, name string) string {
	if name == "" {
		return ""
	}
	return ns + "/" + name
}

// cacheLogger sends go-control-plane's cache logs to slog at debug level (its
// warnings are routine, e.g. a client asking for a resource not yet known).
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(format string, args ...any) { c.log(format, args...) }
func (c cacheLogger) Infof(format string, args ...any)  { c.log(format, args...) }
func (c cacheLogger) Warnf(format string, args ...any)  { c.log(format, args...) }
func (c cacheLogger) Errorf(format string, args ...any) {
	c.l.Error("xds cache", "detail", fmt.Sprintf(format, args...))
}

func (c cacheLogger) log(format string, args ...any) {
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug("xds cache", "detail", fmt.Sprintf(format, args...))
	}
}
