// Package xdsclient is the Verge proxy's xDS client. It owns the ADS stream
// to the control plane (subscriptions, ACK and NACK, reconnection), the
// validation of every received resource against the subset of Envoy xDS v3
// the proxy supports, the conversion of the accepted resources into a
// config.Snapshot (Build, a pure function), and the on-disk copy of the last
// published configuration (LoadCache). It does not own the data path: it
// hands each Snapshot to a callback and never looks at traffic.
//
// Data flow:
//
//	control plane --ADS--> Run: decode, validate --NACK--> control plane
//	                            | accepted (ACK)
//	                            v
//	               complete? (every RDS / EDS name present, or warm timeout)
//	                            | Build
//	                            v
//	          delivery goroutine (latest wins): write cache, call update
//
// Supported subset (anything else in a listed field is NACKed naming the
// field; fields not mentioned are ignored, as gRPC's xDS client does):
//   - Listener: socket_address with port_value; exactly one filter chain
//     without transport_socket or filter_chain_match, or the mutual TLS
//     chains (tls.go, docs/xds.md); one terminal network filter,
//     http_connection_manager (rds over ADS or inline route_config;
//     http_filters holding the router last, before it the authorization
//     filters (authz.go), the fault and local_ratelimit filters with
//     empty configs and the verge.filters.http.priority TypedStruct
//     (Listener.Traffic.Overload), other filters only when is_optional)
//     or tcp_proxy (cluster), which network RBAC and one
//     tcp_bandwidth_limit (Listener.Traffic) may precede. api_listener
//     listeners are skipped. listener_filters are ignored. Telemetry
//     (telemetry.go, docs/xds-telemetry.md): the HCM's and tcp_proxy's
//     access_log (one file logger with Verge's json_format), the HCM's
//     tracing (random_sampling, OpenTelemetry over envoy_grpc) and the
//     listener metadata "verge.telemetry" (Listener.Telemetry).
//   - RouteConfiguration: virtual_hosts with domains; match prefix, path,
//     safe_regex, path_separated_prefix, headers and query_parameters;
//     action cluster, weighted_clusters, redirect or direct_response
//     (inline body); timeout (unset means Envoy's 15 s, 0 means none);
//     retry_policy, hash_policy, rewrites, request_mirror_policies, header
//     mutations and typed_per_filter_config for the fault, local rate
//     limit and priority filters (Route.Traffic, traffic.go).
//   - Cluster: type EDS (ADS), STATIC or STRICT_DNS (host names kept,
//     resolved at each connection); lb_policy ROUND_ROBIN,
//     LEAST_REQUEST, RING_HASH (minimum_ring_size) or MAGLEV, or a
//     load_balancing_policy led by Verge's PeakEWMA TypedStruct;
//     connect_timeout (default 5 s); HttpProtocolOptions explicit http2
//     selects UpstreamHTTP2, otherwise (auto_config too) UpstreamHTTP1;
//     transport_socket_matches {tlsMode: verge} with an UpstreamTlsContext,
//     then a plaintext default (Cluster.TLS); circuit_breakers (one DEFAULT
//     threshold, retry_budget), outlier_detection (consecutive 5xx and
//     gateway failures) and one health check (Cluster.Traffic).
//   - ClusterLoadAssignment: socket-address endpoints, HEALTHY or UNKNOWN,
//     load_balancing_weight, every priority with the locality's zone and
//     region (the balancer spills over by priority); metadata
//     envoy.transport_socket_match {tlsMode: verge} sets Endpoint.TLS.
//   - Secret: only "ROOTCA", a validation_context with inline PEM
//     trusted_ca and optionally an inline PEM crl, whose revoked serials
//     become Secret.Revoked (Snapshot.Secrets); subscribed to by name.
//
// docs/xds-traffic.md maps each traffic field to its config field; values
// out of range (percentages, non-positive durations, zero thresholds) are
// NACKed with the field named.
package xdsclient

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"

	"verge.dev/verge/internal/proxy/backoff"
	"verge.dev/verge/internal/proxy/config"
)

