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

// DestinationPolicy sets how clients reach one Service: today the
// load-balancing policy; session affinity, circuit breaking, outlier detection
// and the rest of DESIGN.md's list are to come as further optional sections
// of the spec, each applied on its own.
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
	// endpoints. Required while it is the only section.
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty"`
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
}

// LoadBalancerPolicy picks the endpoint that receives each request.
type LoadBalancerPolicy string

const (
	// LoadBalancerRoundRobin cycles through the endpoints in order.
	LoadBalancerRoundRobin LoadBalancerPolicy = "RoundRobin"
	// LoadBalancerLeastRequest picks the less loaded of two random endpoints
	// (power of two choices), which keeps requests off a slow endpoint.
	LoadBalancerLeastRequest LoadBalancerPolicy = "LeastRequest"
)
