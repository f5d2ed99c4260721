package v1alpha1

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func decodeOne(t *testing.T, in string) Object {
	t.Helper()
	obj, err := DecodeOne([]byte(in))
	if err != nil {
		t.Fatalf("DecodeOne: %v", err)
	}
	return obj
}

func TestDefault(t *testing.T) {
	var (
		core    = gatewayv1.Group("")
		service = gatewayv1.Kind("Service")
		prefix  = gatewayv1.PathMatchPathPrefix
		exact   = gatewayv1.HeaderMatchExact
		qexact  = gatewayv1.QueryParamMatchExact
		gexact  = gatewayv1.GRPCMethodMatchExact
		ghexact = gatewayv1.GRPCHeaderMatchExact
		gwGroup = gatewayv1.Group(GatewayGroup)
		gwKind  = gatewayv1.Kind("Gateway")
		ns      = gatewayv1.Namespace("default")
		other   = gatewayv1.Namespace("other")
	)
	routeMeta := func(kind string) metav1.TypeMeta {
		return metav1.TypeMeta{APIVersion: GatewayGroup + "/" + GatewayVersion, Kind: kind}
	}
	tests := []struct {
		name string
		in   string
		want Object
	}{
		{
			name: "service",
			in: `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend}
spec:
  ports:
  - port: 80
  - port: 9000
    protocol: GRPC
    targetPort: 9001
  - port: 81
    protocol: BOGUS
  - port: 82
    name: mine
`,
			want: &Service{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Service"},
				ObjectMeta: metav1.ObjectMeta{Name: "backend", Namespace: "default"},
				Spec: ServiceSpec{
					Selector: map[string]string{"app": "backend"},
					Ports: []ServicePort{
						{Name: "http-80", Port: 80, Protocol: ProtocolHTTP, TargetPort: 80},
						{Name: "grpc-9000", Port: 9000, Protocol: ProtocolGRPC, TargetPort: 9001},
						{Port: 81, Protocol: "BOGUS", TargetPort: 81},
						{Name: "mine", Port: 82, Protocol: ProtocolHTTP, TargetPort: 82},
					},
				},
			},
		},
		{
			name: "service keeps its selector",
			in: `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: backend, namespace: shop}
spec: {ports: [], selector: {tier: db}}
`,
			want: &Service{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Service"},
				ObjectMeta: metav1.ObjectMeta{Name: "backend", Namespace: "shop"},
				Spec:       ServiceSpec{Ports: []ServicePort{}, Selector: map[string]string{"tier": "db"}},
			},
		},
		{
			name: "workload",
			in: `apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: w, namespace: shop}
spec:
  address: 10.0.0.1
  proxy: {}
  upstreams:
  - {service: backend, port: 80, localPort: 8080}
  - {service: db.data, port: 5432, localPort: 5432, localAddress: 127.0.0.2}
  httpProxy: {port: 15080}
`,
			want: &Workload{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Workload"},
				ObjectMeta: metav1.ObjectMeta{Name: "w", Namespace: "shop"},
				Spec: WorkloadSpec{
					Address:        "10.0.0.1",
					ServiceAccount: "default",
					Proxy:          &WorkloadProxy{AppAddress: "127.0.0.1"},
					Upstreams: []Upstream{
						{Service: "backend.shop", Port: 80, LocalPort: 8080, LocalAddress: "127.0.0.1"},
						{Service: "db.data", Port: 5432, LocalPort: 5432, LocalAddress: "127.0.0.2"},
					},
					HTTPProxy: &WorkloadHTTPProxy{Port: 15080, Address: "127.0.0.1"},
				},
			},
		},
		{
			name: "httproute",
			in: `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs:
  - name: backend
  - name: gw
    kind: Gateway
  - name: backend
    kind: Service
    namespace: other
  rules:
  - backendRefs:
    - name: b
      port: 80
  - matches:
    - headers: [{name: x, value: z}]
      queryParams: [{name: q, value: v}]
    - path: {value: /api}
    backendRefs:
    - {name: b, port: 80, weight: 0, namespace: other}
`,
			want: &HTTPRoute{
				TypeMeta:   routeMeta("HTTPRoute"),
				ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "default"},
				Spec: gatewayv1.HTTPRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
						{Group: &core, Kind: &service, Namespace: &ns, Name: "backend"},
						{Group: &gwGroup, Kind: &gwKind, Namespace: &ns, Name: "gw"},
						{Group: &core, Kind: &service, Namespace: &other, Name: "backend"},
					}},
					Rules: []gatewayv1.HTTPRouteRule{
						{
							Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: &prefix, Value: new("/")}}},
							BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
								BackendObjectReference: gatewayv1.BackendObjectReference{
									Group: &core, Kind: &service, Name: "b", Namespace: &ns, Port: new(int32(80)),
								},
								Weight: new(int32(1)),
							}}},
						},
						{
							Matches: []gatewayv1.HTTPRouteMatch{
								{
									Path:        &gatewayv1.HTTPPathMatch{Type: &prefix, Value: new("/")},
									Headers:     []gatewayv1.HTTPHeaderMatch{{Type: &exact, Name: "x", Value: "z"}},
									QueryParams: []gatewayv1.HTTPQueryParamMatch{{Type: &qexact, Name: "q", Value: "v"}},
								},
								{Path: &gatewayv1.HTTPPathMatch{Type: &prefix, Value: new("/api")}},
							},
							BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
								BackendObjectReference: gatewayv1.BackendObjectReference{
									Group: &core, Kind: &service, Name: "b", Namespace: &other, Port: new(int32(80)),
								},
								Weight: new(int32(0)),
							}}},
						},
					},
				},
			},
		},
		{
			name: "grpcroute",
			in: `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{name: backend, group: verge.dev}]
  rules:
  - backendRefs: [{name: b, port: 9000}]
  - matches:
    - method: {service: a.B}
      headers: [{name: x, value: z}]
    backendRefs: [{name: b, port: 9000}]
`,
			want: &GRPCRoute{
				TypeMeta:   routeMeta("GRPCRoute"),
				ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "shop"},
				Spec: gatewayv1.GRPCRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
						{Group: new(gatewayv1.Group(Group)), Kind: &service, Namespace: new(gatewayv1.Namespace("shop")), Name: "backend"},
					}},
					Rules: []gatewayv1.GRPCRouteRule{
						{
							Matches: []gatewayv1.GRPCRouteMatch{{}},
							BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
								BackendObjectReference: gatewayv1.BackendObjectReference{
									Group: &core, Kind: &service, Name: "b", Namespace: new(gatewayv1.Namespace("shop")), Port: new(int32(9000)),
								},
								Weight: new(int32(1)),
							}}},
						},
						{
							Matches: []gatewayv1.GRPCRouteMatch{{
								Method:  &gatewayv1.GRPCMethodMatch{Type: &gexact, Service: new("a.B")},
								Headers: []gatewayv1.GRPCHeaderMatch{{Type: &ghexact, Name: "x", Value: "z"}},
							}},
							BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
								BackendObjectReference: gatewayv1.BackendObjectReference{
									Group: &core, Kind: &service, Name: "b", Namespace: new(gatewayv1.Namespace("shop")), Port: new(int32(9000)),
								},
								Weight: new(int32(1)),
							}}},
						},
					},
				},
			},
		},
		{
			name: "destination policy",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p}
