package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Group and Version of Verge's own kinds.
const (
	Group   = "verge.dev"
	Version = "v1alpha1"
	// GatewayGroup is the Gateway API's group; Verge serves its v1 routes.
	GatewayGroup   = "gateway.networking.k8s.io"
	GatewayVersion = "v1"
	// MeshDomain is the suffix of every service's mesh name: NAME.NAMESPACE.mesh.
	MeshDomain = "mesh"
	// DefaultNamespace is used when a resource names none.
	DefaultNamespace = "default"
)

// Object is any resource Verge stores. Every kind embeds metav1.TypeMeta and
// metav1.ObjectMeta, which provide these methods.
type Object interface {
	metav1.Object
	GetObjectKind() schema.ObjectKind
}

// Protocol is the application protocol of a service port. It decides how the
// proxy treats the port: HTTP/1.1, HTTP/2 (including h2c prior knowledge),
// gRPC (HTTP/2 with trailers) or opaque TCP.
type Protocol string

const (
	ProtocolHTTP  Protocol = "HTTP"
	ProtocolHTTP2 Protocol = "HTTP2"
	ProtocolGRPC  Protocol = "GRPC"
	ProtocolTCP   Protocol = "TCP"
)

// IsHTTP reports whether the proxy parses the protocol as HTTP of some version.
func (p Protocol) IsHTTP() bool { return p == ProtocolHTTP || p == ProtocolHTTP2 || p == ProtocolGRPC }

// Service is a named set of workloads reachable at NAME.NAMESPACE.mesh on its
// ports. It selects workloads by label, as a Kubernetes Service selects pods.
type Service struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ServiceSpec `json:"spec"`
}

// ServiceSpec is the desired state of a Service.
type ServiceSpec struct {
	// Ports the service is reachable on. At least one; numbers and names unique.
	Ports []ServicePort `json:"ports"`
	// Selector picks the workloads behind the service by their labels.
	// Defaults to {"app": metadata.name}.
	Selector map[string]string `json:"selector,omitempty"`
	// ServiceAccounts, when set, admits only selected workloads that run as
	// one of these service accounts (of the service's namespace). Labels are
	// chosen by whoever registers a workload, identities are not: a proxy
	// holding another service's join token cannot join this service, and
	// receive its traffic and its peers' trust, by copying its labels.
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	// Name is a DNS label; defaults to the protocol in lower case and the port ("http-80").
	Name string `json:"name,omitempty"`
	// Port is the port clients address (1-65535).
	Port int32 `json:"port"`
	// Protocol defaults to HTTP.
	Protocol Protocol `json:"protocol,omitempty"`
	// TargetPort is the port the application listens on in each workload;
	// defaults to Port.
	TargetPort int32 `json:"targetPort,omitempty"`
}

// Workload is one instance of an application: an address, the ports its
// application serves and, when a Verge proxy fronts it, the proxy's listeners.
// A Verge proxy registers its own Workload when it starts; workloads without a
// proxy (a database, a legacy host) are applied by hand.
type Workload struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              WorkloadSpec `json:"spec"`
}

// WorkloadSpec is the desired state of a Workload.
type WorkloadSpec struct {
	// Address is the IP peers use to reach the workload (or its proxy).
	Address string `json:"address"`
	// ServiceAccount is the identity the workload runs as; defaults to "default".
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Ports the application serves. A Service's targetPort selects one.
	Ports []WorkloadPort `json:"ports,omitempty"`
	// Proxy is set when a Verge proxy fronts the workload.
	Proxy *WorkloadProxy `json:"proxy,omitempty"`
	// Upstreams are the outbound listeners the workload's proxy opens, one
	// local port per service port it calls.
	Upstreams []Upstream `json:"upstreams,omitempty"`
	// HTTPProxy, when set, opens an outbound listener for applications
	// that set HTTP_PROXY: absolute-form requests and CONNECT tunnels to
	// NAME.NAMESPACE.mesh[:PORT] reach that service port.
	HTTPProxy *WorkloadHTTPProxy `json:"httpProxy,omitempty"`
}

