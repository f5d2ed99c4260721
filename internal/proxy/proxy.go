package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/authz"
	"verge.dev/verge/internal/proxy/backoff"
	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/observe"
)

// Defaults for zero Config fields.
const (
	DefaultDrainTimeout        = 10 * time.Second
	DefaultMaxIdleConnsPerHost = 1024
	DefaultConnectTimeout      = 5 * time.Second
	DefaultUpstreamIdleTimeout = 90 * time.Second
	DefaultTCPIdleTimeout      = time.Hour
	DefaultStreamIdleTimeout   = 5 * time.Minute
)

// Bounds of the retry of listeners that could not be opened (the address
// still held by another process, or by a socket the kernel has not freed).
const (
	listenRetryBase = 100 * time.Millisecond
	listenRetryMax  = 10 * time.Second
)

// Config is the proxy's bootstrap configuration, read once by New. Zero
// fields take the defaults above, except DrainDelay.
type Config struct {
	// DrainTimeout bounds how long in-flight requests and streams may run
	// after a listener stops accepting (on removal or shutdown).
	DrainTimeout time.Duration
	// DrainDelay is how long Run keeps accepting after its context ended,
	// while Ready already reports false, before it closes the listeners:
	// the time the control plane needs to take this proxy's endpoints out
	// of its peers' configuration, so that they stop connecting before
	// connects are refused. Zero means none.
	DrainDelay time.Duration
	// TCPIdleTimeout closes a proxied TCP connection, both sides, once
	// neither direction has moved a byte for this long.
	TCPIdleTimeout time.Duration
	// StreamIdleTimeout bounds how long writing a response to a client on
	// the net/http path (HTTP/2, gRPC, h2c) may make no progress; past it
	// the stream is reset, so that a client that stopped reading cannot
	// hold the request and its upstream forever.
	StreamIdleTimeout time.Duration
	// MaxIdleConnsPerHost is the idle pool size per upstream endpoint.
	MaxIdleConnsPerHost int
	// UpstreamIdleTimeout closes pooled upstream connections idle this long.
	UpstreamIdleTimeout time.Duration
	// DisableH1FastPath serves HTTP/1.1 with net/http even where the h1
	// engine could carry it.
	DisableH1FastPath bool
	// DisableH2Bridge carries HTTP/1.1 between proxies (HTTP/2 over mutual
	// TLS) with net/http's HTTP/2 client and server instead of the
	// bridge (bridge.go, package h2). The bridge is also off when the h1
	// fast path is.
	DisableH2Bridge bool
	// SVID and Bundle are the proxy's own identity and the mesh's trust
	// bundle for mutual TLS (proxy/svid implements both; they may change at
	// any time, and every new handshake reads the current ones). Nil means
	// no identity: TLS listeners refuse connections and TLS endpoints are
	// not dialled, each logged.
	SVID   x509svid.Source
	Bundle x509bundle.Source
	// Authz records authorization decisions; nil: counted nowhere.
	Authz *authz.Recorder
	// Node is the proxy's xDS node id, Zone its workload's zone label and
	// Service its workload's service ("NAME.NS") when the configuration
	// does not name it: the labels of request telemetry (telemetry.go).
	Node, Zone, Service string
	// Workload is "namespace/name" of the workload, for reports.
	Workload string
}

func (c Config) withDefaults() Config {
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if c.UpstreamIdleTimeout <= 0 {
		c.UpstreamIdleTimeout = DefaultUpstreamIdleTimeout
	}
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if c.StreamIdleTimeout <= 0 {
		c.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	c.DrainDelay = max(c.DrainDelay, 0)
	return c
}

// Proxy is the data plane. Create it with New, feed it snapshots with Update
// and serve with Run. Its methods are safe for concurrent use.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	// guardMetrics (guard.go) and trafficMetrics (route_traffic.go) are
	// the series of issue 5's traffic management.
	guardMetrics   *guardMetrics
	trafficMetrics *trafficMetrics

	// state is the published, immutable view the request path reads.
	state atomic.Pointer[state]
	// notify wakes Run to reconcile listeners with the latest state; it holds
	// at most one token, so bursts of updates coalesce.
	notify chan struct{}
	ready  atomic.Bool
	// bound maps listener name to its bound address, replaced by Run after
	// each reconciliation.
	bound atomic.Pointer[map[string]net.Addr]

	// updateMu serializes Update; pools is the per-cluster state that
	// outlives snapshots (balancer counters, upstream connection pools).
	updateMu sync.Mutex
	pools    map[string]*pool

	// h1Pool holds the h1 engine's upstream connections, shared by all
	// listeners (it is keyed by address); nil when the fast path is off.
	h1Pool *h1.Pool

	// warned holds the listener and cluster names whose missing identity
	// was logged (warnOnce).
	warned sync.Map

	// revoked is the set of revoked certificate serials of the latest
	// snapshot's trust bundle (revoke.go); nil before any.
	revoked atomic.Pointer[revokedSet]

	// obs records every request and connection; tel holds the listeners'
	// access logs, tracers and edge caches (telemetry.go).
	obs *observe.Observer
	tel *telemetryHub
	// peerMeta are the x-verge-source fields the bridge adds to requests
	// to peer proxies (nil: the local service is unknown).
	peerMeta atomic.Pointer[[]hpack.HeaderField]
}