spec:
  targetRef: {name: backend}
  loadBalancer: {}
`,
			want: &DestinationPolicy{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "DestinationPolicy"},
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"},
				Spec: DestinationPolicySpec{
					TargetRef:    PolicyTargetReference{Kind: "Service", Name: "backend"},
					LoadBalancer: &LoadBalancer{Policy: LoadBalancerRoundRobin},
				},
			},
		},
		{
			name: "destination policy keeps set fields",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {group: verge.dev, kind: Service, name: backend, port: 80}
  loadBalancer: {policy: LeastRequest}
`,
			want: &DestinationPolicy{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "DestinationPolicy"},
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"},
				Spec: DestinationPolicySpec{
					TargetRef:    PolicyTargetReference{Group: Group, Kind: "Service", Name: "backend", Port: 80},
					LoadBalancer: &LoadBalancer{Policy: LoadBalancerLeastRequest},
				},
			},
		},
		{
			name: "destination policy sections",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p}
spec:
  targetRef: {name: backend}
  loadBalancer: {policy: RingHash, consistentHash: {header: x-user}}
  retry: {}
  circuitBreaker: {maxRequests: 5}
  outlierDetection: {}
  healthCheck: {http: {path: /healthz}}
  rateLimit: {requestsPerSecond: 50}
  overload: {maxConcurrent: 8}
  bandwidth: {bytesPerSecond: 2048}