// WorkloadHTTPProxy is the proxy's HTTP_PROXY listener. It only forwards to
// mesh service names; any other host is refused, so it is not an open proxy.
type WorkloadHTTPProxy struct {
	// Port is the listener's port (1-65535).
	Port int32 `json:"port"`
	// Address defaults to 127.0.0.1.
	Address string `json:"address,omitempty"`
}

// WorkloadPort is a port the application serves.
type WorkloadPort struct {
	// Port is the application's port (1-65535), matched against Service targetPort.
	Port int32 `json:"port"`
	// InboundPort is the proxy's inbound listener for Port; peers connect to
	// Address:InboundPort. Zero when no proxy fronts the workload, and then
	// peers connect to Address:Port directly.
	InboundPort int32 `json:"inboundPort,omitempty"`
}

// WorkloadProxy describes the Verge proxy in front of a workload.
type WorkloadProxy struct {
	// ReadinessPath, when set, is probed over HTTP on the application's first
	// port; otherwise readiness is a TCP connect to it.
	ReadinessPath string `json:"readinessPath,omitempty"`
	// AppAddress is where the proxy reaches the application; defaults to 127.0.0.1.
	AppAddress string `json:"appAddress,omitempty"`
}

// Upstream is one outbound listener: the proxy accepts on LocalPort and sends
// to the named service port.
type Upstream struct {
	// Service is NAME or NAME.NAMESPACE (the workload's namespace when omitted).
	Service string `json:"service"`
	// Port is the service port.
	Port int32 `json:"port"`
	// LocalPort is the loopback port the proxy listens on for this upstream.
	LocalPort int32 `json:"localPort"`
	// LocalAddress defaults to 127.0.0.1.
	LocalAddress string `json:"localAddress,omitempty"`
}

// HTTPRoute and GRPCRoute are the Gateway API's own types; Verge attaches them
// to a Service (parentRefs with group "" and kind Service, the GAMMA profile).
type (
	HTTPRoute = gatewayv1.HTTPRoute
	GRPCRoute = gatewayv1.GRPCRoute
)

// DestinationPolicy sets how clients reach one Service and how the
// service's own proxies protect it, in optional sections each applied on
// its own: load balancing (with session affinity and locality), retries,
// circuit breaking, outlier detection, health checks, rate limits, overload
// shedding and TCP bandwidth.
//
// Several policies may target the same service port. For each section, the
// oldest policy that sets it wins (creationTimestamp, then name), so applying
// a newer conflicting policy never changes traffic that is already flowing;
// a policy naming a port and one naming the whole service compete on equal
// terms.
type DestinationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              DestinationPolicySpec `json:"spec"`
}

// DestinationPolicySpec is the desired state of a DestinationPolicy.
type DestinationPolicySpec struct {
	// TargetRef names the Service, in the policy's namespace, the policy
	// applies to.
	TargetRef PolicyTargetReference `json:"targetRef"`
	// LoadBalancer chooses how a client spreads requests over the service's
	// endpoints. At least one section of the spec must be set.
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty"`
	// Retry is the retry policy of requests to the service, for routes that
	// set none of their own (an HTTPRoute rule's retry wins).
	Retry *RetryPolicy `json:"retry,omitempty"`
	// CircuitBreaker caps what each client proxy sends to the service.
	CircuitBreaker *CircuitBreaker `json:"circuitBreaker,omitempty"`
	// OutlierDetection ejects endpoints that keep failing, per client.
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	// HealthCheck probes each endpoint actively from every client proxy.
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
	// RateLimit is enforced by the service's own proxies (inbound).
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
	// Overload sheds requests by priority class at the service's own
	// proxies when they are saturated.
	Overload *Overload `json:"overload,omitempty"`
	// Bandwidth limits TCP connections to the service (inbound, per proxy).
	Bandwidth *Bandwidth `json:"bandwidth,omitempty"`
}

