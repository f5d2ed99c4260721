package xdsclient

import (
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/telemetry"
	"verge.dev/verge/internal/xds/translate"
)

// telemetryMesh: mesh-wide access log and 10% tracing to an IP collector;
// the checkout service traces everything to a DNS collector, logs to a file
// and has its metrics off; legacy has only metrics off.
const telemetryMesh = `
apiVersion: verge.dev/v1alpha1
kind: Telemetry
metadata: {name: default, namespace: verge-system}
spec:
  accessLog: {}
  tracing: {samplingPercent: 10, collector: 127.0.0.1:4317}
---
apiVersion: verge.dev/v1alpha1
kind: Telemetry
metadata: {name: checkout}
spec:
  service: checkout
  accessLog: {path: /var/log/checkout.json}
  tracing: {samplingPercent: 100, collector: otel.observability:4317}
  metrics: {enabled: false}
---
apiVersion: verge.dev/v1alpha1
kind: Telemetry
metadata: {name: quiet, namespace: legacy}
spec:
  metrics: {enabled: false}
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: checkout}
spec:
  selector: {app: checkout}
  ports: [{port: 80, targetPort: 8080}, {port: 5432, protocol: TCP}]
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: web-1, labels: {app: web}}
spec:
  address: 127.0.0.1
  ports: [{port: 8080, inboundPort: 15006}]
  proxy: {}
  upstreams:
  - {service: checkout, port: 80, localPort: 8001}
  - {service: checkout, port: 5432, localPort: 8002}
  httpProxy: {port: 15080}
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: checkout-1, labels: {app: checkout}}
spec:
  address: 127.0.0.2
  ports: [{port: 8080, inboundPort: 15006}, {port: 5432, inboundPort: 15432}]
  proxy: {}
---
apiVersion: verge.dev/v1alpha1
kind: Workload
metadata: {name: old-1, namespace: legacy}
spec:
  address: 127.0.0.3
  ports: [{port: 8080, inboundPort: 15006}]
  proxy: {}
`

// TestTelemetryRoundTrip: what the control plane translates from Telemetry
// resources is accepted and read into Listener.Telemetry, with and without
// mutual TLS (whose filter chains repeat the filters).
func TestTelemetryRoundTrip(t *testing.T) {
	objs, err := v1alpha1.Decode([]byte(telemetryMesh))
	if err != nil {
		t.Fatal(err)
	}
	var m translate.Mesh
	byName := map[string]*v1alpha1.Workload{}
	for _, o := range objs {
		v1alpha1.Default(o)
		if errs := v1alpha1.Validate(o); len(errs) > 0 {
			t.Fatalf("%s: %v", o.GetName(), errs)
		}
		m.Add(o)
		if w, ok := o.(*v1alpha1.Workload); ok {
			byName[w.Name] = w
		}
	}
	meshLog := &config.AccessLog{Path: "/dev/stdout"}
	meshTrace := &config.Tracing{SamplePercent: 10, Collector: "verge-otlp", ServiceName: "web.default"}
	web := &config.ListenerTelemetry{AccessLog: meshLog, Tracing: meshTrace, Service: "web.default"}
	webTCP := &config.ListenerTelemetry{AccessLog: meshLog, Service: "web.default"}
	checkout := &config.ListenerTelemetry{AccessLog: &config.AccessLog{Path: "/var/log/checkout.json"},
		Tracing:         &config.Tracing{SamplePercent: 100, Collector: "verge-otlp", ServiceName: "checkout.default"},
		MetricsDisabled: true, Service: "checkout.default"}
	checkoutTCP := &config.ListenerTelemetry{AccessLog: checkout.AccessLog, MetricsDisabled: true, Service: "checkout.default"}
	tests := []struct {
		workload  string
		want      map[string]*config.ListenerTelemetry
		collector string // the collector cluster's endpoint, "" for none
	}{
		{"web-1", map[string]*config.ListenerTelemetry{
			"inbound:8080": web, "outbound:8001": web, "outbound:8002": webTCP, translate.HTTPProxyListener: web,
		}, "127.0.0.1:4317"},
		{"checkout-1", map[string]*config.ListenerTelemetry{
			"inbound:8080": checkout, "inbound:5432": checkoutTCP,
		}, "otel.observability:4317"},
		{"old-1", map[string]*config.ListenerTelemetry{
			"inbound:8080": {MetricsDisabled: true},
		}, ""},
	}
	for _, mtls := range []bool{false, true} {
		m.MTLS = mtls
		ix := translate.NewIndex(m)
		for _, tt := range tests {
			res := ix.ForWorkload(byName[tt.workload])
			snap, err := Build(res.Listeners, res.Routes, res.Clusters, res.Endpoints, res.Secrets)
			if err != nil {
				t.Fatalf("%s (mtls %v): Build: %v", tt.workload, mtls, err)
			}
			got := map[string]*config.ListenerTelemetry{}
			for _, l := range snap.Listeners {
				got[l.Name] = l.Telemetry
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s (mtls %v): telemetry (-want +got):\n%s", tt.workload, mtls, diff)
			}
			c := snap.Clusters[translate.CollectorCluster]
			switch {
			case tt.collector == "" && c != nil:
				t.Errorf("%s: unexpected collector cluster", tt.workload)
			case tt.collector != "" && (c == nil || len(c.Endpoints) != 1 || c.Endpoints[0].Address != tt.collector || c.Protocol != config.UpstreamHTTP2):
				t.Errorf("%s: collector cluster %+v, want one HTTP/2 endpoint %s", tt.workload, c, tt.collector)
			}
		}
	}
}