// state is one published snapshot with its compiled form.
type state struct {
	snap     *config.Snapshot
	routes   map[string]*routeTable
	clusters map[string]*cluster
	// tel is each listener's telemetry, by listener name.
	tel map[string]*listenerTelemetry
}

// cluster is a config.Cluster bound to its long-lived pool.
type cluster struct {
	cfg *config.Cluster
	*pool
	// tlsAddrs are the endpoints reached with mutual TLS (tlsEndpoints).
	tlsAddrs map[string]struct{}
	// zones maps endpoint address to zone, for telemetry; nil when no
	// endpoint has one.
	zones map[string]string
	// edges memoizes the edge of the cluster's last request, for
	// telemetry.
	edges edgeMemo
}

// zoneOf is the zone of the endpoint at addr ("" when unknown).
func (c *cluster) zoneOf(addr string) string { return c.zones[addr] }

func endpointZones(cc *config.Cluster) map[string]string {
	var m map[string]string
	for _, ep := range cc.Endpoints {
		if ep.Zone != "" {
			if m == nil {
				m = make(map[string]string, len(cc.Endpoints))
			}
			m[ep.Address] = ep.Zone
		}
	}
	return m
}

// pool is the state of one cluster that survives snapshots as long as the
// cluster keeps its name (and, for the upstream, its protocol and connect
// timeout).
type pool struct {
	name string
	lb   config.LBPolicy
	// ringMin is the balancer's RingHashMinSize; with lb, what a new
	// balancer is made for when it changes.
	ringMin        uint64
	bal            balancer.Balancer
	protocol       config.UpstreamProtocol
	connectTimeout time.Duration
	// up is shared by the copies of the pool that successive states hold,
	// so a transport one of them builds serves them all.
	up *upstream
	// tls reaches the cluster's TLS endpoints; nil when it has no TLS
	// settings. Shared like up while the settings stay the same.
	tls *tlsUpstream
	// guard is the cluster's breaker, retry budget, outlier detection and
	// health checks (guard.go); nil when the cluster has none.
	guard *clusterGuard
}

// upstream is a cluster's net/http connection pool, built on first use.
// Most clusters never need one: HTTP/1.1 traffic takes the h1 engine's
// shared pool and TCP listeners dial directly, and an idle http.Transport
// per cluster is memory a small device cannot spare.
type upstream struct {
	build func() *http.Transport
	once  sync.Once
	t     atomic.Pointer[http.Transport]
}

// transport returns the cluster's transport, building it on the first call.
func (u *upstream) transport() *http.Transport {
	u.once.Do(func() { u.t.Store(u.build()) })
	return u.t.Load()
}

// closeIdle closes the idle connections of the transport, if one was built.
func (u *upstream) closeIdle() {
	if t := u.t.Load(); t != nil {
		t.CloseIdleConnections()
	}
}