// PolicyTargetReference names the object a policy applies to, in the
// policy's own namespace (the Gateway API's LocalPolicyTargetReference, plus
// an optional port).
type PolicyTargetReference struct {
	// Group is "" (the core group, as the Gateway API names Services) or
	// verge.dev; both mean Verge's Service.
	Group string `json:"group,omitempty"`
	// Kind defaults to Service, the only kind supported.
	Kind string `json:"kind,omitempty"`
	// Name is the target's name.
	Name string `json:"name"`
	// Port, when set, limits the policy to that service port (1-65535);
	// otherwise it applies to every port of the service.
	Port int32 `json:"port,omitempty"`
}

// LoadBalancer is a DestinationPolicy's load-balancing section.
type LoadBalancer struct {
	// Policy defaults to RoundRobin.
	Policy LoadBalancerPolicy `json:"policy,omitempty"`
	// ConsistentHash says what RingHash and Maglev hash; required with
	// them, refused with the other policies.
	ConsistentHash *ConsistentHash `json:"consistentHash,omitempty"`
	// Locality, unless disabled, prefers endpoints in the caller's zone,
	// then its region, then the rest ("zone" and "region" labels of the
	// workloads), spilling over as the nearer ones become unhealthy.
	Locality *Locality `json:"locality,omitempty"`
}

// ConsistentHash names the request property a hash-based balancer hashes.
// Exactly one of Header, Cookie and SourceIP is set.
type ConsistentHash struct {
	// Header is a request header name.
	Header string `json:"header,omitempty"`
	// Cookie is an HTTP cookie; when the request lacks it the proxy sets it
	// on the response (with TTL) so later requests stick.
	Cookie *HashCookie `json:"cookie,omitempty"`
	// SourceIP hashes the caller's address.
	SourceIP bool `json:"sourceIP,omitempty"`
	// MinimumRingSize is the RingHash ring's size with eight equal
	// endpoints (default 1024, at most 8388608): each endpoint gets
	// MinimumRingSize/8 points per unit of weight, however many endpoints
	// there are, so one leaving moves only its own keys.
	MinimumRingSize int64 `json:"minimumRingSize,omitempty"`
}

// HashCookie is the cookie a hash-based balancer hashes.
type HashCookie struct {
	Name string `json:"name"`
	// TTL of the generated cookie; required (a Gateway API duration).
	TTL  string `json:"ttl"`
	Path string `json:"path,omitempty"`
}

// Locality tunes locality-aware balancing.
type Locality struct {
	// Disabled turns it off: every endpoint is equal.
	Disabled bool `json:"disabled,omitempty"`
}

// RetryPolicy retries failed requests. Retries are bounded per request
// (Attempts) and overall (Budget), so they cannot multiply load in an
// outage.
type RetryPolicy struct {
	// Attempts is the number of retries after the first try (default 2, at
	// most 10).
	Attempts int32 `json:"attempts,omitempty"`
	// On (retryOn) lists the conditions that trigger a retry, Envoy's names: 5xx,
	// gateway-error, reset, connect-failure, retriable-4xx, refused-stream
	// and, for gRPC, cancelled, deadline-exceeded, internal,
	// resource-exhausted, unavailable. Default: connect-failure,
	// refused-stream, unavailable, gateway-error.
	On []string `json:"retryOn,omitempty"`
	// PerTryTimeout bounds each try (a Gateway API duration); none when
	// empty.
	PerTryTimeout string `json:"perTryTimeout,omitempty"`
	// Backoff between tries: exponential with full jitter from BaseInterval
	// (default 25ms) up to MaxInterval (default 10 × base).
	BaseInterval string `json:"baseInterval,omitempty"`
	MaxInterval  string `json:"maxInterval,omitempty"`
	// Budget caps retries to a share of requests.
	Budget *RetryBudget `json:"budget,omitempty"`
}