// Type URLs of the resources the client subscribes to; Status.Versions and
// Snapshot.Versions are keyed by them.
const (
	TypeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	TypeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	TypeSecret   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// requestOrder is Envoy's: the trust bundle, then clusters and their
// endpoints warm before the listeners and routes that send traffic to them.
var requestOrder = []string{TypeSecret, TypeCluster, TypeEndpoint, TypeListener, TypeRoute}

// secretNames is the SDS subscription: the trust bundle only (the
// workload's own certificate never comes from the control plane).
var secretNames = []string{config.SecretTrustBundle}

const (
	defaultInitialFetchTimeout = 5 * time.Second
	backoffBase                = 200 * time.Millisecond
	backoffMax                 = 5 * time.Second
	keepaliveTime              = 10 * time.Second
	keepaliveTimeout           = 5 * time.Second
	// A response that repeats a version already rejected is NACKed after
	// a growing delay: go-control-plane's snapshot cache answers every NACK
	// at once with the same version, which would otherwise loop as fast as
	// the round trip allows.
	nackRepeatBase = 250 * time.Millisecond
	nackRepeatMax  = 5 * time.Second
	// maxRecvMsgSize allows a large mesh's full LDS or CDS in one response.
	maxRecvMsgSize    = 64 << 20
	xdsReadBufferSize = 4 << 10
)

// Config is the client's bootstrap configuration. The caller must not modify
// it (or the Node) after passing it to New.
type Config struct {
	// ServerAddr is the control plane's xDS address, a gRPC target
	// ("127.0.0.1:7701").
	ServerAddr string
	// Node identifies this proxy to the control plane; required.
	Node *corev3.Node
	// CacheDir, when set, receives the last published configuration (see
	// LoadCache). It is created if missing.
	CacheDir string
	// DialOptions are added to the client's own (keepalive, backoff). When
	// empty the connection is insecure: mTLS to the control plane comes
	// with the CA work.
	DialOptions []grpc.DialOption
	// InitialFetchTimeout bounds how long a new or changed configuration
	// waits for the route configurations and endpoints it references
	// before it is published without them (listeners missing their route
	// configuration are left out; EDS clusters get zero endpoints). Zero
	// means 5 s.
	InitialFetchTimeout time.Duration
}

// Status is the client's view of its stream, for /config_dump and /ready.
type Status struct {
	// Connected is true while an ADS stream is open.
	Connected bool
	// Versions is the accepted version_info per type URL.
	Versions map[string]string
	// LastNACK is the last rejected response; it is cleared when a later
	// response of the same type is accepted.
	LastNACK *NACK
}

// NACK describes a rejected response.
type NACK struct {
	TypeURL string
	// Version is the rejected version_info.
	Version string
	Nonce   string
	Error   string
	Time    time.Time
}

// Client keeps a proxy's configuration in sync with the control plane. Run
// does the work; Status may be called from any goroutine.
type Client struct {
	cfg    Config
	update func(*config.Snapshot)
	logger *slog.Logger

	mu     sync.Mutex
	status Status
}

// New returns a client that will call update with each new complete
// Snapshot. update is called from one goroutine, never concurrently, and
// only with the newest Snapshot when several are produced while it runs; it
// owns the Snapshot it receives (which is immutable) and should return
// quickly. Nothing happens until Run.
func New(cfg Config, update func(*config.Snapshot), logger *slog.Logger) *Client {
	if cfg.InitialFetchTimeout <= 0 {
		cfg.InitialFetchTimeout = defaultInitialFetchTimeout
	}
	return &Client{
		cfg:    cfg,
		update: update,
		logger: logger.With("component", "xdsclient", "xds_server", cfg.ServerAddr),
		status: Status{Versions: map[string]string{}},
	}
}

// Status returns a copy of the client's current status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Versions = maps.Clone(c.status.Versions)
	if s.LastNACK != nil {
		n := *s.LastNACK
		s.LastNACK = &n
	}
	return s
}

