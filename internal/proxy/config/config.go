// Package config is the proxy's runtime configuration: the immutable value the
// data path reads, built from the xDS resources the proxy accepted. The xDS
// client (proxy/xdsclient) builds it; the data path (package proxy) publishes
// each new one through an atomic pointer and never mutates it.
package config

import (
	"regexp"
	"time"

	"verge.dev/verge/internal/proxy/authz"
)

// Snapshot is one complete, consistent configuration. It is immutable once
// built and safe to share between goroutines.
type Snapshot struct {
	// Versions is the accepted version_info per xDS type URL.
	Versions  map[string]string
	Listeners []*Listener
	// Routes by route configuration name.
	Routes map[string]*RouteTable
	// Clusters by name, with endpoints merged in from EDS.
	Clusters map[string]*Cluster
	// Secrets are the SDS secrets the control plane sent, by name (the trust
	// bundle, SecretTrustBundle). The proxy's own certificate is never among
	// them: its key is made in the proxy and the secret SecretIdentity is
	// served by the proxy's local identity source (proxy/svid).
	Secrets map[string]*Secret
}

// Names of the SDS secrets listeners and clusters reference (Istio's names,
// which Envoy sidecars under Istio-style agents also use).
const (
	// SecretIdentity is the workload's own SVID, supplied locally.
	SecretIdentity = "default"
	// SecretTrustBundle is the mesh's trust bundle, sent over ADS.
	SecretTrustBundle = "ROOTCA"
)

// Secret is one SDS secret the proxy accepted: a validation context (the
// trusted root certificates, DER). TrustDomain is the SPIFFE trust domain the
// roots speak for ("verge.local").
type Secret struct {
	Name        string
	TrustDomain string
	Roots       [][]byte
	// Revoked holds the serial numbers (lower-case hex, big.Int.Text(16))
	// of the certificates the control plane revoked, read from the
	// validation context's CRL. A peer whose leaf is among them is refused.
	Revoked map[string]struct{}
}

// TLSMode says what an inbound listener accepts.
type TLSMode int

const (
	// TLSDisabled: plaintext only (no TLS context on the listener).
	TLSDisabled TLSMode = iota
	// TLSStrict: mutual TLS only; a plaintext connection is closed.
	TLSStrict
	// TLSPermissive: mutual TLS and plaintext, told apart by the first
	// bytes of the connection (a TLS ClientHello or not).
	TLSPermissive
)

// DownstreamTLS is an inbound listener's mutual TLS: the proxy presents
// CertSecret and requires a client certificate that chains to CASecret.
type DownstreamTLS struct {
	Mode       TLSMode
	CertSecret string
	CASecret   string
	// ALPN the listener offers, in order ("h2" for HTTP listeners).
	ALPN []string
}

// UpstreamTLS is how a cluster's TLS endpoints are reached: mutual TLS with
// CertSecret, the peer verified against CASecret and, when PeerIDs is not
// empty, required to be one of those SPIFFE IDs.
type UpstreamTLS struct {
	CertSecret string
	CASecret   string
	PeerIDs    []string
	// ALPN offered ("h2" for HTTP clusters: HTTP/1.1 from the application
	// is carried as HTTP/2 between proxies).
	ALPN []string
	SNI  string
}

// ListenerKind says how a listener treats its connections.
type ListenerKind int

const (
	// ListenerHTTP parses HTTP/1.1 and HTTP/2 (prior knowledge and h2c upgrade)
	// and routes each request.
	ListenerHTTP ListenerKind = iota + 1
	// ListenerTCP proxies bytes to one cluster.
	ListenerTCP
)

// Listener is one socket the proxy accepts on.
type Listener struct {
	Name string
	// Address is host:port.
	Address string
	Kind    ListenerKind
	// RouteName names the route table (ListenerHTTP).
	RouteName string
	// Cluster is the destination (ListenerTCP).
	Cluster string
	// StatPrefix labels the listener's metrics.
	StatPrefix string
	// TLS is nil for plaintext listeners (outbound ones).
	TLS *DownstreamTLS
	// Authz is the listener's compiled authorization policy; nil allows
	// every request and connection.
	Authz *authz.Engine
	// Traffic is the inbound listener's overload shedding and bandwidth
	// cap; nil for none.
	Traffic *ListenerTraffic
	// Telemetry is the listener's access log and tracing (from the HTTP
	// connection manager's access_log and tracing fields, or the TCP
	// proxy's access_log), its metrics switch and its service (from the
	// listener metadata "verge.telemetry"); nil: none of them, metrics on
	// (docs/xds-telemetry.md).
	Telemetry *ListenerTelemetry
}

// ListenerTelemetry is what a listener records about its traffic besides
// the default metrics: access log, traces, and whether metrics are kept.
type ListenerTelemetry struct {
	// AccessLog, when set, writes one JSON line per request (HTTP) or
	// connection (TCP).
	AccessLog *AccessLog
	// Tracing, when set, makes the listener start or continue traces.
	Tracing *Tracing
	// MetricsDisabled turns the listener's golden metrics and reports to
	// the control plane off.
	MetricsDisabled bool
	// Service is the local workload's service, "NAME.NS", that the
	// listener's requests are labelled with (the destination of inbound
	// requests, the source of outbound ones); "" when unknown.
	Service string
}