// RetryBudget caps retries as Linkerd does: over a 10 s window, retries are
// at most Percent of requests, plus MinRetriesPerSecond so that low traffic
// can still retry.
type RetryBudget struct {
	// Percent of requests that may be retried (default 20, 0-100).
	Percent int32 `json:"percent,omitempty"`
	// MinRetriesPerSecond is always allowed (default 10).
	MinRetriesPerSecond int32 `json:"minRetriesPerSecond,omitempty"`
}

// CircuitBreaker caps concurrent use of the service by each client proxy;
// past a cap requests fail at once with 503 (gRPC UNAVAILABLE). Zero means
// the default: Envoy's 1024 for each.
type CircuitBreaker struct {
	MaxConnections     int32 `json:"maxConnections,omitempty"`
	MaxPendingRequests int32 `json:"maxPendingRequests,omitempty"`
	MaxRequests        int32 `json:"maxRequests,omitempty"`
	MaxRetries         int32 `json:"maxRetries,omitempty"`
}

// OutlierDetection ejects an endpoint after consecutive failures, for
// BaseEjectionTime times the number of times it was ejected, never more
// than MaxEjectionPercent of the endpoints at once.
type OutlierDetection struct {
	// Consecutive5xx (default 5; 0 disables this check).
	Consecutive5xx *int32 `json:"consecutive5xx,omitempty"`
	// ConsecutiveGatewayErrors: 502, 503, 504 and connection failures
	// (default 0, off).
	ConsecutiveGatewayErrors *int32 `json:"consecutiveGatewayErrors,omitempty"`
	// Interval between sweeps that return ejected endpoints (default 10s).
	Interval string `json:"interval,omitempty"`
	// BaseEjectionTime (default 30s).
	BaseEjectionTime string `json:"baseEjectionTime,omitempty"`
	// MaxEjectionPercent (default 10, 0-100).
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
}

// HealthCheck probes endpoints; exactly one of HTTP, GRPC and TCP is set.
type HealthCheck struct {
	HTTP *HTTPHealthCheck `json:"http,omitempty"`
	GRPC *GRPCHealthCheck `json:"grpc,omitempty"`
	TCP  *TCPHealthCheck  `json:"tcp,omitempty"`
	// Interval between probes (default 10s), Timeout of each (default 1s,
	// less than Interval).
	Interval string `json:"interval,omitempty"`
	Timeout  string `json:"timeout,omitempty"`
	// HealthyThreshold and UnhealthyThreshold are the consecutive results
	// that flip an endpoint (defaults 2 and 3, 1-100).
	HealthyThreshold   int32 `json:"healthyThreshold,omitempty"`
	UnhealthyThreshold int32 `json:"unhealthyThreshold,omitempty"`
}

// HTTPHealthCheck probes with GET Path; statuses 200-399 are healthy.
type HTTPHealthCheck struct {
	Path string `json:"path"`
}

// GRPCHealthCheck uses the gRPC health protocol (grpc.health.v1).
type GRPCHealthCheck struct {
	// Service is the name asked about; "" is the whole server.
	Service string `json:"service,omitempty"`
}

// TCPHealthCheck connects; with Send set, writes it and expects Expect.
type TCPHealthCheck struct {
	Send   string `json:"send,omitempty"`
	Expect string `json:"expect,omitempty"`
}

// RateLimit is a local token bucket: RequestsPerSecond sustained, Burst at
// once. Refused requests get 429 (gRPC RESOURCE_EXHAUSTED) with
// retry-after.
type RateLimit struct {
	RequestsPerSecond int32 `json:"requestsPerSecond"`
	// Burst defaults to RequestsPerSecond.
	Burst int32 `json:"burst,omitempty"`
	// By keys the bucket: empty for one bucket per proxy, "source" for one
	// per caller identity, or "header:NAME" for one per value of a header.
	By string `json:"by,omitempty"`
	// Routes limits the bucket to the named route rules of the service's
	// routes (rule names); empty for every request.
	Routes []string `json:"routes,omitempty"`
}