// New returns a proxy that serves nothing until the first Update.
func New(cfg Config, logger *slog.Logger) *Proxy {
	p := &Proxy{
		cfg:     cfg.withDefaults(),
		log:     logger.With("component", "proxy"),
		metrics: newMetrics(),
		notify:  make(chan struct{}, 1),
		pools:   map[string]*pool{},
	}
	p.guardMetrics = newGuardMetrics(p.metrics.reg)
	p.trafficMetrics = newTrafficMetrics(p.metrics.reg)
	p.obs = observe.New(observe.Options{Registry: p.metrics.reg, Proxy: p.cfg.Node, Service: p.cfg.Service,
		Zone: p.cfg.Zone, Workload: p.cfg.Workload})
	p.tel = newTelemetryHub(p)
	if !p.cfg.DisableH1FastPath {
		gauge := p.metrics.h1UpstreamActive
		opened := p.metrics.h1UpstreamOpened
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		p.h1Pool = h1.NewPool(h1.PoolConfig{
			MaxIdlePerAddr: p.cfg.MaxIdleConnsPerHost,
			IdleTimeout:    p.cfg.UpstreamIdleTimeout,
			// The h1 contract carries no per-cluster connect timeout.
			DialTimeout: DefaultConnectTimeout,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				opened.Inc()
				gauge.Inc()
				return &countedConn{Conn: c, gauge: gauge}, nil
			},
		})
	}
	return p
}

