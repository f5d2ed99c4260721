package v1alpha1

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// TestTestdataValid takes the examples in testdata through the path every
// input takes: Decode, Default, Validate.
func TestTestdataValid(t *testing.T) {
	files, err := filepath.Glob("testdata/*.*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	kinds := map[string]int{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if len(objs) == 0 {
				t.Fatalf("Decode: no objects")
			}
			for _, o := range objs {
				Default(o)
				if errs := Validate(o); len(errs) > 0 {
					t.Errorf("Validate %s %s: %v", o.GetObjectKind().GroupVersionKind().Kind, o.GetName(), errs)
				}
				k, _ := KindOf(o)
				kinds[k.Kind]++
			}
		})
	}
	for _, k := range Kinds {
		if kinds[k.Kind] == 0 {
			t.Errorf("testdata has no %s", k.Kind)
		}
	}
}

func errorStrings(errs field.ErrorList) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "service",
			in: `apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: Backend_1
  namespace: "-x"
  labels: {"bad key!": v}
spec:
  selector: {app: "not valid!"}
  ports:
  - {port: 0}
  - {port: 70000, targetPort: -1}
  - {port: 80, protocol: UDP}
  - {port: 80, name: http-70000}
  - {port: 81, name: UPPER}
`,
			want: []string{
				`metadata.name: Invalid value: "Backend_1": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`metadata.namespace: Invalid value: "-x": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`metadata.labels: Invalid value: "bad key!": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')`,
				`spec.ports[0].port: Required value`,
				`spec.ports[0].targetPort: Required value`,
				`spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535`,
				`spec.ports[1].targetPort: Invalid value: -1: must be between 1 and 65535`,
				`spec.ports[2].protocol: Unsupported value: "UDP": supported values: "HTTP", "HTTP2", "GRPC", "TCP"`,
				`spec.ports[3].name: Duplicate value: "http-70000"`,
				`spec.ports[3].port: Duplicate value: 80`,
				`spec.ports[4].name: Invalid value: "UPPER": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.selector[app]: Invalid value: "not valid!": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')`,
			},
		},
		{
			name: "metadata and control characters",
			in: `apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: a
  annotations: {"Bad Key": x, ok.example/k: "line\nbreak", z: "bell\a"}
  labels: {app: a}
  finalizers: ["x\u0085"]
spec:
  ports: [{port: 80}]
`,
			want: []string{
				`metadata.annotations: Invalid value: "Bad Key": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')`,
				`metadata.annotations[z]: Invalid value: "bell\a": must not contain control characters`,
				`metadata.finalizers[0]: Invalid value: "x\u0085": must not contain control characters`,
			},
		},
		{
			name: "service accounts",
			in:   "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}], serviceAccounts: [web, web, Bad_SA]}\n",
			want: []string{
				`spec.serviceAccounts[1]: Duplicate value: "web"`,
				`spec.serviceAccounts[2]: Invalid value: "Bad_SA": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
			},
		},
		{
			name: "service without ports",
			in:   "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
			want: []string{`spec.ports: Required value: a service needs at least one port`},
		},
		{
			name: "workload",
			in: `apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: w}
spec:
  address: 10.0.0.300
  serviceAccount: Not_OK
  ports:
  - {port: 80, inboundPort: 15006}
  - {port: 80, inboundPort: 15006}
  - {port: 81, inboundPort: 70000}
  proxy: {readinessPath: healthz, appAddress: localhost}
  upstreams:
  - {service: a.b.c, port: 80, localPort: 8080}
  - {service: "", port: 0, localPort: 8080, localAddress: "::1"}
  - {service: Up.x, port: 80, localPort: 8081, localAddress: "nope"}
`,
			want: []string{
				`spec.address: Invalid value: "10.0.0.300": must be an IP address`,
				`spec.serviceAccount: Invalid value: "Not_OK": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
				`spec.ports[1].port: Duplicate value: 80`,
				`spec.ports[1].inboundPort: Duplicate value: 15006`,
				`spec.ports[2].inboundPort: Invalid value: 70000: must be between 1 and 65535`,
				`spec.proxy.readinessPath: Invalid value: "healthz": must start with /`,
				`spec.proxy.appAddress: Invalid value: "localhost": must be an IP address`,
				`spec.upstreams[0].service: Invalid value: "a.b.c": must be NAME or NAME.NAMESPACE`,
				`spec.upstreams[1].service: Required value`,
				`spec.upstreams[1].port: Required value`,
				`spec.upstreams[1].localPort: Duplicate value: 8080`,
				`spec.upstreams[2].service: Invalid value: "Up.x": "Up": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.upstreams[2].localAddress: Invalid value: "nope": must be an IP address`,
			},
		},
		{
			name: "workload http proxy",
			in: `apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: w}
spec:
  address: 10.0.0.1
  upstreams:
  - {service: a, port: 80, localPort: 15080}
  httpProxy: {port: 15080}
`,
			want: []string{`spec.httpProxy.port: Duplicate value: 15080`},
		},
		{
			name: "workload http proxy out of range",
			in: `apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: w}
spec:
  address: 10.0.0.1
  httpProxy: {port: 70000, address: nope}
`,
			want: []string{
				`spec.httpProxy.port: Invalid value: 70000: must be between 1 and 65535`,
				`spec.httpProxy.address: Invalid value: "nope": must be an IP address`,
			},
		},
		{
			name: "workload http proxy without port",
			in: `apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: w}
spec:
  address: 10.0.0.1
  httpProxy: {}
`,
			want: []string{`spec.httpProxy.port: Required value`},
		},
		{
			name: "workload without address",
			in:   "apiVersion: verge.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {}\n",
			want: []string{`spec.address: Required value`},
		},
		{
			name: "httproute",
			in: `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs:
  - {name: gw, kind: Gateway}
  - {name: backend, group: apps, kind: Service, port: 0}
  - {name: backend, sectionName: http, port: 8080}
  rules:
  - matches:
    - path: {type: Exact, value: api}
      headers:
      - {name: "bad header", value: x}
      - {name: X-A, value: "(", type: RegularExpression}
      - {name: x-a, value: z}
      queryParams:
      - {name: q, value: v, type: Prefix}
      method: FETCH
    - path: {type: RegularExpression, value: "/a("}
    - path: {type: PathPrefix, value: "/a/../b"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x, value: z}]}
    backendRefs:
    - {name: a, port: 80, weight: -1}
    - {name: b, weight: 2000000}
    - name: c
      kind: ConfigMap
      port: 80
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]
    timeouts: {request: 1s, backendRequest: 2s}
  - backendRefs:
    - {name: a, port: 80, weight: 0}
    timeouts: {request: "10"}
    retry: {codes: [200], attempts: -1, backoff: 1d}
    sessionPersistence: {type: Cookie}
  - {}
`,
			want: []string{
				`spec.parentRefs[0].group: Unsupported value: "gateway.networking.k8s.io": supported values: "", "verge.dev"`,
				`spec.parentRefs[0].kind: Unsupported value: "Gateway": supported values: "Service"`,
				`spec.parentRefs[1].group: Unsupported value: "apps": supported values: "", "verge.dev"`,
				`spec.parentRefs[1].port: Invalid value: 0: must be between 1 and 65535`,
				`spec.rules[0].matches[0].path.value: Invalid value: "api": must be an absolute path starting with /`,
				`spec.rules[0].matches[0].headers[0].name: Invalid value: "bad header": must be an HTTP token of at most 256 characters`,
				"spec.rules[0].matches[0].headers[1].value: Invalid value: \"(\": must be an RE2 regular expression: error parsing regexp: missing closing ): `(`",
				`spec.rules[0].matches[0].headers[2].name: Duplicate value: "x-a"`,
				`spec.rules[0].matches[0].queryParams[0].type: Unsupported value: "Prefix": supported values: "Exact", "RegularExpression"`,
				`spec.rules[0].matches[0].method: Unsupported value: "FETCH": supported values: "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"`,
				"spec.rules[0].matches[1].path.value: Invalid value: \"/a(\": must be an RE2 regular expression: error parsing regexp: missing closing ): `/a(`",
				`spec.rules[0].matches[2].path.value: Invalid value: "/a/../b": must not contain /../ or end with /..`,
				`spec.rules[0].backendRefs[0].weight: Invalid value: -1: must be between 0 and 1000000`,
				`spec.rules[0].backendRefs[1].port: Required value: a Service backend needs a port`,
				`spec.rules[0].backendRefs[1].weight: Invalid value: 2000000: must be between 0 and 1000000`,
				`spec.rules[0].backendRefs[2].kind: Unsupported value: "ConfigMap": supported values: "Service"`,
				`spec.rules[0].backendRefs[2].filters: Forbidden: filters on a backendRef are not supported; set them on the rule`,
				`spec.rules[0].timeouts.backendRequest: Invalid value: "2s": must not be longer than the request timeout`,
				`spec.rules[1].backendRefs: Invalid value: 0: the sum of the weights must be greater than 0`,
				`spec.rules[1].timeouts.request: Invalid value: "10": must be a Gateway API duration such as "10s" or "1m30s500ms"`,
				`spec.rules[1].retry.codes[0]: Invalid value: 200: must be between 400 and 599`,
				`spec.rules[1].retry.attempts: Invalid value: -1: must not be negative`,
				`spec.rules[1].retry.backoff: Invalid value: "1d": must be a Gateway API duration such as "10s" or "1m30s500ms"`,
				`spec.rules[1].sessionPersistence: Forbidden: not supported yet`,
				`spec.rules[2].backendRefs: Required value: a rule needs at least one backend`,
			},
		},
		{
			name: "httproute without parents and rules",
			in:   "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n",
			want: []string{
				`spec.parentRefs: Required value: a mesh route attaches to at least one Service`,
				`spec.rules: Required value: a route needs at least one rule`,
			},
		},
		{
			name: "grpcroute",
			in: `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{name: backend}]
  rules:
  - matches:
    - method: {}
    - method: {service: "not a service", method: "Get-It"}
    - method: {type: RegularExpression, service: "(", method: "["}
    - method: {type: Prefix, method: Get}
      headers:
      - {name: x, value: "(", type: RegularExpression}
      - {name: X, value: z, type: Contains}
    backendRefs: [{name: b, port: 9000}]
    filters: [{type: RequestHeaderModifier}]
`,
			want: []string{
				`spec.rules[0].matches[0].method: Required value: one or both of service and method must be set`,
				`spec.rules[0].matches[1].method.service: Invalid value: "not a service": must be a fully qualified gRPC service name`,
				`spec.rules[0].matches[1].method.method: Invalid value: "Get-It": must be a gRPC method name`,
				"spec.rules[0].matches[2].method.service: Invalid value: \"(\": must be an RE2 regular expression: error parsing regexp: missing closing ): `(`",
				"spec.rules[0].matches[2].method.method: Invalid value: \"[\": must be an RE2 regular expression: error parsing regexp: missing closing ]: `[`",
				`spec.rules[0].matches[3].method.type: Unsupported value: "Prefix": supported values: "Exact", "RegularExpression"`,
				"spec.rules[0].matches[3].headers[0].value: Invalid value: \"(\": must be an RE2 regular expression: error parsing regexp: missing closing ): `(`",
				`spec.rules[0].matches[3].headers[1].type: Unsupported value: "Contains": supported values: "Exact", "RegularExpression"`,
				`spec.rules[0].matches[3].headers[1].name: Duplicate value: "X"`,
				`spec.rules[0].filters[0].requestHeaderModifier: Required value: type RequestHeaderModifier needs it`,
			},
		},
		{
			name: "destination policy",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: Backend, port: 70000}
  loadBalancer: {policy: Random}