// Run connects to the control plane and keeps the configuration in sync,
// reconnecting with exponential backoff and jitter (capped at 5 s) whenever
// the stream ends. It blocks until ctx ends, then returns nil once every
// goroutine it started has stopped. It returns an error only for an unusable
// Config. Run must not be called twice at once.
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.ServerAddr == "" {
		return errors.New("run xds client: server address required")
	}
	if c.cfg.Node == nil {
		return errors.New("run xds client: node required")
	}
	opts := []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepaliveTime,
			Timeout:             keepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  backoffBase,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   backoffMax,
			},
			MinConnectTimeout: backoffMax,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		// gRPC's default pool keeps receive buffers in sync.Pools, which
		// survive the collection the agent's trim runs: a large mesh's
		// full LDS or CDS would stay resident after the trim. xDS
		// responses are rare enough that allocating each one costs
		// nothing measurable.
		experimental.WithBufferPool(mem.NopBufferPool{}),
		// The connection's read buffer lives as long as the connection;
		// 32 KiB (the default) only saves read calls on a stream that is
		// idle nearly all the time.
		grpc.WithReadBufferSize(xdsReadBufferSize),
	}
	if len(c.cfg.DialOptions) == 0 {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	opts = append(opts, c.cfg.DialOptions...)
	conn, err := grpc.NewClient(c.cfg.ServerAddr, opts...)
	if err != nil {
		return fmt.Errorf("dial xds server %q: %w", c.cfg.ServerAddr, err)
	}
	defer conn.Close()

	out := newDelivery(c.cfg.CacheDir, c.update, c.logger)
	var wg sync.WaitGroup
	defer wg.Wait()
	dctx, stopDelivery := context.WithCancel(ctx)
	defer stopDelivery()
	wg.Go(func() { out.run(dctx) })

	s := newSession(c, out)
	defer s.stopTimers()
	bo := backoff.Backoff{Base: backoffBase, Max: backoffMax}
	for {
		gotResponse, err := s.runStream(ctx, discoveryv3.NewAggregatedDiscoveryServiceClient(conn))
		c.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if gotResponse {
			bo.Reset()
		}
		wait := bo.Next()
		c.logger.Warn("xds stream ended", "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Connected = v
}

func (c *Client) recordAccept(typeURL, version string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.Versions[typeURL] = version
	if c.status.LastNACK != nil && c.status.LastNACK.TypeURL == typeURL {
		c.status.LastNACK = nil
	}
}

func (c *Client) recordNACK(n *NACK) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.LastNACK = n
}

// typeState is what the client holds for one resource type. The accepted
// part survives reconnects; nonce and subscribed are per stream.
type typeState struct {
	received  bool   // a response was accepted at least once
	version   string // last accepted version_info
	resources map[string]*resource
	// names is the subscription for RDS and EDS (sorted); LDS and CDS are
	// wildcard.
	names []string

	nonce      string
	subscribed bool // a request was sent on the current stream

	// rejected is set when the last response was NACKed; nackVersion is its
	// version and nackRepeats how often it came again in a row.
	rejected    bool
	nackVersion string
	nackRepeats int
	// nackDetail, when set, is a NACK waiting until nackDue.
	nackDetail *statuspb.Status
	nackDue    time.Time
}

// session is the state owned by Run's goroutine.
type session struct {
	c     *Client
	out   *delivery
	types map[string]*typeState

	warm      *time.Timer
	warmC     <-chan time.Time
	nackTimer *time.Timer
	nackC     <-chan time.Time
	// lastPublish is the digest of the last published encoding: only the
	// digest, as the encoding itself is as large as the configuration.
	lastPublish cacheDigest
}

func newSession(c *Client, out *delivery) *session {
	s := &session{c: c, out: out, types: map[string]*typeState{}}
	for _, t := range requestOrder {
		s.types[t] = &typeState{resources: map[string]*resource{}}
	}
	s.types[TypeSecret].names = secretNames
	return s
}

func (s *session) stopTimers() {
	s.stopWarmTimer()
	if s.nackTimer != nil {
		s.nackTimer.Stop()
		s.nackTimer, s.nackC = nil, nil
	}
}

func (s *session) stopWarmTimer() {
	if s.warm != nil {
		s.warm.Stop()
		s.warm, s.warmC = nil, nil
	}
}

// armNACKTimer sets the NACK timer to the earliest delayed NACK, if any.
func (s *session) armNACKTimer() {
	if s.nackTimer != nil {
		s.nackTimer.Stop()
		s.nackTimer, s.nackC = nil, nil
	}
	var earliest time.Time
	for _, ts := range s.types {
		if ts.nackDetail != nil && (earliest.IsZero() || ts.nackDue.Before(earliest)) {
			earliest = ts.nackDue
		}
	}
	if earliest.IsZero() {
		return
	}
	s.nackTimer = time.NewTimer(time.Until(earliest))
	s.nackC = s.nackTimer.C
}

// sendDueNACKs sends the delayed NACKs whose time has come.
func (s *session) sendDueNACKs(stream adsStream) error {
	now := time.Now()
	for _, t := range requestOrder {
		ts := s.types[t]
		if ts.nackDetail == nil || now.Before(ts.nackDue) {
			continue
		}
		detail := ts.nackDetail
		ts.nackDetail = nil
		if err := s.send(stream, t, detail); err != nil {
			return err
		}
	}
	s.armNACKTimer()
	return nil
}

// runStream runs one ADS stream until it fails or ctx ends. It reports
// whether any response arrived, which resets the reconnect backoff.
func (s *session) runStream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// WaitForReady leaves connecting (and its backoff) to gRPC.
	stream, err := ads.StreamAggregatedResources(sctx, grpc.WaitForReady(true))
	if err != nil {
		return false, fmt.Errorf("open ads stream: %w", err)
	}
	s.c.setConnected(true)
	s.c.logger.Info("xds stream opened")

	for _, ts := range s.types {
		ts.nonce, ts.subscribed, ts.nackDetail = "", false, nil
	}
	s.armNACKTimer()
	// Fresh stream: ask for everything again with no version, so the server
	// sends its full state; an unchanged config is not republished.
	for _, t := range requestOrder {
		ts := s.types[t]
		if (t == TypeRoute || t == TypeEndpoint) && len(ts.names) == 0 {
			continue
		}
		if err := s.send(stream, t, nil); err != nil {
			return false, err
		}
	}

	responses := make(chan *discoveryv3.DiscoveryResponse)
	recvErr := make(chan error, 1)
	wg.Go(func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case responses <- r:
			case <-sctx.Done():
				return
			}
		}
	})

	got := false
	for {
		select {
		case <-ctx.Done():
			return got, nil
		case err := <-recvErr:
			return got, fmt.Errorf("receive from ads stream: %w", err)
		case r := <-responses:
			got = true
			if err := s.handle(stream, r); err != nil {
				return got, err
			}
		case <-s.warmC:
			s.warm, s.warmC = nil, nil
			s.publish(true)
		case <-s.nackC:
			s.nackTimer, s.nackC = nil, nil
			if err := s.sendDueNACKs(stream); err != nil {
				return got, err
			}
		}
	}
}