// Update publishes s, which must not be modified afterwards. Route tables and
// cluster state take effect for new requests when Update returns; requests
// already routed finish on the state they started with. Listeners are opened
// and closed by Run, asynchronously.
//
// The revoked certificates of s's trust bundle (config.Secret.Revoked)
// apply to every handshake from the return of Update; connections already
// open with a revoked peer are closed gracefully, the outbound ones by
// Update, the inbound ones by Run with the listeners' new configs (which
// also close the plaintext connections of a listener that became STRICT).
func (p *Proxy) Update(s *config.Snapshot) {
	p.updateMu.Lock()
	p.setRevoked(revokedFrom(s))
	st, retired := p.compileLocked(s)
	var unusedTelemetry func()
	st.tel, unusedTelemetry = p.tel.compile(s)
	p.state.Store(st)
	p.peerMeta.Store(peerMetaFields(p.LocalService(), p.cfg.Zone))
	p.updateMu.Unlock()
	// Requests routed on the previous state may still log or trace with
	// what s no longer uses: close it once they have had time to finish.
	if unusedTelemetry != nil {
		time.AfterFunc(p.cfg.DrainTimeout, unusedTelemetry)
	}
	// Outside updateMu: stopping waits for health checks in flight.
	for _, g := range retired {
		g.stop()
	}
	if p.h1Pool != nil {
		// Outside updateMu: closing sockets is I/O. Two racing Updates
		// may retain in the wrong order; that costs a redial, or an idle
		// connection left to the periodic expiry.
		p.h1Pool.Retain(endpointAddrs(s))
	}
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// endpointAddrs is the set of every endpoint address of s.
func endpointAddrs(s *config.Snapshot) map[string]struct{} {
	addrs := map[string]struct{}{}
	for _, c := range s.Clusters {
		for _, e := range c.Endpoints {
			addrs[e.Address] = struct{}{}
		}
	}
	return addrs
}

// compileLocked builds the state of s and carries the per-cluster pools
// and guards over. It returns the guards of clusters that lost theirs (the
// cluster left, or its traffic settings did), already marked stopped, for
// the caller to stop once it released updateMu.
func (p *Proxy) compileLocked(s *config.Snapshot) (*state, []*clusterGuard) {
	st := &state{snap: s, routes: map[string]*routeTable{}, clusters: map[string]*cluster{}}
	next := make(map[string]*pool, len(s.Clusters))
	var retired []*clusterGuard
	for name, cc := range s.Clusters {
		pl := p.pools[name]
		ct := cc.ConnectTimeout
		if ct <= 0 {
			ct = DefaultConnectTimeout
		}
		var ringMin uint64
		if cc.Traffic != nil {
			ringMin = cc.Traffic.RingHashMinSize
		}
		newBalancer := func() balancer.Balancer {
			return balancer.NewWithOptions(cc.LB, cc.Endpoints, balancer.Options{RingHashMinSize: ringMin})
		}
		switch {
		case pl == nil:
			pl = &pool{name: name, lb: cc.LB, ringMin: ringMin, bal: newBalancer()}
		case pl.lb != cc.LB || pl.ringMin != ringMin:
			// A new policy or ring starts fresh counters; the old pool's
			// upstream is carried over below when compatible, its guard
			// moves its verdicts to the new balancer's endpoints.
			old := pl
			pl = &pool{name: name, lb: cc.LB, ringMin: ringMin, bal: newBalancer(),
				protocol: old.protocol, connectTimeout: old.connectTimeout, up: old.up, tls: old.tls, guard: old.guard}
		default:
			pl.bal.Update(cc.Endpoints)
			// Copy so the pool published in the previous state stays
			// immutable in its upstream fields.
			cp := *pl
			pl = &cp
		}
		if pl.up == nil || pl.protocol != cc.Protocol || pl.connectTimeout != ct {
			if pl.up != nil {
				// In-flight requests keep their connections; idle ones go.
				pl.up.closeIdle()
			}
			pl.protocol, pl.connectTimeout = cc.Protocol, ct
			pl.up = p.newUpstream(name, cc.Protocol, ct)
		}
		switch {
		case cc.TLS == nil:
			pl.tls.closeIdle()
			pl.tls = nil
		case pl.tls == nil || pl.tls.settings != upstreamTLSSettings(cc.TLS, ct):
			// New peer IDs or ALPN: connections authorized under the old
			// settings must not serve new requests.
			pl.tls.closeIdle()
			pl.tls = p.newTLSUpstream(name, cc.TLS, ct)
		default:
			if bad := pl.tls.revokedConns(p); len(bad) > 0 {
				// Neither the transports nor the bridge client can take
				// one connection out of service; a new upstream takes the
				// new requests, and the old one drains.
				p.log.Info("cluster connections to revoked peers closing", "cluster", name, "connections", len(bad))
				pl.tls.retireRevoked(bad, p.cfg.DrainTimeout)
				pl.tls = p.newTLSUpstream(name, cc.TLS, ct)
			}
		}
		tlsAddrs := tlsEndpoints(cc)
		switch {
		case cc.Traffic == nil && pl.guard != nil:
			pl.guard.stopped = true
			pl.guard.detach()
			retired = append(retired, pl.guard)
			pl.guard = nil
			p.guardMetrics.deleteCluster(name)
		case cc.Traffic != nil:
			http1 := cc.Protocol == config.UpstreamHTTP1
			if pl.guard != nil && pl.guard.http1.Load() != http1 {
				// Requests in flight release what they took from the old
				// guard; the new protocol starts on fresh counters.
				pl.guard.stopped = true
				pl.guard.detach()
				retired = append(retired, pl.guard)
				pl.guard = nil
			}
			if pl.guard == nil {
				pl.guard = p.newClusterGuard(name, cc.Traffic)
				pl.guard.http1.Store(http1)
			}
			pl.guard.reconfigureLocked(cc.Traffic, pl.bal, pl.tls, tlsAddrs)
		}
		next[name] = pl
		st.clusters[name] = &cluster{cfg: cc, pool: pl, tlsAddrs: tlsAddrs, zones: endpointZones(cc)}
	}
	for name, old := range p.pools {
		if _, ok := next[name]; !ok {
			old.up.closeIdle()
			old.tls.closeIdle()
			if old.guard != nil {
				old.guard.stopped = true
				retired = append(retired, old.guard)
			}
			// Cluster names come and go with services; without this
			// their series would be exported forever.
			p.metrics.deleteCluster(name)
			p.guardMetrics.deleteCluster(name)
		}
	}
	p.pools = next
	for name, rt := range s.Routes {
		st.routes[name] = compileRouteTable(rt, st.clusters)
	}
	return st, retired
}

// startGuards starts the goroutines of the guards that are not running
// yet, under ctx. Run calls it after each snapshot.
func (p *Proxy) startGuards(ctx context.Context) {
	p.updateMu.Lock()
	defer p.updateMu.Unlock()
	for _, pl := range p.pools {
		if pl.guard != nil {
			pl.guard.start(ctx)
		}
	}
}

// newUpstream returns a cluster's upstream pool, whose transport is built
// on first use. It is tuned for a proxy, unlike http.DefaultTransport: no
// environment proxy, no transparent compression, a large idle pool per
// endpoint, and the cluster's connect timeout. The cluster's connection
// series are created now, so that they are exported from the start.
func (p *Proxy) newUpstream(clusterName string, proto config.UpstreamProtocol, connectTimeout time.Duration) *upstream {
	gauge := p.metrics.upstreamActive.WithLabelValues(clusterName)
	opened := p.metrics.upstreamOpened.WithLabelValues(clusterName)
	return &upstream{build: func() *http.Transport {
		return p.newTransport(proto, connectTimeout, gauge, opened)
	}}
}

// newTransport builds the transport newUpstream describes.
func (p *Proxy) newTransport(proto config.UpstreamProtocol, connectTimeout time.Duration, gauge prometheus.Gauge, opened prometheus.Counter) *http.Transport {
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			opened.Inc()
			gauge.Inc()
			return &countedConn{Conn: c, gauge: gauge}, nil
		},
		MaxIdleConnsPerHost:   p.cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       p.cfg.UpstreamIdleTimeout,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
	}
	if proto == config.UpstreamHTTP2 {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
		t.HTTP2 = &http.HTTP2Config{
			// Large windows so one bulk stream does not throttle at the
			// default 64 KiB/RTT.
			MaxReceiveBufferPerConnection: 4 << 20,
			MaxReceiveBufferPerStream:     1 << 20,
			PingTimeout:                   15 * time.Second,
			SendPingTimeout:               30 * time.Second,
		}
	}
	return t
}