// Overload sheds load by priority class when the service's proxy has
// MaxConcurrent requests in flight and MaxQueue waiting: the lowest class
// is refused first (503, gRPC UNAVAILABLE), so critical traffic keeps its
// latency while bulk traffic is refused.
type Overload struct {
	MaxConcurrent int32 `json:"maxConcurrent"`
	// MaxQueue defaults to MaxConcurrent; MaxQueueWait to 1s.
	MaxQueue     int32  `json:"maxQueue,omitempty"`
	MaxQueueWait string `json:"maxQueueWait,omitempty"`
	// Header carries a request's class name (default
	// "x-verge-priority"); unknown or absent means DefaultClass.
	Header string `json:"header,omitempty"`
	// Classes, highest first (default [critical, default, bulk]).
	Classes []string `json:"classes,omitempty"`
	// DefaultClass defaults to "default".
	DefaultClass string `json:"defaultClass,omitempty"`
	// RouteClasses gives the class of requests by route rule name,
	// overriding the header.
	RouteClasses map[string]string `json:"routeClasses,omitempty"`
}

// Bandwidth caps the bytes per second, each direction, of all TCP
// connections to the service through one proxy.
type Bandwidth struct {
	BytesPerSecond int64 `json:"bytesPerSecond"`
}

// LoadBalancerPolicy picks the endpoint that receives each request.
type LoadBalancerPolicy string

const (
	// LoadBalancerRoundRobin cycles through the endpoints in order.
	LoadBalancerRoundRobin LoadBalancerPolicy = "RoundRobin"
	// LoadBalancerLeastRequest picks the less loaded of two random endpoints
	// (power of two choices), which keeps requests off a slow endpoint.
	LoadBalancerLeastRequest LoadBalancerPolicy = "LeastRequest"
	// LoadBalancerRingHash and LoadBalancerMaglev send requests with the
	// same hash key (ConsistentHash) to the same endpoint, moving few keys
	// when endpoints come and go.
	LoadBalancerRingHash LoadBalancerPolicy = "RingHash"
	LoadBalancerMaglev   LoadBalancerPolicy = "Maglev"
	// LoadBalancerPeakEWMA weighs endpoints by a peak-sensitive moving
	// average of their latency times their outstanding requests, steering
	// away from a slow endpoint within seconds (Linkerd's balancer).
	LoadBalancerPeakEWMA LoadBalancerPolicy = "PeakEWMA"
)

// FaultInjection delays or aborts a share of the requests to a service, for
// resilience testing. It is applied by the callers' proxies.
type FaultInjection struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FaultInjectionSpec `json:"spec"`
}

// FaultInjectionSpec is the desired state of a FaultInjection. At least one
// of Delay and Abort is set.
type FaultInjectionSpec struct {
	// TargetRef names the Service (and optionally port) whose requests are
	// faulted.
	TargetRef PolicyTargetReference `json:"targetRef"`
	// Routes limits the faults to these route rule names; empty for all.
	Routes []string `json:"routes,omitempty"`
	// Headers must all match (exact values) for a request to be faulted.
	Headers map[string]string `json:"headers,omitempty"`
	Delay   *FaultDelay       `json:"delay,omitempty"`
	Abort   *FaultAbort       `json:"abort,omitempty"`
	// MaxActive caps concurrent faulted requests (0: no cap).
	MaxActive int32 `json:"maxActive,omitempty"`
}

// FaultDelay delays Percent of requests by Duration.
type FaultDelay struct {
	Duration string `json:"duration"`
	// Percent is 0-100 with up to four decimals ("0.5").
	Percent string `json:"percent"`
}

// FaultAbort answers Percent of requests with HTTPStatus (or, for gRPC,
// GRPCStatus: a code name such as UNAVAILABLE or its number) without
// calling the service. Exactly one of the two is set.
type FaultAbort struct {
	HTTPStatus int32  `json:"httpStatus,omitempty"`
	GRPCStatus string `json:"grpcStatus,omitempty"`
	Percent    string `json:"percent"`
}