`,
			want: []string{
				`spec.targetRef.group: Unsupported value: "gateway.networking.k8s.io": supported values: "", "verge.dev"`,
				`spec.targetRef.kind: Unsupported value: "HTTPRoute": supported values: "Service"`,
				`spec.targetRef.name: Invalid value: "Backend": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.targetRef.port: Invalid value: 70000: must be between 1 and 65535`,
				`spec.loadBalancer.policy: Unsupported value: "Random": supported values: "RoundRobin", "LeastRequest", "RingHash", "Maglev", "PeakEWMA"`,
			},
		},
		{
			name: "destination policy without target or sections",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p}
spec:
  targetRef: {port: -1}
`,
			want: []string{
				`spec.targetRef.name: Required value`,
				`spec.targetRef.port: Invalid value: -1: must be between 1 and 65535`,
				`spec: Required value: a policy must set at least one of: loadBalancer, retry, circuitBreaker, outlierDetection, healthCheck, rateLimit, overload, bandwidth`,
			},
		},
		{
			name: "destination policy valid",
			in: `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: p}
spec:
  targetRef: {group: "", kind: Service, name: backend, port: 80}
  loadBalancer: {policy: RoundRobin}
`,
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := decodeOne(t, tt.in)
			Default(obj)
			if diff := cmp.Diff(tt.want, errorStrings(Validate(obj))); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestValidateWithoutDefault checks that Validate does not trust Default to
// have run: an object built in code with fields left empty is refused, not
// accepted or panicked on.
func TestValidateWithoutDefault(t *testing.T) {
	s := &Service{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: ServiceSpec{Ports: []ServicePort{{Port: 80}}}}
	want := []string{
		`apiVersion: Unsupported value: "": supported values: "verge.dev/v1alpha1"`,
		`kind: Unsupported value: "": supported values: "Service"`,
		`metadata.namespace: Required value`,
		`spec.ports[0].protocol: Unsupported value: "": supported values: "HTTP", "HTTP2", "GRPC", "TCP"`,
		`spec.ports[0].targetPort: Required value`,
	}
	if diff := cmp.Diff(want, errorStrings(Validate(s))); diff != "" {
		t.Errorf("Validate (-want +got):\n%s", diff)
	}
	dp := &DestinationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"},
		Spec: DestinationPolicySpec{TargetRef: PolicyTargetReference{Name: "b"}, LoadBalancer: &LoadBalancer{}}}
	want = []string{
		`apiVersion: Unsupported value: "": supported values: "verge.dev/v1alpha1"`,
		`kind: Unsupported value: "": supported values: "DestinationPolicy"`,
		`spec.targetRef.kind: Unsupported value: "": supported values: "Service"`,
		`spec.loadBalancer.policy: Unsupported value: "": supported values: "RoundRobin", "LeastRequest", "RingHash", "Maglev", "PeakEWMA"`,
	}
	if diff := cmp.Diff(want, errorStrings(Validate(dp))); diff != "" {
		t.Errorf("Validate(DestinationPolicy) (-want +got):\n%s", diff)
	}
	r := &HTTPRoute{}
	r.Name, r.Namespace = "r", "default"
	Default(r)
	if got := len(Validate(r)); got != 2 {
		t.Errorf("Validate(empty HTTPRoute) = %d errors, want 2", got)
	}
}