// countedConn keeps the active upstream connection gauge true.
type countedConn struct {
	net.Conn
	gauge  interface{ Dec() }
	closed atomic.Bool
	// onClose, when set before the connection is shared, runs once at
	// the first Close.
	onClose func()
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.gauge.Dec()
		if c.onClose != nil {
			c.onClose()
		}
	}
	return c.Conn.Close()
}

// Observer is the proxy's request telemetry, whose reports the agent
// sends to the control plane.
func (p *Proxy) Observer() *observe.Observer { return p.obs }

// LocalService is the workload's service as its listeners' configuration
// names it ("NAME.NS"), else Config.Service.
func (p *Proxy) LocalService() string {
	if st := p.state.Load(); st != nil {
		for _, lt := range st.tel {
			if s := lt.local.Service; s != "" && s != unknownPeer {
				return s
			}
		}
	}
	return p.cfg.Service
}

// Ready reports whether a snapshot has been applied and all its listeners
// are bound, and Run's context has not ended.
func (p *Proxy) Ready() bool { return p.ready.Load() }

// ListenerAddr returns the bound address of the named listener, or nil if it
// is not open. Useful when a listener was configured with port 0.
func (p *Proxy) ListenerAddr(name string) net.Addr {
	if m := p.bound.Load(); m != nil {
		return (*m)[name]
	}
	return nil
}

// Run serves the listeners of the latest snapshot until ctx ends, then
// shuts down in order: Ready turns false at once, the listeners keep
// accepting for Config.DrainDelay, then they stop accepting and in-flight
// requests and streams get up to Config.DrainTimeout to finish; what
// remains is closed and Run returns nil. Run must be called once.
func (p *Proxy) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	open := map[listenerKey]running{}
	// Listeners outlive ctx by the drain delay and the drain.
	lctx := context.WithoutCancel(ctx)

	retry := backoff.Backoff{Base: listenRetryBase, Max: listenRetryMax}
	retryT := time.NewTimer(time.Hour)
	retryT.Stop()
	defer retryT.Stop()
	apply := func() {
		// Guards sweep and health-check only while Run runs; shutdown
		// stops them.
		p.startGuards(ctx)
		failed := p.reconcile(lctx, &wg, open)
		p.ready.Store(failed == 0)
		if failed == 0 {
			retry.Reset()
			retryT.Stop()
			return
		}
		wait := retry.Next()
		p.log.Warn("listeners not opened", "count", failed, "retry_in", wait)
		retryT.Reset(wait)
	}

	// The h1 pool expires idle connections only when it is used; the
	// sweep closes those of addresses no request reaches any more.
	var sweep <-chan time.Time
	if p.h1Pool != nil {
		tk := time.NewTicker(max(p.cfg.UpstreamIdleTimeout/2, time.Second))
		defer tk.Stop()
		sweep = tk.C
	}

	for {
		select {
		case <-ctx.Done():
			p.ready.Store(false)
			if p.cfg.DrainDelay > 0 {
				// Peers learn from the control plane that this proxy is
				// going; until they do, they still connect, and are served.
				p.log.Info("proxy not ready, still accepting", "listeners", len(open), "delay", p.cfg.DrainDelay)
				t := time.NewTimer(p.cfg.DrainDelay)
				<-t.C
			}
			p.shutdown(&wg, open)
			return nil
		case <-p.notify:
			apply()
		case <-retryT.C:
			apply()
		case <-sweep:
			p.h1Pool.CloseExpired()
		}
	}
}