type adsStream = grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]

// send sends a request for typeURL carrying the type's accepted version,
// latest nonce and subscription, and detail for a NACK. Until the stream has
// carried a response of the type the version is empty, so that a new stream
// gets the server's full state.
func (s *session) send(stream adsStream, typeURL string, detail *statuspb.Status) error {
	ts := s.types[typeURL]
	version := ts.version
	if ts.nonce == "" {
		version = ""
	}
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo:   version,
		Node:          s.c.cfg.Node,
		ResourceNames: ts.names,
		TypeUrl:       typeURL,
		ResponseNonce: ts.nonce,
		ErrorDetail:   detail,
	}
	if typeURL == TypeListener || typeURL == TypeCluster {
		req.ResourceNames = nil
	}
	if err := stream.Send(req); err != nil {
		return fmt.Errorf("send %s request: %w", typeURL, err)
	}
	ts.subscribed = true
	return nil
}

// handle processes one response: validate, ACK or NACK, follow the
// dependent subscriptions, publish.
func (s *session) handle(stream adsStream, r *discoveryv3.DiscoveryResponse) error {
	typeURL := r.GetTypeUrl()
	ts, ok := s.types[typeURL]
	if !ok {
		s.c.logger.Warn("xds response of unknown type ignored", "type_url", typeURL)
		return nil
	}
	ts.nonce = r.GetNonce()
	if ts.nackDetail != nil {
		// This response supersedes the one a delayed NACK was for.
		ts.nackDetail = nil
		s.armNACKTimer()
	}
	log := s.c.logger.With("type_url", typeURL, "version", r.GetVersionInfo(), "nonce", r.GetNonce())

	var only map[string]bool
	if typeURL == TypeRoute || typeURL == TypeEndpoint || typeURL == TypeSecret {
		only = make(map[string]bool, len(ts.names))
		for _, n := range ts.names {
			only[n] = true
		}
	}
	decoded, err := decodeResources(typeURL, r.GetResources(), only)
	if err == nil {
		err = s.check(typeURL, decoded)
	}
	if err != nil {
		s.c.recordNACK(&NACK{TypeURL: typeURL, Version: r.GetVersionInfo(), Nonce: r.GetNonce(), Error: err.Error(), Time: time.Now()})
		detail := &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		if ts.rejected && ts.nackVersion == r.GetVersionInfo() {
			ts.nackRepeats++
			delay := nackRepeatMax
			if ts.nackRepeats <= 6 {
				delay = min(nackRepeatBase<<(ts.nackRepeats-1), nackRepeatMax)
			}
			log.Debug("config rejected again", "error", err, "nack_delay", delay)
			ts.nackDetail, ts.nackDue = detail, time.Now().Add(delay)
			s.armNACKTimer()
			return nil
		}
		log.Warn("config rejected", "error", err)
		ts.rejected, ts.nackVersion, ts.nackRepeats = true, r.GetVersionInfo(), 0
		return s.send(stream, typeURL, detail)
	}
	ts.rejected, ts.nackVersion, ts.nackRepeats = false, "", 0

	s.apply(ts, typeURL, r.GetVersionInfo(), decoded)
	s.c.recordAccept(typeURL, ts.version)
	log.Debug("config accepted", "resources", len(decoded))
	if err := s.send(stream, typeURL, nil); err != nil {
		return err
	}
	switch typeURL {
	case TypeListener:
		if err := s.follow(stream, TypeRoute, s.dependencies(TypeListener)); err != nil {
			return err
		}
	case TypeCluster:
		if err := s.follow(stream, TypeEndpoint, s.dependencies(TypeCluster)); err != nil {
			return err
		}
	}
	s.publish(false)
	return nil
}

