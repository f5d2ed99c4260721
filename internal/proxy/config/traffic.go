package config

import "time"

// This file holds the traffic-management part of the proxy's configuration
// (issue 5): what a route does beyond picking a cluster, how a cluster
// protects itself and its endpoints, and what an inbound listener limits.
// docs/xds-traffic.md maps each field to the Envoy xDS field it is read from.

// RouteTraffic is what a route does to a request besides choosing its
// cluster. A nil *RouteTraffic is a route with none of it.
type RouteTraffic struct {
	// Retry is nil when the route does not retry.
	Retry *RetryPolicy
	// Hash lists the request properties a RingHash or Maglev cluster
	// hashes, first present wins (Envoy's hash_policy).
	Hash []HashPolicy
	// RequestHeaders and ResponseHeaders are applied in order: set
	// (replace), add (append), remove.
	RequestHeaders, ResponseHeaders HeaderMutation
	// Rewrite changes the request before it is forwarded; nil keeps it.
	Rewrite *Rewrite
	// Redirect answers the request with a redirect instead of forwarding;
	// the route then has no clusters.
	Redirect *Redirect
	// Mirrors receive a copy of the request, fire and forget: their answers
	// are discarded and never delay the caller.
	Mirrors []Mirror
	// Faults are the route's fault injections (FaultInjection), tried in
	// order; the first whose headers match and whose dice roll hits applies.
	Faults []*Fault
	// RateLimit is the inbound route's local rate limit (nil: none).
	RateLimit *RateLimit
	// PriorityClass, when set, is the class of the route's requests for
	// the listener's Overload shedder (overriding the header).
	PriorityClass string
}

// RetryPolicy says when and how often a failed request is tried again.
type RetryPolicy struct {
	// Attempts is the number of retries after the first try.
	Attempts int
	// On is Envoy's retry_on list ("5xx", "gateway-error", "reset",
	// "connect-failure", "retriable-4xx", "refused-stream", and gRPC
	// "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
	// "unavailable").
	On []string
	// RetriableStatusCodes are HTTP statuses retried besides On's classes.
	RetriableStatusCodes []int
	// PerTryTimeout bounds each try; zero means none.
	PerTryTimeout time.Duration
	// BaseInterval and MaxInterval bound the exponential backoff with
	// full jitter between tries.
	BaseInterval, MaxInterval time.Duration
}

// HashPolicy is one request property to hash. Exactly one of Header,
// Cookie and SourceIP is set.
type HashPolicy struct {
	// Header is a lower-case header name.
	Header string
	// Cookie names a cookie; CookieTTL > 0 makes the proxy set it on the
	// response when the request lacks it, with CookiePath.
	Cookie     string
	CookieTTL  time.Duration
	CookiePath string
	SourceIP   bool
}

// HeaderMutation edits a header set. Names are lower case.
type HeaderMutation struct {
	Set    []Header
	Add    []Header
	Remove []string
}

// Header is one header name and value.
type Header struct{ Name, Value string }

// Rewrite replaces parts of the request before forwarding: the path's
// matched prefix (PrefixMatch is the route's prefix, replaced by
// PathPrefix), or the whole path (FullPath), and the host.
type Rewrite struct {
	PathPrefix  string
	PrefixMatch string
	FullPath    string
	// FullPathSet tells FullPath "" apart from no full-path rewrite.
	FullPathSet bool
	Host        string
}

// Redirect answers with Status (301, 302, 303, 307, 308) and a Location
// built from the request with the set parts replaced.
type Redirect struct {
	Scheme string
	Host   string
	Port   uint32
	// Path replaces the whole path; PathPrefix replaces PrefixMatch.
	Path        string
	PathPrefix  string
	PrefixMatch string
	Status      int
}

// Mirror is a shadow cluster receiving Percent (0-100) of the requests.
type Mirror struct {
	Cluster string
	Percent float64
}

// Fault is one fault injection rule (Envoy's HTTP fault filter).
type Fault struct {
	// Headers must all match.
	Headers []HeaderMatch
	// DelayPercent of requests wait Delay before being forwarded.
	Delay        time.Duration
	DelayPercent float64
	// AbortPercent of requests are answered with AbortHTTPStatus, or for
	// gRPC requests AbortGRPCStatus when it is not negative.
	AbortHTTPStatus int
	AbortGRPCStatus int
	AbortPercent    float64
	// MaxActive caps concurrent faulted requests; zero means no cap.
	MaxActive int
}

// RateLimit is a token bucket: TokensPerFill tokens every FillInterval,
// at most MaxTokens stored.
type RateLimit struct {
	MaxTokens     int
	TokensPerFill int
	FillInterval  time.Duration
	// By is "" (one bucket), "source" (one per caller identity) or
	// "header:NAME" (one per value of header NAME, lower case).
	By string
}

// Overload is an inbound listener's priority shedder.
type Overload struct {
	MaxConcurrent int
	MaxQueue      int
	MaxQueueWait  time.Duration
	// Header carries the class name (lower case).
	Header string
	// Classes, highest priority first; DefaultClass is one of them.
	Classes      []string
	DefaultClass string
}

// CircuitBreaker holds a cluster's caps (Envoy's thresholds, default
// priority). Zero means Envoy's default, 1024.
type CircuitBreaker struct {
	MaxConnections     int
	MaxPendingRequests int
	MaxRequests        int
	MaxRetries         int
}

// RetryBudget caps a cluster's retries to Percent of its requests over a
// sliding window, plus MinRetriesPerSecond.
type RetryBudget struct {
	Percent             float64
	MinRetriesPerSecond int
}

// OutlierDetection ejects endpoints after consecutive failures. A zero
// threshold disables that check.
type OutlierDetection struct {
	Consecutive5xx           int
	ConsecutiveGatewayErrors int
	Interval                 time.Duration
	BaseEjectionTime         time.Duration
	MaxEjectionPercent       int
}

// HealthCheck probes a cluster's endpoints. Exactly one of HTTPPath (with
// HTTP set), GRPC and TCP applies.
type HealthCheck struct {
	Interval, Timeout                    time.Duration
	HealthyThreshold, UnhealthyThreshold int
	HTTP                                 bool
	HTTPPath                             string
	GRPC                                 bool
	GRPCService                          string
	TCP                                  bool
	TCPSend, TCPExpect                   []byte
}

// ClusterTraffic is how a cluster protects itself and its endpoints. A nil
// *ClusterTraffic has none of it.
type ClusterTraffic struct {
	CircuitBreaker *CircuitBreaker
	RetryBudget    *RetryBudget
	Outlier        *OutlierDetection
	HealthCheck    *HealthCheck
	// RingHashMinSize is RingHash's minimum ring size (0: default).
	RingHashMinSize uint64
}

// ListenerTraffic is what an inbound listener limits. A nil
// *ListenerTraffic limits nothing.
type ListenerTraffic struct {
	Overload *Overload
	// BandwidthBytesPerSecond caps each direction of the listener's TCP
	// connections together (0: no cap).
	BandwidthBytesPerSecond int64
}
