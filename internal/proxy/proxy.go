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

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
)

// Defaults for zero Config fields.
const (
	DefaultDrainTimeout        = 10 * time.Second
	DefaultMaxIdleConnsPerHost = 1024
	DefaultConnectTimeout      = 5 * time.Second
	DefaultUpstreamIdleTimeout = 90 * time.Second
)

// Config is the proxy's bootstrap configuration, read once by New. Zero
// fields take the defaults above.
type Config struct {
	// DrainTimeout bounds how long in-flight requests and streams may run
	// after a listener stops accepting (on removal or shutdown).
	DrainTimeout time.Duration
	// MaxIdleConnsPerHost is the idle pool size per upstream endpoint.
	MaxIdleConnsPerHost int
	// UpstreamIdleTimeout closes pooled upstream connections idle this long.
	UpstreamIdleTimeout time.Duration
	// DisableH1FastPath serves HTTP/1.1 with net/http even where the h1
	// engine could carry it.
	DisableH1FastPath bool
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
	return c
}

// Proxy is the data plane. Create it with New, feed it snapshots with Update
// and serve with Run. Its methods are safe for concurrent use.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

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
}

// state is one published snapshot with its compiled form.
type state struct {
	snap     *config.Snapshot
	routes   map[string]*routeTable
	clusters map[string]*cluster
}

// cluster is a config.Cluster bound to its long-lived pool.
type cluster struct {
	cfg *config.Cluster
	*pool
}

// pool is the state of one cluster that survives snapshots as long as the
// cluster keeps its name (and, for the upstream, its protocol and connect
// timeout).
type pool struct {
	name           string
	lb             config.LBPolicy
	bal            balancer.Balancer
	protocol       config.UpstreamProtocol
	connectTimeout time.Duration
	// up is shared by the copies of the pool that successive states hold,
	// so a transport one of them builds serves them all.
	up *upstream
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
func (p *Proxy) Update(s *config.Snapshot) {
	p.updateMu.Lock()
	st := p.compileLocked(s)
	p.state.Store(st)
	p.updateMu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *Proxy) compileLocked(s *config.Snapshot) *state {
	st := &state{snap: s, routes: map[string]*routeTable{}, clusters: map[string]*cluster{}}
	next := make(map[string]*pool, len(s.Clusters))
	for name, cc := range s.Clusters {
		pl := p.pools[name]
		ct := cc.ConnectTimeout
		if ct <= 0 {
			ct = DefaultConnectTimeout
		}
		switch {
		case pl == nil:
			pl = &pool{name: name, lb: cc.LB, bal: balancer.New(cc.LB, cc.Endpoints)}
		case pl.lb != cc.LB:
			// A new policy starts fresh counters; the old pool's upstream
			// is carried over below when compatible.
			old := pl
			pl = &pool{name: name, lb: cc.LB, bal: balancer.New(cc.LB, cc.Endpoints),
				protocol: old.protocol, connectTimeout: old.connectTimeout, up: old.up}
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
		next[name] = pl
		st.clusters[name] = &cluster{cfg: cc, pool: pl}
	}
	for name, old := range p.pools {
		if _, ok := next[name]; !ok {
			old.up.closeIdle()
		}
	}
	p.pools = next
	for name, rt := range s.Routes {
		st.routes[name] = compileRouteTable(rt, st.clusters)
	}
	return st
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
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.gauge.Dec()
	}
	return c.Conn.Close()
}

// Ready reports whether a snapshot has been applied and all its listeners
// are bound.
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
// drains: it stops accepting, lets in-flight requests and streams finish for
// up to Config.DrainTimeout, closes what remains and returns nil. Run must be
// called once.
func (p *Proxy) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	open := map[listenerKey]runningListener{}
	for {
		select {
		case <-ctx.Done():
			p.ready.Store(false)
			p.log.Info("proxy draining", "listeners", len(open), "timeout", p.cfg.DrainTimeout)
			for k, l := range open {
				delete(open, k)
				wg.Go(func() { l.drain(p.cfg.DrainTimeout) })
			}
			wg.Wait()
			p.updateMu.Lock()
			for _, pl := range p.pools {
				pl.up.closeIdle()
			}
			p.updateMu.Unlock()
			if p.h1Pool != nil {
				p.h1Pool.Close()
			}
			p.log.Info("proxy stopped")
			return nil
		case <-p.notify:
			p.reconcile(ctx, &wg, open)
		}
	}
}

type listenerKey struct{ name, address string }

// runningListener is an open listener owned by Run.
type runningListener interface {
	// setConfig replaces the listener's config (same name and address).
	setConfig(l *config.Listener)
	addr() net.Addr
	// serve accepts until the listener is closed by drain.
	serve()
	// drain stops accepting, waits up to timeout for connections to finish,
	// then closes them.
	drain(timeout time.Duration)
}

// reconcile opens new listeners, updates kept ones and drains removed ones.
// It runs on Run's goroutine, which owns open.
func (p *Proxy) reconcile(ctx context.Context, wg *sync.WaitGroup, open map[listenerKey]runningListener) {
	st := p.state.Load()
	want := map[listenerKey]*config.Listener{}
	for _, l := range st.snap.Listeners {
		want[listenerKey{l.Name, l.Address}] = l
	}
	for k, l := range open {
		if _, ok := want[k]; !ok {
			delete(open, k)
			p.log.Info("listener removed", "listener", k.name, "address", k.address)
			wg.Go(func() { l.drain(p.cfg.DrainTimeout) })
		}
	}
	failed := 0
	for k, cl := range want {
		if l, ok := open[k]; ok {
			l.setConfig(cl)
			continue
		}
		l, err := p.listen(ctx, cl)
		if err != nil {
			failed++
			p.log.Error("listener not opened", "listener", k.name, "address", k.address, "error", err)
			continue
		}
		open[k] = l
		p.log.Info("listener added", "listener", k.name, "address", l.addr().String())
		wg.Go(l.serve)
	}
	bound := make(map[string]net.Addr, len(open))
	for k, l := range open {
		bound[k.name] = l.addr()
	}
	p.bound.Store(&bound)
	p.ready.Store(failed == 0)
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