// AccessLog is a file access log (envoy.access_loggers.file with a
// json_format).
type AccessLog struct {
	// Path is a file path, or "/dev/stdout".
	Path string
}

// Tracing is the HTTP connection manager's OpenTelemetry tracing.
type Tracing struct {
	// SamplePercent is the share of requests that start a sampled trace
	// when the incoming request carries no sampling decision (0..100).
	SamplePercent float64
	// Collector is the cluster of the OTLP/gRPC trace collector, in
	// Snapshot.Clusters ("verge-otlp", HTTP/2, one endpoint: the
	// collector's host:port, a host name when the cluster was
	// STRICT_DNS). The cluster may be absent, as a route's may: spans are
	// then dropped.
	Collector string
	// ServiceName is the service.name resource attribute of the spans.
	ServiceName string
}

// RouteTable is a route configuration: virtual hosts chosen by Host/:authority.
type RouteTable struct {
	Name         string
	VirtualHosts []*VirtualHost
}

// VirtualHost is a set of domains and their ordered routes; the first matching
// route wins.
type VirtualHost struct {
	Name    string
	Domains []string // "*" matches any host
	Routes  []*Route
}

// Route is one match and its action.
type Route struct {
	Name  string
	Match RouteMatch
	// Clusters receive the request in proportion to Weight.
	Clusters []WeightedCluster
	// TotalWeight is the sum of Clusters' weights.
	TotalWeight uint32
	// Timeout bounds the whole request; zero means none.
	Timeout time.Duration
	// DirectResponse, when set, answers the request itself; Clusters is then
	// empty.
	DirectResponse *DirectResponse
	// Traffic is the route's traffic management (retries, rewrites,
	// mirrors, faults, limits); nil for none.
	Traffic *RouteTraffic
}

// DirectResponse is a fixed answer sent by the proxy without an upstream.
type DirectResponse struct {
	Status int
	Body   string
}

// RouteMatch: every present condition must hold.
type RouteMatch struct {
	// Exactly one of Prefix, Path, Regex, PathSeparatedPrefix is set ("/"
	// prefix when all empty). Regex is anchored (^(?:re)$): MatchString on
	// the path without the query is a full match, as Envoy's safe_regex.
	Prefix string
	Path   string
	Regex  *regexp.Regexp
	// PathSeparatedPrefix matches a path equal to it or continuing with "/"
	// after it (Gateway API PathPrefix: "/foo" matches "/foo" and "/foo/x",
	// not "/foobar"). It never ends with "/".
	PathSeparatedPrefix string
	// Headers include ":method" for method matches.
	Headers []HeaderMatch
	// QueryParams must all match the request's query string.
	QueryParams []QueryParamMatch
}

// QueryParamMatch matches one query parameter: Present (the parameter
// exists), else Regex (anchored, full match) when set, else Exact.
type QueryParamMatch struct {
	Name    string
	Exact   string
	Regex   *regexp.Regexp
	Present bool
}

// HeaderMatch matches one header (lower-case name): Present (the header
// exists), else Regex (anchored, full match) when set, else Exact; Invert
// negates the result.
type HeaderMatch struct {
	Name    string
	Exact   string
	Regex   *regexp.Regexp
	Present bool
	Invert  bool
}

// WeightedCluster is one backend of a route.
type WeightedCluster struct {
	Name   string
	Weight uint32
}

// UpstreamProtocol is how the proxy speaks to a cluster's endpoints.
type UpstreamProtocol int

const (
	UpstreamHTTP1 UpstreamProtocol = iota + 1
	// UpstreamHTTP2 is HTTP/2 with prior knowledge (h2c until mTLS).
	UpstreamHTTP2
	UpstreamTCP
)

// LBPolicy picks an endpoint.
type LBPolicy int

const (
	LBRoundRobin LBPolicy = iota + 1
	LBLeastRequest
	// LBRingHash and LBMaglev pick by a hash of the request (the route's
	// hash policy: header, cookie or source IP), for session affinity.
	LBRingHash
	LBMaglev
	// LBPeakEWMA weighs each endpoint by its peak-sensitive moving average
	// of latency times its outstanding requests, as Linkerd does.
	LBPeakEWMA
)

// Cluster is a set of endpoints and how to reach them.
type Cluster struct {
	Name           string
	Protocol       UpstreamProtocol
	LB             LBPolicy
	ConnectTimeout time.Duration
	// Endpoints are the healthy endpoints only; the data path never sees an
	// unhealthy one.
	Endpoints []Endpoint
	// TLS is how endpoints whose TLS flag is set are reached; nil when none
	// of the cluster's endpoints take TLS.
	TLS *UpstreamTLS
	// Traffic is the cluster's breaker, retry budget, outlier detection
	// and health checks; nil for none.
	Traffic *ClusterTraffic
}

// Endpoint is one upstream address.
type Endpoint struct {
	// Address is host:port.
	Address string
	Weight  uint32
	// TLS: the endpoint is a Verge proxy (or Envoy) reached with the
	// cluster's UpstreamTLS; otherwise plaintext.
	TLS bool
	// Priority is the EDS locality priority: 0 for the caller's own zone,
	// 1 for its region, 2 for the rest (the control plane assigns it per
	// proxy). Traffic spills to a higher number only as lower ones lose
	// healthy endpoints.
	Priority uint32
	// Zone and Region are the endpoint's locality (workload labels).
	Zone, Region string
}
