package v1alpha1

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// policy is a DestinationPolicy of the service backend with spec lines
// (indented two spaces under spec) added.
func policy(spec string) string {
	return "apiVersion: verge.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {name: backend}\n" + spec
}

// fault is a FaultInjection with the given spec lines.
func fault(spec string) string {
	return "apiVersion: verge.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: f}\nspec:\n" + spec
}

// httpRule is an HTTPRoute of one rule (lines indented four spaces).
func httpRule(rule string) string {
	return "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: backend}]\n  rules:\n  - " +
		strings.TrimPrefix(rule, "    ")
}

func grpcRule(rule string) string {
	return "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: backend}]\n  rules:\n  - " +
		strings.TrimPrefix(rule, "    ")
}

func TestValidateTraffic(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		// DestinationPolicy: load balancing.
		{
			name: "ring hash needs a hash",
			in:   policy("  loadBalancer: {policy: RingHash}\n"),
			want: []string{`spec.loadBalancer.consistentHash: Required value: policy RingHash hashes a request property`},
		},
		{
			name: "hash with a policy that does not hash",
			in:   policy("  loadBalancer: {policy: LeastRequest, consistentHash: {sourceIP: true}}\n"),
			want: []string{`spec.loadBalancer.consistentHash: Forbidden: only the RingHash and Maglev policies hash, not LeastRequest`},
		},
		{
			name: "hash on two properties, ring size with maglev",
			in:   policy("  loadBalancer: {policy: Maglev, consistentHash: {header: x-user, sourceIP: true, minimumRingSize: 10}}\n"),
			want: []string{
				`spec.loadBalancer.consistentHash: Invalid value: 2: exactly one of header, cookie and sourceIP must be set`,
				`spec.loadBalancer.consistentHash.minimumRingSize: Forbidden: only the RingHash policy has a ring`,
			},
		},
		{
			name: "hash on nothing",
			in:   policy("  loadBalancer: {policy: RingHash, consistentHash: {}}\n"),
			want: []string{`spec.loadBalancer.consistentHash: Invalid value: 0: exactly one of header, cookie and sourceIP must be set`},
		},
		{
			name: "bad hash header, cookie and ring size",
			in: policy(`  loadBalancer:
    policy: RingHash
    consistentHash: {header: "x user", cookie: {name: "a;b", ttl: 0s, path: x}, minimumRingSize: 8388609}
`),
			want: []string{
				`spec.loadBalancer.consistentHash.header: Invalid value: "x user": must be an HTTP token of at most 256 characters`,
				`spec.loadBalancer.consistentHash.cookie.name: Invalid value: "a;b": must be an HTTP token of at most 256 characters`,
				`spec.loadBalancer.consistentHash.cookie.ttl: Invalid value: "0s": must be greater than 0`,
				`spec.loadBalancer.consistentHash.cookie.path: Invalid value: "x": must start with /`,
				`spec.loadBalancer.consistentHash: Invalid value: 2: exactly one of header, cookie and sourceIP must be set`,
				`spec.loadBalancer.consistentHash.minimumRingSize: Invalid value: 8388609: must be between 1 and 8388608`,
			},
		},
		{
			name: "cookie without ttl, negative ring size",
			in:   policy("  loadBalancer: {policy: RingHash, consistentHash: {cookie: {name: s}, minimumRingSize: -1}}\n"),
			want: []string{
				`spec.loadBalancer.consistentHash.cookie.ttl: Required value: the generated cookie needs a lifetime`,
				`spec.loadBalancer.consistentHash.minimumRingSize: Invalid value: -1: must be between 1 and 8388608`,
			},
		},
		// Retries.
		{
			name: "retry out of range",
			in: policy(`  retry:
    attempts: 11
    retryOn: [5xx, teapot, 5xx]
    perTryTimeout: 0s
    baseInterval: 1d
    maxInterval: "10"
    budget: {percent: 101, minRetriesPerSecond: -1}
`),
			want: []string{
				`spec.retry.attempts: Invalid value: 11: must be between 0 and 10`,
				`spec.retry.retryOn[1]: Unsupported value: "teapot": supported values: "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"`,
				`spec.retry.retryOn[2]: Duplicate value: "5xx"`,
				`spec.retry.perTryTimeout: Invalid value: "0s": must be greater than 0`,
				`spec.retry.baseInterval: Invalid value: "1d": must be a Gateway API duration such as "10s" or "1m30s500ms"`,
				`spec.retry.maxInterval: Invalid value: "10": must be a Gateway API duration such as "10s" or "1m30s500ms"`,
				`spec.retry.budget.percent: Invalid value: 101: must be between 0 and 100`,
				`spec.retry.budget.minRetriesPerSecond: Invalid value: -1: must not be negative`,
			},
		},
		{
			name: "retry backoff upside down",
			in:   policy("  retry: {attempts: -1, baseInterval: 2s, maxInterval: 1s}\n"),
			want: []string{
				`spec.retry.attempts: Invalid value: -1: must be between 0 and 10`,
				`spec.retry.maxInterval: Invalid value: "1s": must not be less than baseInterval`,
			},
		},
		// Circuit breaker, outlier detection, health checks.
		{
			name: "circuit breaker",
			in:   policy("  circuitBreaker: {maxConnections: -1, maxRetries: -5}\n"),
			want: []string{
				`spec.circuitBreaker.maxConnections: Invalid value: -1: must be at least 1`,
				`spec.circuitBreaker.maxRetries: Invalid value: -5: must be at least 1`,
			},
		},
		{
			name: "outlier detection",
			in:   policy("  outlierDetection: {consecutive5xx: -1, consecutiveGatewayErrors: 0, interval: \"10\", baseEjectionTime: 0s, maxEjectionPercent: 101}\n"),
			want: []string{
				`spec.outlierDetection.consecutive5xx: Invalid value: -1: must not be negative`,
				`spec.outlierDetection.interval: Invalid value: "10": must be a Gateway API duration such as "10s" or "1m30s500ms"`,
				`spec.outlierDetection.baseEjectionTime: Invalid value: "0s": must be greater than 0`,
				`spec.outlierDetection.maxEjectionPercent: Invalid value: 101: must be between 0 and 100`,
			},
		},
		{
			name: "outlier detection that never ejects",
			in:   policy("  outlierDetection: {consecutive5xx: 0}\n"),
			want: []string{
				`spec.outlierDetection.consecutive5xx: Invalid value: 0: at least one of consecutive5xx and consecutiveGatewayErrors must be greater than 0, or nothing is ever ejected`,
			},
		},
		{
			name: "health check without a probe",
			in:   policy("  healthCheck: {healthyThreshold: 101, unhealthyThreshold: -1}\n"),
			want: []string{
				`spec.healthCheck: Invalid value: 0: exactly one of http, grpc and tcp must be set`,
				`spec.healthCheck.healthyThreshold: Invalid value: 101: must be between 1 and 100`,
				`spec.healthCheck.unhealthyThreshold: Invalid value: -1: must be between 1 and 100`,
			},
		},
		{
			name: "health check with three probes, timeout not under interval",
			in:   policy("  healthCheck: {http: {path: healthz}, grpc: {service: \"not a service\"}, tcp: {}, interval: 1s, timeout: 1s}\n"),
			want: []string{
				`spec.healthCheck.http.path: Invalid value: "healthz": must start with / and contain no whitespace`,
				`spec.healthCheck.grpc.service: Invalid value: "not a service": must be a fully qualified gRPC service name`,
				`spec.healthCheck: Invalid value: 3: exactly one of http, grpc and tcp must be set`,
				`spec.healthCheck.timeout: Invalid value: "1s": must be less than interval`,
			},
		},
		{
			name: "health check durations",
			in:   policy("  healthCheck: {http: {path: \"\"}, interval: 0s, timeout: 1x}\n"),
			want: []string{
				`spec.healthCheck.http.path: Required value`,
				`spec.healthCheck.interval: Invalid value: "0s": must be greater than 0`,
				`spec.healthCheck.timeout: Invalid value: "1x": must be a Gateway API duration such as "10s" or "1m30s500ms"`,
			},
		},
		// Rate limits, overload, bandwidth.
		{
			name: "rate limit",
			in:   policy("  rateLimit: {requestsPerSecond: 0, burst: -1, by: ip, routes: [Bad_Rule, a, a, \"\"]}\n"),
			want: []string{
				`spec.rateLimit.requestsPerSecond: Invalid value: 0: must be at least 1`,
				`spec.rateLimit.burst: Invalid value: -1: must not be negative`,
				`spec.rateLimit.by: Invalid value: "ip": must be "", "source" or "header:NAME"`,
				`spec.rateLimit.routes[0]: Invalid value: "Bad_Rule": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
				`spec.rateLimit.routes[2]: Duplicate value: "a"`,
				`spec.rateLimit.routes[3]: Required value`,
			},
		},
		{
			name: "rate limit by a bad header",
			in:   policy("  rateLimit: {requestsPerSecond: 5, by: \"header:\"}\n"),
			want: []string{`spec.rateLimit.by: Invalid value: "header:": the header must be an HTTP token of at most 256 characters`},
		},
		{
			name: "overload",
			in: policy(`  overload:
    maxConcurrent: 0
    maxQueue: -1
    maxQueueWait: 0s
    header: "x priority"
    classes: [Gold, a, a]
    defaultClass: z
    routeClasses: {r: nope, Bad_Rule: a}
`),
			want: []string{
				`spec.overload.maxConcurrent: Invalid value: 0: must be at least 1`,
				`spec.overload.maxQueue: Invalid value: -1: must not be negative`,
				`spec.overload.maxQueueWait: Invalid value: "0s": must be greater than 0`,
				`spec.overload.header: Invalid value: "x priority": must be an HTTP token of at most 256 characters`,
				`spec.overload.classes[0]: Invalid value: "Gold": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.overload.classes[2]: Duplicate value: "a"`,
				`spec.overload.defaultClass: Unsupported value: "z": supported values: "Gold", "a", "a"`,
				`spec.overload.routeClasses: Invalid value: "Bad_Rule": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
				`spec.overload.routeClasses[r]: Unsupported value: "nope": supported values: "Gold", "a", "a"`,
			},
		},
		{
			name: "overload classes without the default class",
			in:   policy("  overload: {maxConcurrent: 10, classes: [gold, silver]}\n"),
			want: []string{`spec.overload.defaultClass: Unsupported value: "default": supported values: "gold", "silver"`},
		},
		{
			name: "overload with too many classes",
			in:   policy("  overload: {maxConcurrent: 10, defaultClass: c0, classes: [" + classes(17) + "]}\n"),
			want: []string{`spec.overload.classes: Too many: 17: must have at most 16 items`},
		},
		{
			name: "bandwidth",
			in:   policy("  bandwidth: {bytesPerSecond: 1023}\n"),
			want: []string{`spec.bandwidth.bytesPerSecond: Invalid value: 1023: must be at least 1024`},
		},
		{
			name: "every section valid",
			in: policy(`  loadBalancer: {policy: RingHash, consistentHash: {sourceIP: true}, locality: {disabled: true}}
  retry: {perTryTimeout: 1s}
  circuitBreaker: {}
  outlierDetection: {}
  healthCheck: {tcp: {}}
  rateLimit: {requestsPerSecond: 1, burst: 0, by: "header:x-tenant"}
  overload: {maxConcurrent: 1}
  bandwidth: {bytesPerSecond: 1024}
`),
			want: nil,
		},
		// FaultInjection.
		{
			name: "fault injection without faults",
			in:   fault("  targetRef: {name: backend, kind: Deployment}\n  maxActive: -1\n"),
			want: []string{
				`spec.targetRef.kind: Unsupported value: "Deployment": supported values: "Service"`,
				`spec: Required value: a fault injection must set at least one of: delay, abort`,
				`spec.maxActive: Invalid value: -1: must not be negative`,
			},
		},
		{
			name: "fault injection out of range",
			in: fault(`  targetRef: {name: backend}
  routes: [a, a]
  headers: {"bad header": x, ok: "y"}
  delay: {percent: "100.5"}
  abort: {httpStatus: 600, percent: "1.23456"}
`),
			want: []string{
				`spec.routes[1]: Duplicate value: "a"`,
				`spec.headers: Invalid value: "bad header": must be an HTTP token of at most 256 characters`,
				`spec.delay.duration: Required value`,
				`spec.delay.percent: Invalid value: "100.5": must be a decimal number between 0 and 100 with at most 4 decimals`,
				`spec.abort.httpStatus: Invalid value: 600: must be between 200 and 599`,
				`spec.abort.percent: Invalid value: "1.23456": must be a decimal number between 0 and 100 with at most 4 decimals`,
			},
		},
		{
			name: "fault abort with both statuses",
			in:   fault("  targetRef: {name: backend}\n  delay: {duration: 0s, percent: \"\"}\n  abort: {httpStatus: 503, grpcStatus: UNAVAILABLE, percent: \"-1\"}\n"),
			want: []string{
				`spec.delay.duration: Invalid value: "0s": must be greater than 0`,
				`spec.delay.percent: Required value: a percentage such as "100" or "0.5"`,
				`spec.abort: Invalid value: "UNAVAILABLE": httpStatus and grpcStatus are mutually exclusive`,
				`spec.abort.percent: Invalid value: "-1": must be a decimal number between 0 and 100 with at most 4 decimals`,
			},
		},
		{
			name: "fault abort with no status",
			in:   fault("  targetRef: {name: backend}\n  abort: {percent: \"100\"}\n"),
			want: []string{`spec.abort.httpStatus: Required value: one of httpStatus and grpcStatus`},
		},
		{
			name: "fault abort with a bad gRPC status",
			in:   fault("  targetRef: {name: backend}\n  abort: {grpcStatus: \"17\", percent: \"1.\"}\n"),
			want: []string{
				`spec.abort.grpcStatus: Invalid value: "17": must be a gRPC status code name such as UNAVAILABLE, or its number (0-16)`,
				`spec.abort.percent: Invalid value: "1.": must be a decimal number between 0 and 100 with at most 4 decimals`,
			},
		},
		{
			name: "fault with gRPC status number",
			in:   fault("  targetRef: {name: backend, port: 9000}\n  abort: {grpcStatus: \"14\", percent: \"0.0001\"}\n"),
			want: nil,
		},
		// HTTPRoute filters.
		{
			name: "header modifiers",
			in: httpRule(`    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-A, value: "1"}, {name: ":path", value: /x}, {name: Host, value: h}]
        add: [{name: x-a, value: "2"}, {name: x-b, value: ""}, {name: x-c, value: "a\r\nb: c"}]
        remove: [X-B, "bad header"]
    - type: RequestHeaderModifier
      requestHeaderModifier: {}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [` + headerNames(17) + `]}
    backendRefs: [{name: b, port: 80}]
`),
			want: []string{
				`spec.rules[0].filters[0].requestHeaderModifier.set[1].name: Invalid value: ":path": pseudo-headers cannot be modified`,
				`spec.rules[0].filters[0].requestHeaderModifier.set[2].name: Invalid value: "Host": host cannot be modified; use a URLRewrite filter's hostname`,
				`spec.rules[0].filters[0].requestHeaderModifier.add[0].name: Duplicate value: "x-a"`,
				`spec.rules[0].filters[0].requestHeaderModifier.add[1].value: Required value`,
				`spec.rules[0].filters[0].requestHeaderModifier.add[2].value: Invalid value: "a\r\nb: c": must not contain CR, LF or NUL`,
				`spec.rules[0].filters[0].requestHeaderModifier.remove[0]: Duplicate value: "X-B"`,
				`spec.rules[0].filters[0].requestHeaderModifier.remove[1]: Invalid value: "bad header": must be an HTTP token of at most 256 characters`,
				`spec.rules[0].filters[1].type: Duplicate value: "RequestHeaderModifier"`,
				`spec.rules[0].filters[2].responseHeaderModifier.remove: Too many: 17: must have at most 16 items`,
			},
		},
		{
			name: "filter union members",
			in: httpRule(`    filters:
    - type: RequestMirror
      requestHeaderModifier: {}
    - type: ""
    - type: Teleport
    - type: CORS
      cors: {}
    - type: ExtensionRef
      extensionRef: {group: x, kind: k, name: z}
    backendRefs: [{name: b, port: 80}]
`),
			want: []string{
				`spec.rules[0].filters[0].requestHeaderModifier: Forbidden: may be set only when type is RequestHeaderModifier`,
				`spec.rules[0].filters[0].requestMirror: Required value: type RequestMirror needs it`,
				`spec.rules[0].filters[1].type: Required value`,
				`spec.rules[0].filters[2].type: Unsupported value: "Teleport": supported values: "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite"`,
				`spec.rules[0].filters[3].type: Unsupported value: "CORS": CORS filters are not supported yet`,
				`spec.rules[0].filters[4].type: Unsupported value: "ExtensionRef": ExtensionRef filters are not supported yet`,
			},
		},
		{
			name: "redirect with rewrite and backends",
			in: httpRule(`    matches: [{path: {type: Exact, value: /a}}, {path: {value: /b}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: "*.example.com"
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /x, replaceFullPath: /y}
    - type: RequestRedirect
      requestRedirect:
        scheme: ftp
        hostname: Example.com
        port: 0
        statusCode: 304
        path: {type: ReplaceFullPath}
    - type: RequestRedirect
      requestRedirect: {path: {type: Bogus}}
    backendRefs: [{name: b, port: 80}]
`),
			want: []string{
				`spec.rules[0].filters[0].urlRewrite.hostname: Invalid value: "*.example.com": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
				`spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: Forbidden: may be set only when type is ReplaceFullPath`,
				`spec.rules[0].filters[0].urlRewrite.path.type: Forbidden: ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix`,
				`spec.rules[0].filters[1].type: Forbidden: a rule cannot have both a RequestRedirect and a URLRewrite filter`,
				`spec.rules[0].filters[1].requestRedirect.scheme: Unsupported value: "ftp": supported values: "http", "https"`,
				`spec.rules[0].filters[1].requestRedirect.hostname: Invalid value: "Example.com": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
				`spec.rules[0].filters[1].requestRedirect.path.replaceFullPath: Required value: type ReplaceFullPath needs it`,
				`spec.rules[0].filters[1].requestRedirect.port: Invalid value: 0: must be between 1 and 65535`,
				`spec.rules[0].filters[1].requestRedirect.statusCode: Unsupported value: 304: supported values: "301", "302", "303", "307", "308"`,
				`spec.rules[0].filters[2].type: Duplicate value: "RequestRedirect"`,
				`spec.rules[0].filters[2].type: Forbidden: a rule cannot have both a RequestRedirect and a URLRewrite filter`,
				`spec.rules[0].filters[2].requestRedirect.path.type: Unsupported value: "Bogus": supported values: "ReplaceFullPath", "ReplacePrefixMatch"`,
				`spec.rules[0].backendRefs: Forbidden: must be empty in a rule with a RequestRedirect filter`,
			},
		},
		{
			name: "rewrite paths",
			in: httpRule(`    matches: [{path: {value: /a}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: "a//b"}}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "/x/../y"}}
    backendRefs: [{name: b, port: 80}]
`),
			want: []string{
				`spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: Invalid value: "a//b": must be an absolute path starting with /`,
				`spec.rules[0].filters[1].type: Duplicate value: "URLRewrite"`,
				`spec.rules[0].filters[1].urlRewrite.path.replacePrefixMatch: Invalid value: "/x/../y": must not contain /../ or end with /..`,
			},
		},
		{
			name: "redirect alone, prefix replaced by nothing",
			in: httpRule(`    matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: ""}}
`),
			want: nil,
		},
		{
			name: "mirrors",
			in: httpRule(`    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: m, kind: ConfigMap}, percent: 101, fraction: {numerator: 5, denominator: 2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: -1, denominator: 0}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: M, namespace: other, port: 70000}, percent: -1}
    backendRefs: [{name: b, port: 80}]
`),
			want: []string{
				`spec.rules[0].filters[0].requestMirror.backendRef.kind: Unsupported value: "ConfigMap": supported values: "Service"`,
				`spec.rules[0].filters[0].requestMirror.backendRef.port: Required value: a Service backend needs a port`,
				`spec.rules[0].filters[0].requestMirror.fraction: Forbidden: percent and fraction are mutually exclusive`,
				`spec.rules[0].filters[0].requestMirror.percent: Invalid value: 101: must be between 0 and 100`,
				`spec.rules[0].filters[0].requestMirror.fraction.numerator: Invalid value: 5: must not be greater than denominator`,
				`spec.rules[0].filters[1].requestMirror.fraction.numerator: Invalid value: -1: must not be negative`,
				`spec.rules[0].filters[1].requestMirror.fraction.denominator: Invalid value: 0: must be at least 1`,
				`spec.rules[0].filters[2].requestMirror.backendRef.name: Invalid value: "M": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
				`spec.rules[0].filters[2].requestMirror.backendRef.port: Invalid value: 70000: must be between 1 and 65535`,
				`spec.rules[0].filters[2].requestMirror.percent: Invalid value: -1: must be between 0 and 100`,
			},
		},
		// GRPCRoute filters.
		{
			name: "grpc filters",
			in: grpcRule(`    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: ":authority", value: x}]}
    - type: RequestHeaderModifier
      requestHeaderModifier: {}
    - type: URLRewrite
    - type: ExtensionRef
      extensionRef: {group: x, kind: k, name: z}
    - type: RequestMirror
      requestMirror: {backendRef: {name: m, port: 9000}, percent: 200}
    backendRefs:
    - name: b
      port: 9000
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 9000}}}]
`),
			want: []string{
				`spec.rules[0].filters[0].requestHeaderModifier.set[0].name: Invalid value: ":authority": pseudo-headers cannot be modified`,
				`spec.rules[0].filters[1].type: Duplicate value: "RequestHeaderModifier"`,
				`spec.rules[0].filters[2].type: Unsupported value: "URLRewrite": supported values: "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror"`,
				`spec.rules[0].filters[3].type: Unsupported value: "ExtensionRef": ExtensionRef filters are not supported yet`,
				`spec.rules[0].filters[4].requestMirror.percent: Invalid value: 200: must be between 0 and 100`,
				`spec.rules[0].backendRefs[0].filters: Forbidden: filters on a backendRef are not supported; set them on the rule`,
			},
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

// classes lists n priority classes c0, c1, ... as YAML flow items.
func classes(n int) string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf("c%d", i))
	}
	return strings.Join(s, ", ")
}

func headerNames(n int) string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf("x-h%d", i))
	}
	return strings.Join(s, ", ")
}

func TestParsePercent(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"0", 0, true},
		{"100", 1000000, true},
		{"100.0000", 1000000, true},
		{"0.5", 5000, true},
		{"12.3456", 123456, true},
		{"0.0001", 1, true},
		{"100.0001", 0, false},
		{"1000", 0, false},
		{"01", 0, false},
		{"1.", 0, false},
		{".5", 0, false},
		{"1e2", 0, false},
		{"", 0, false},
		{" 1", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParsePercent(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParsePercent(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestGRPCStatusCode(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"OK", 0, true},
		{"UNAVAILABLE", 14, true},
		{"UNAUTHENTICATED", 16, true},
		{"0", 0, true},
		{"16", 16, true},
		{"17", 0, false},
		{"014", 0, false},
		{"unavailable", 0, false},
		{"-1", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := GRPCStatusCode(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("GRPCStatusCode(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