// shutdown closes every listener's socket, drains them together and
// releases the upstream pools.
func (p *Proxy) shutdown(wg *sync.WaitGroup, open map[listenerKey]running) {
	p.log.Info("proxy draining", "listeners", len(open), "timeout", p.cfg.DrainTimeout)
	for k, r := range open {
		delete(open, k)
		p.stopListener(wg, r)
	}
	wg.Wait()
	p.updateMu.Lock()
	var guards []*clusterGuard
	for _, pl := range p.pools {
		pl.up.closeIdle()
		pl.tls.close()
		if pl.guard != nil && !pl.guard.stopped {
			pl.guard.stopped = true
			guards = append(guards, pl.guard)
		}
	}
	p.updateMu.Unlock()
	for _, g := range guards {
		g.stop()
	}
	if p.h1Pool != nil {
		p.h1Pool.Close()
	}
	// Drained: the last requests' log lines and spans go out now.
	p.tel.closeAll()
	p.log.Info("proxy stopped")
}

// stopListener closes r's socket now, so that its address is free for a
// listener opened right after, and drains its connections in the
// background, owned by wg.
func (p *Proxy) stopListener(wg *sync.WaitGroup, r running) {
	r.l.closeSocket()
	r.stop()
	wg.Go(func() { r.l.drain(p.cfg.DrainTimeout) })
}

// listenerKey identifies a running listener. The kind is part of it: a
// listener that changes between HTTP and TCP (its Service appeared or
// changed protocol) is a different listener, reopened rather than handed
// a config it cannot serve.
type listenerKey struct {
	name, address string
	kind          config.ListenerKind
}

// running is an open listener and the cancel of the context its serve
// loop and connections derive from.
type running struct {
	l    runningListener
	stop context.CancelFunc
}

// runningListener is an open listener owned by Run.
type runningListener interface {
	// setConfig replaces the listener's config (same key).
	setConfig(l *config.Listener)
	// enforce closes, gracefully where the protocol allows, the accepted
	// connections the current config and revoked set no longer allow:
	// plaintext ones once STRICT, those of revoked peers (revoke.go).
	enforce()
	addr() net.Addr
	// serve accepts until the socket is closed. ctx ends when the
	// listener starts draining; connections derive their contexts from it.
	serve(ctx context.Context)
	// closeSocket stops accepting and releases the address; it does not
	// block on connections.
	closeSocket()
	// drain, after closeSocket and the end of serve's ctx, waits up to
	// timeout for connections to finish, then closes them.
	drain(timeout time.Duration)
}

// reconcile opens new listeners, updates kept ones and drains removed ones,
// and returns how many listeners it could not open. It runs on Run's
// goroutine, which owns open.
func (p *Proxy) reconcile(ctx context.Context, wg *sync.WaitGroup, open map[listenerKey]running) int {
	st := p.state.Load()
	want := map[listenerKey]*config.Listener{}
	for _, l := range st.snap.Listeners {
		want[listenerKey{l.Name, l.Address, l.Kind}] = l
	}
	// Removed listeners release their sockets before new ones bind: a
	// listener renamed, or changing kind, keeps its address.
	for k, r := range open {
		if _, ok := want[k]; !ok {
			delete(open, k)
			p.log.Info("listener removed", "listener", k.name, "address", k.address)
			p.stopListener(wg, r)
		}
	}
	failed := 0
	for k, cl := range want {
		if r, ok := open[k]; ok {
			r.l.setConfig(cl)
			r.l.enforce()
			continue
		}
		l, err := p.listen(ctx, cl)
		if err != nil {
			failed++
			p.log.Warn("listener not opened", "listener", k.name, "address", k.address, "error", err)
			continue
		}
		sctx, stop := context.WithCancel(ctx)
		open[k] = running{l: l, stop: stop}
		p.log.Info("listener added", "listener", k.name, "address", l.addr().String())
		wg.Go(func() { l.serve(sctx) })
	}
	bound := make(map[string]net.Addr, len(open))
	for k, r := range open {
		bound[k.name] = r.l.addr()
	}
	p.bound.Store(&bound)
	return failed
}

func (p *Proxy) listen(ctx context.Context, cl *config.Listener) (runningListener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cl.Address)
	if err != nil {
		return nil, fmt.Errorf("open listener %q: %w", cl.Name, err)
	}
	switch cl.Kind {
	case config.ListenerTCP:
		return p.newTCPListener(ln, cl), nil
	default:
		return p.newHTTPListener(ln, cl), nil
	}
}

// statName is a listener's metric label: its stat prefix, else its name.
func statName(l *config.Listener) string {
	if l.StatPrefix != "" {
		return l.StatPrefix
	}
	return l.Name
}