`,
			want: &DestinationPolicy{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "DestinationPolicy"},
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"},
				Spec: DestinationPolicySpec{
					TargetRef: PolicyTargetReference{Kind: "Service", Name: "backend"},
					LoadBalancer: &LoadBalancer{Policy: LoadBalancerRingHash,
						ConsistentHash: &ConsistentHash{Header: "x-user", MinimumRingSize: 1024}},
					Retry: &RetryPolicy{
						Attempts:     2,
						On:           []string{"connect-failure", "refused-stream", "unavailable", "gateway-error"},
						BaseInterval: "25ms",
						MaxInterval:  "250ms",
						Budget:       &RetryBudget{Percent: 20, MinRetriesPerSecond: 10},
					},
					CircuitBreaker: &CircuitBreaker{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 5, MaxRetries: 1024},
					OutlierDetection: &OutlierDetection{
						Consecutive5xx: new(int32(5)), ConsecutiveGatewayErrors: new(int32(0)),
						Interval: "10s", BaseEjectionTime: "30s", MaxEjectionPercent: new(int32(10)),
					},
					HealthCheck: &HealthCheck{HTTP: &HTTPHealthCheck{Path: "/healthz"}, Interval: "10s", Timeout: "1s",
						HealthyThreshold: 2, UnhealthyThreshold: 3},
					RateLimit: &RateLimit{RequestsPerSecond: 50, Burst: 50},
					Overload: &Overload{MaxConcurrent: 8, MaxQueue: 8, MaxQueueWait: "1s", Header: "x-verge-priority",
						Classes: []string{"critical", "default", "bulk"}, DefaultClass: "default"},
					Bandwidth: &Bandwidth{BytesPerSecond: 2048},
				},
			},
		},
		{
			name: "destination policy sections keep set fields",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p}
spec:
  targetRef: {name: backend}
  loadBalancer: {policy: Maglev, consistentHash: {sourceIP: true}}
  retry: {attempts: 1, retryOn: [5xx], baseInterval: 1m30s, budget: {percent: 5}}
  outlierDetection: {consecutive5xx: 0, consecutiveGatewayErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 0}
  healthCheck: {grpc: {}, interval: 3s, timeout: 2s, healthyThreshold: 1, unhealthyThreshold: 1}
  rateLimit: {requestsPerSecond: 50, burst: 7}
  overload: {maxConcurrent: 8, maxQueue: 2, maxQueueWait: 5ms, header: x-p, classes: [a, b], defaultClass: b}
`,
			want: &DestinationPolicy{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "DestinationPolicy"},
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"},
				Spec: DestinationPolicySpec{
					TargetRef:    PolicyTargetReference{Kind: "Service", Name: "backend"},
					LoadBalancer: &LoadBalancer{Policy: LoadBalancerMaglev, ConsistentHash: &ConsistentHash{SourceIP: true}},
					Retry: &RetryPolicy{Attempts: 1, On: []string{"5xx"}, BaseInterval: "1m30s", MaxInterval: "15m",
						Budget: &RetryBudget{Percent: 5, MinRetriesPerSecond: 10}},
					OutlierDetection: &OutlierDetection{
						Consecutive5xx: new(int32(0)), ConsecutiveGatewayErrors: new(int32(3)),
						Interval: "1s", BaseEjectionTime: "2s", MaxEjectionPercent: new(int32(0)),
					},
					HealthCheck: &HealthCheck{GRPC: &GRPCHealthCheck{}, Interval: "3s", Timeout: "2s",
						HealthyThreshold: 1, UnhealthyThreshold: 1},
					RateLimit: &RateLimit{RequestsPerSecond: 50, Burst: 7},
					Overload: &Overload{MaxConcurrent: 8, MaxQueue: 2, MaxQueueWait: "5ms", Header: "x-p",
						Classes: []string{"a", "b"}, DefaultClass: "b"},
				},
			},
		},
		{
			name: "fault injection",
			in: `apiVersion: verge.dev/v1alpha1
kind: FaultInjection
metadata: {name: f}
spec:
  targetRef: {name: backend}
  abort: {httpStatus: 503, percent: "1"}
`,
			want: &FaultInjection{
				TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "FaultInjection"},
				ObjectMeta: metav1.ObjectMeta{Name: "f", Namespace: "default"},
				Spec: FaultInjectionSpec{
					TargetRef: PolicyTargetReference{Kind: "Service", Name: "backend"},
					Abort:     &FaultAbort{HTTPStatus: 503, Percent: "1"},
				},
			},
		},
		{
			name: "httproute filters",
			in: `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: backend}]
  rules:
  - filters:
    - {type: RequestRedirect, requestRedirect: {scheme: https}}
  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 1}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, namespace: other, port: 80}}}
    backendRefs: [{name: b, port: 80}]
`,
			want: &HTTPRoute{
				TypeMeta:   routeMeta("HTTPRoute"),
				ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "shop"},
				Spec: gatewayv1.HTTPRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
						{Group: &core, Kind: &service, Namespace: new(gatewayv1.Namespace("shop")), Name: "backend"},
					}},
					Rules: []gatewayv1.HTTPRouteRule{
						{
							Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: &prefix, Value: new("/")}}},
							Filters: []gatewayv1.HTTPRouteFilter{{
								Type:            gatewayv1.HTTPRouteFilterRequestRedirect,
								RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{Scheme: new("https"), StatusCode: new(302)},
							}},
						},
						{
							Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: &prefix, Value: new("/")}}},
							Filters: []gatewayv1.HTTPRouteFilter{
								{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
									BackendRef: gatewayv1.BackendObjectReference{Group: &core, Kind: &service, Name: "m",
										Namespace: new(gatewayv1.Namespace("shop")), Port: new(int32(80))},
									Fraction: &gatewayv1.Fraction{Numerator: 1, Denominator: new(int32(100))},
								}},
								{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
									BackendRef: gatewayv1.BackendObjectReference{Group: &core, Kind: &service, Name: "shadow",
										Namespace: &other, Port: new(int32(80))},
								}},
							},
							BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
								BackendObjectReference: gatewayv1.BackendObjectReference{
									Group: &core, Kind: &service, Name: "b", Namespace: new(gatewayv1.Namespace("shop")), Port: new(int32(80)),
								},
								Weight: new(int32(1)),
							}}},
						},
					},
				},
			},
		},
		{
			name: "grpcroute mirror",
			in: `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{name: backend}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 9000}}}]
    backendRefs: [{name: b, port: 9000}]
`,
			want: &GRPCRoute{
				TypeMeta:   routeMeta("GRPCRoute"),
				ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "default"},
				Spec: gatewayv1.GRPCRouteSpec{
					CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{
						{Group: &core, Kind: &service, Namespace: &ns, Name: "backend"},
					}},
					Rules: []gatewayv1.GRPCRouteRule{{
						Matches: []gatewayv1.GRPCRouteMatch{{}},
						Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestMirror,
							RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
								BackendRef: gatewayv1.BackendObjectReference{Group: &core, Kind: &service, Name: "m",
									Namespace: &ns, Port: new(int32(9000))},
							}}},
						BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
							BackendObjectReference: gatewayv1.BackendObjectReference{
								Group: &core, Kind: &service, Name: "b", Namespace: &ns, Port: new(int32(9000)),
							},
							Weight: new(int32(1)),
						}}},
					}},
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decodeOne(t, tt.in)
			Default(got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Default (-want +got):\n%s", diff)
			}
			Default(got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Default is not idempotent (-once +twice):\n%s", diff)
			}
		})
	}
}

func TestDefaultSetsTypeMeta(t *testing.T) {
	s := &Service{ObjectMeta: metav1.ObjectMeta{Name: "a"}}
	Default(s)
	want := metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Service"}
	if diff := cmp.Diff(want, s.TypeMeta); diff != "" {
		t.Errorf("Default TypeMeta (-want +got):\n%s", diff)
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{250 * time.Millisecond, "250ms"},
		{15 * time.Minute, "15m"},
		{time.Hour + 30*time.Second + 5*time.Millisecond, "1h30s5ms"},
		{999990 * time.Hour, ""}, // more than five digits of hours
		{time.Microsecond, ""},
		{0, ""},
	}
	for _, tt := range tests {
		if got := formatDuration(tt.in); got != tt.want {
			t.Errorf("formatDuration(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