// tcpExtra is the error lines for HTTP-only keys in a TCP access log.
func tcpExtra(keys ...string) string {
	var b strings.Builder
	for _, k := range keys {
		b.WriteString("\nfilter_chains[0].filters[0].typed_config.access_log[0].typed_config.log_format.json_format[\"" + k + "\"]: unsupported")
	}
	return b.String()
}

func TestTelemetryNACK(t *testing.T) {
	jsonFormat := func(http bool, edit func(map[string]*structpb.Value)) *structpb.Struct {
		fields := map[string]*structpb.Value{}
		for _, f := range telemetry.AccessLogFields {
			v := f.TCP
			if http {
				v = f.HTTP
			}
			if f.Key == "direction" {
				v = "inbound"
			}
			if v != "" {
				fields[f.Key] = structpb.NewStringValue(v)
			}
		}
		if edit != nil {
			edit(fields)
		}
		return &structpb.Struct{Fields: fields}
	}
	fileLog := func(fl *filev3.FileAccessLog) []*accesslogv3.AccessLog {
		return []*accesslogv3.AccessLog{{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(fl)}}}
	}
	format := func(http bool, edit func(map[string]*structpb.Value)) *filev3.FileAccessLog {
		return &filev3.FileAccessLog{Path: "/dev/stdout", AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: jsonFormat(http, edit)},
		}}}
	}
	otel := func(o *tracev3.OpenTelemetryConfig) *hcmv3.HttpConnectionManager_Tracing {
		return &hcmv3.HttpConnectionManager_Tracing{
			RandomSampling: &typev3.Percent{Value: 5},
			Provider:       &tracev3.Tracing_Http{Name: "envoy.tracers.opentelemetry", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: mustAny(o)}},
		}
	}
	envoyGRPC := &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "verge-otlp"}}}
	http := func(edit func(*hcmv3.HttpConnectionManager)) *listenerv3.Listener {
		l := httpListener("inbound:8080", 15006, "r")
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		edit(hcm)
		l.FilterChains[0].Filters[0] = hcmFilter(hcm)
		return l
	}
	tcp := func(logs []*accesslogv3.AccessLog) *listenerv3.Listener {
		l := tcpListener("inbound:5432", 15432, "c")
		tp := &tcpproxyv3.TcpProxy{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
			t.Fatal(err)
		}
		tp.AccessLog = logs
		l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}
		return l
	}
	withMetadata := func(fields map[string]*structpb.Value) *listenerv3.Listener {
		l := httpListener("inbound:8080", 15006, "r")
		l.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"verge.telemetry": {Fields: fields}}}
		return l
	}
	const hcmPath = `listener "inbound:8080": filter_chains[0].filters[0].typed_config`
	tests := []struct {
		name string
		l    *listenerv3.Listener
		want string
	}{
		{"two access logs", http(func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = append(fileLog(format(true, nil)), fileLog(format(true, nil))...)
		}), hcmPath + `.access_log: at most 1 access logger is supported, got 2`},
		{"access log filter", http(func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = fileLog(format(true, nil))
			h.AccessLog[0].Filter = &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_NotHealthCheckFilter{NotHealthCheckFilter: &accesslogv3.NotHealthCheckFilter{}}}
		}), hcmPath + `.access_log[0].filter: unsupported`},
		{"not a file logger", http(func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = []*accesslogv3.AccessLog{{Name: "x", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&wrapperspb.StringValue{})}}}
		}), hcmPath + `.access_log[0].typed_config: unsupported type "type.googleapis.com/google.protobuf.StringValue", want envoy.extensions.access_loggers.file.v3.FileAccessLog`},
		{"text format", http(func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = fileLog(&filev3.FileAccessLog{Path: "/dev/stdout", AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "%START_TIME%"}}},
			}}})
		}), hcmPath + `.access_log[0].typed_config.log_format.text_format_source: unsupported`},
		{"no format", http(func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = fileLog(&filev3.FileAccessLog{Path: "/dev/stdout"})
		}), hcmPath + `.access_log[0].typed_config.log_format: required (the proxy writes JSON only)`},
		{"extra key and wrong operator", http(func(h *hcmv3.HttpConnectionManager) {
			h.AccessLog = fileLog(format(true, func(f map[string]*structpb.Value) {
				f["x"] = structpb.NewStringValue("%PROTOCOL%")
				f["status"] = structpb.NewStringValue("%RESPONSE_CODE_DETAILS%")
				delete(f, "route")
				f["direction"] = structpb.NewStringValue("sideways")
			}))
		}), hcmPath + `.access_log[0].typed_config.log_format.json_format["direction"]: want "inbound" or "outbound", got "sideways"` + "\n" +
			`.access_log[0].typed_config.log_format.json_format["status"]: want "%RESPONSE_CODE%"` + "\n" +
			`.access_log[0].typed_config.log_format.json_format["route"]: required` + "\n" +
			`.access_log[0].typed_config.log_format.json_format["x"]: unsupported`},
		{"http format on tcp", tcp(fileLog(format(true, nil))),
			`listener "inbound:5432": filter_chains[0].filters[0].typed_config.access_log[0].typed_config.log_format.json_format["protocol"]: want "tcp"` +
				tcpExtra("authority", "grpc_status", "method", "path", "request_id", "retries", "route", "status", "trace_id", "user_agent")},
		{"client sampling", http(func(h *hcmv3.HttpConnectionManager) {
			h.Tracing = otel(&tracev3.OpenTelemetryConfig{GrpcService: envoyGRPC})
			h.Tracing.ClientSampling = &typev3.Percent{Value: 1}
		}), hcmPath + `.tracing.client_sampling: unsupported`},
		{"no provider", http(func(h *hcmv3.HttpConnectionManager) {
			h.Tracing = &hcmv3.HttpConnectionManager_Tracing{}
		}), hcmPath + `.tracing.provider: required`},
		{"zipkin", http(func(h *hcmv3.HttpConnectionManager) {
			h.Tracing = otel(nil)
			h.Tracing.Provider.ConfigType = &tracev3.Tracing_Http_TypedConfig{TypedConfig: mustAny(&tracev3.ZipkinConfig{CollectorCluster: "z", CollectorEndpoint: "/api"})}
		}), hcmPath + `.tracing.provider.typed_config: unsupported type "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig", want envoy.config.trace.v3.OpenTelemetryConfig`},
		{"otlp over http", http(func(h *hcmv3.HttpConnectionManager) {
			h.Tracing = otel(&tracev3.OpenTelemetryConfig{HttpService: &corev3.HttpService{HttpUri: &corev3.HttpUri{Uri: "http://c/v1/traces",
				HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: "c"}, Timeout: durationpb.New(time.Second)}}})
		}), hcmPath + `.tracing.provider.typed_config.http_service: unsupported`},
		{"google grpc", http(func(h *hcmv3.HttpConnectionManager) {
			h.Tracing = otel(&tracev3.OpenTelemetryConfig{GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{
				GoogleGrpc: &corev3.GrpcService_GoogleGrpc{TargetUri: "c:4317", StatPrefix: "otlp"}}}})
		}), hcmPath + `.tracing.provider.typed_config.grpc_service.google_grpc: unsupported`},
		{"grpc authority", http(func(h *hcmv3.HttpConnectionManager) {
			h.Tracing = otel(&tracev3.OpenTelemetryConfig{GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "verge-otlp", Authority: "otel"}}}})
		}), hcmPath + `.tracing.provider.typed_config.grpc_service.envoy_grpc.authority: unsupported`},
		{"metadata unknown key", withMetadata(map[string]*structpb.Value{"logs": structpb.NewBoolValue(true)}),
			`listener "inbound:8080": metadata.filter_metadata["verge.telemetry"].logs: unsupported`},
		{"metadata metrics not bool", withMetadata(map[string]*structpb.Value{"metrics": structpb.NewStringValue("off"), "service": structpb.NewNumberValue(1)}),
			`listener "inbound:8080": metadata.filter_metadata["verge.telemetry"].metrics: want a bool` + "\n" +
				`metadata.filter_metadata["verge.telemetry"].service: want a string`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateListener(tt.l)
			if err == nil || err.Error() != tt.want {
				t.Errorf("ValidateListener = %v\nwant %s", err, tt.want)
			}
		})
	}
}