// apply records an accepted response. LDS and CDS responses are the full
// state; RDS, EDS and SDS responses replace only the resources they carry
// (so a response without the trust bundle never drops the one held).
func (s *session) apply(ts *typeState, typeURL, version string, decoded map[string]*resource) {
	ts.received = true
	ts.version = version
	if typeURL == TypeListener || typeURL == TypeCluster {
		ts.resources = decoded
		return
	}
	next := maps.Clone(ts.resources)
	maps.Copy(next, decoded)
	ts.resources = next
}

// check builds the configuration the response would produce, so that a
// response which is valid alone but not with the rest (a duplicate address,
// say) is refused rather than breaking every later publication.
func (s *session) check(typeURL string, decoded map[string]*resource) error {
	ts := s.types[typeURL]
	saved := *ts
	defer func() { *ts = saved }()
	s.apply(ts, typeURL, "", decoded)
	_, _, _, err := s.assemble()
	return err
}

// dependencies lists the RDS (for LDS) or EDS (for CDS) names the accepted
// resources reference, sorted.
func (s *session) dependencies(typeURL string) []string {
	set := map[string]bool{}
	for _, r := range s.types[typeURL].resources {
		if r.dependency != "" {
			set[r.dependency] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// follow changes the subscription of a dependent type (RDS, EDS) to names,
// forgetting resources no longer subscribed.
func (s *session) follow(stream adsStream, typeURL string, names []string) error {
	ts := s.types[typeURL]
	if slices.Equal(ts.names, names) && (ts.subscribed || len(names) == 0) {
		return nil
	}
	ts.names = names
	keep := make(map[string]*resource, len(names))
	for _, n := range names {
		if r, ok := ts.resources[n]; ok {
			keep[n] = r
		}
	}
	ts.resources = keep
	if len(names) == 0 && !ts.subscribed {
		// An empty first request would be a legacy wildcard subscription.
		return nil
	}
	return s.send(stream, typeURL, nil)
}

// assemble builds a Snapshot from the accepted state. Listeners whose route
// configuration has not arrived are left out; missing lists what is still
// awaited (route configurations and endpoint sets).
func (s *session) assemble() (snap *config.Snapshot, raw map[string][]*resource, missing []string, err error) {
	lds, rds, cds, eds, sds := s.types[TypeListener], s.types[TypeRoute], s.types[TypeCluster], s.types[TypeEndpoint], s.types[TypeSecret]
	raw = map[string][]*resource{}
	// A TLS context waits for its trust bundle as Envoy's warming does;
	// after the warm timeout it is published anyway and cannot handshake
	// until the bundle arrives.
	needSecret := map[string]bool{}
	for _, r := range sortedResources(lds.resources) {
		if r.dependency != "" && rds.resources[r.dependency] == nil {
			missing = append(missing, "route configuration "+r.dependency)
			continue
		}
		if r.listener != nil && r.listener.TLS != nil {
			t := r.listener.TLS
			needSecret[t.CASecret] = true
		}
		raw[TypeListener] = append(raw[TypeListener], r)
	}
	for _, r := range sortedResources(cds.resources) {
		if r.dependency != "" && eds.resources[r.dependency] == nil {
			missing = append(missing, "endpoints "+r.dependency)
		}
		if r.cluster != nil && r.cluster.TLS != nil {
			t := r.cluster.TLS
			needSecret[t.CASecret] = true
		}
	}
	for _, n := range slices.Sorted(maps.Keys(needSecret)) {
		if sds.resources[n] == nil {
			missing = append(missing, "secret "+n)
		}
	}
	raw[TypeRoute] = sortedResources(rds.resources)
	raw[TypeCluster] = sortedResources(cds.resources)
	raw[TypeEndpoint] = sortedResources(eds.resources)
	raw[TypeSecret] = sortedResources(sds.resources)
	snap, err = buildFrom(raw)
	return snap, raw, missing, err
}

// publish hands a new Snapshot to the delivery goroutine when the accepted
// state is complete (or force, after the warm timeout) and differs from the
// last one published.
func (s *session) publish(force bool) {
	if !s.types[TypeListener].received || !s.types[TypeCluster].received {
		return
	}
	snap, raw, missing, err := s.assemble()
	if err != nil {
		// check refused every response that would lead here.
		s.c.logger.Error("config not built", "error", err)
		return
	}
	if len(missing) > 0 && !force {
		if s.warm == nil {
			s.warm = time.NewTimer(s.c.cfg.InitialFetchTimeout)
			s.warmC = s.warm.C
		}
		return
	}
	s.stopWarmTimer()
	if len(missing) > 0 {
		s.c.logger.Warn("publishing config without missing resources", "missing", missing)
	}
	versions := map[string]string{}
	for t, ts := range s.types {
		if ts.received {
			versions[t] = ts.version
		}
	}
	encoded, err := encodeCache(raw, versions)
	if err != nil {
		s.c.logger.Error("config cache not encoded", "error", err)
		return
	}
	sum := sha256.Sum256(encoded)
	if sum == s.lastPublish {
		return
	}
	s.lastPublish = sum
	snap.Versions = versions
	s.c.logger.Info("config published", "listeners", len(snap.Listeners), "clusters", len(snap.Clusters), "versions", versions)
	s.out.offer(snap, encoded, sum)
}

// delivery calls update and writes the cache from its own goroutine so that
// a slow consumer or disk never stalls the stream; only the newest offer is
// kept.
type delivery struct {
	dir    string
	update func(*config.Snapshot)
	logger *slog.Logger
	ready  chan struct{}

	mu   sync.Mutex
	snap *config.Snapshot
	// encoded is snap's cache encoding and sum its digest.
	encoded []byte
	sum     cacheDigest
}

func newDelivery(dir string, update func(*config.Snapshot), logger *slog.Logger) *delivery {
	return &delivery{dir: dir, update: update, logger: logger, ready: make(chan struct{}, 1)}
}

func (d *delivery) offer(snap *config.Snapshot, encoded []byte, sum cacheDigest) {
	d.mu.Lock()
	d.snap, d.encoded, d.sum = snap, encoded, sum
	d.mu.Unlock()
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

func (d *delivery) run(ctx context.Context) {
	var written cacheDigest // of the file's bytes; zero when unknown
	if d.dir != "" {
		written = cacheFileDigest(d.dir)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.ready:
		}
		d.mu.Lock()
		snap, encoded, sum := d.snap, d.encoded, d.sum
		d.snap, d.encoded = nil, nil
		d.mu.Unlock()
		if snap == nil {
			continue
		}
		if d.dir != "" && sum != written {
			if err := writeCache(d.dir, encoded); err != nil {
				d.logger.Warn("config cache not written", "error", err)
			} else {
				written = sum
			}
		}
		d.update(snap)
	}
}