// TestStrictDNSCluster: the collector's cluster may name its endpoint by
// host name.
func TestStrictDNSCluster(t *testing.T) {
	c := staticCluster("verge-otlp", testEndpoint{host: "otel.example", port: 4317})
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	got, _, err := convertCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Endpoints) != 1 || got.Endpoints[0].Address != "otel.example:4317" {
		t.Errorf("endpoints %+v, want otel.example:4317", got.Endpoints)
	}
	noLA := proto.Clone(c).(*clusterv3.Cluster)
	noLA.LoadAssignment = nil
	if _, _, err := convertCluster(noLA); err == nil || !strings.Contains(err.Error(), "load_assignment: required for type STRICT_DNS") {
		t.Errorf("STRICT_DNS without load_assignment: %v", err)
	}
}

// telemetrySeeds are, from telemetryMesh, checkout-1's inbound HTTP listener
// (access log, tracing, metrics off) and its collector cluster.
func telemetrySeeds(f *testing.F) (*listenerv3.Listener, *clusterv3.Cluster) {
	objs, err := v1alpha1.Decode([]byte(telemetryMesh))
	if err != nil {
		f.Fatal(err)
	}
	var m translate.Mesh
	var wl *v1alpha1.Workload
	for _, o := range objs {
		v1alpha1.Default(o)
		m.Add(o)
		if w, ok := o.(*v1alpha1.Workload); ok && w.Name == "checkout-1" {
			wl = w
		}
	}
	res := translate.NewIndex(m).ForWorkload(wl)
	var l *listenerv3.Listener
	var c *clusterv3.Cluster
	for _, x := range res.Listeners {
		if x.Name == "inbound:8080" {
			l = x
		}
	}
	for _, x := range res.Clusters {
		if x.Name == translate.CollectorCluster {
			c = x
		}
	}
	if l == nil || c == nil {
		f.Fatal("telemetry seeds: listener or collector cluster missing")
	}
	return l, c
}
