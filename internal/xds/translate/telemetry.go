package translate

import (
	"cmp"
	"net"
	"net/netip"
	"strconv"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/telemetry"
)

// Telemetry (docs/xds-telemetry.md is the field-by-field contract). The
// Telemetry applying to a Verge proxy's workload (scoped as MeshTLS is,
// scope.go) shapes every listener ForWorkload returns; proxyless clients
// get none of it:
//
//   - access log: the HTTP connection manager's access_log, and the TCP
//     proxy's, is one envoy.access_loggers.file whose log_format is a
//     json_format naming the fields the Verge proxy writes (telemetry.AccessLogFields);
//   - tracing: the HTTP connection manager's tracing with random_sampling
//     and the envoy.tracers.opentelemetry provider, exporting over gRPC to
//     the cluster CollectorCluster (STATIC for an IP collector, STRICT_DNS
//     for a name; HTTP/2), which the proxy's CDS then carries; the
//     listener's traffic_direction tells Envoy the span kind;
//   - the listener's metadata filter_metadata "verge.telemetry" carries
//     "service" ("NAME.NS" of the first service selecting the workload,
//     the label of its metrics; on every listener of a selected workload,
//     Telemetry or not) and, when a Telemetry turns metrics off,
//     "metrics": false. Envoy has no per-listener switch for its
//     statistics; metadata is where Envoy lets a control plane tell its
//     own extensions something, and Envoy itself ignores it.
const (
	// CollectorCluster is the cluster of the OTLP/gRPC trace collector.
	CollectorCluster = "verge-otlp"
	// OpenTelemetryTracer is the HCM tracing provider's name.
	OpenTelemetryTracer = "envoy.tracers.opentelemetry"
	// TelemetryMetadataKey is the listener filter_metadata namespace of
	// Verge's telemetry switches; TelemetryMetricsKey its boolean field.
	TelemetryMetadataKey = "verge.telemetry"
	TelemetryMetricsKey  = "metrics"
	TelemetryServiceKey  = "service"
)

// Listener directions, as the access log's "direction" field writes them.
const (
	directionInbound  = "inbound"
	directionOutbound = "outbound"
)

// telemetryIndex is what NewIndex prepares for Telemetry: the objects by
// scope and, per object, its access loggers (shared by every workload it
// applies to).
type telemetryIndex struct {
	scopes scoped[*v1alpha1.Telemetry]
	logs   map[*v1alpha1.Telemetry]*accessLogs
}

// accessLogs are one Telemetry's access loggers by listener kind and
// direction.
type accessLogs struct {
	httpIn, httpOut, tcpIn, tcpOut []*accesslogv3.AccessLog
}

func newTelemetryIndex(ts []*v1alpha1.Telemetry) telemetryIndex {
	t := telemetryIndex{
		scopes: newScoped(ts, func(t *v1alpha1.Telemetry) string { return t.Spec.Service }),
		logs:   map[*v1alpha1.Telemetry]*accessLogs{},
	}
	for _, tel := range ts {
		if !tel.Spec.AccessLogOn() {
			continue
		}
		p := tel.Spec.AccessLog.Path
		t.logs[tel] = &accessLogs{
			httpIn:  fileAccessLog(p, true, directionInbound),
			httpOut: fileAccessLog(p, true, directionOutbound),
			tcpIn:   fileAccessLog(p, false, directionInbound),
			tcpOut:  fileAccessLog(p, false, directionOutbound),
		}
	}
	return t
}

// fileAccessLog is an envoy.access_loggers.file writing the json_format of
// telemetry.AccessLogFields for an HTTP or TCP listener of the given direction.
func fileAccessLog(path string, http bool, direction string) []*accesslogv3.AccessLog {
	fields := make(map[string]*structpb.Value, len(telemetry.AccessLogFields))
	for _, f := range telemetry.AccessLogFields {
		v := f.TCP
		if http {
			v = f.HTTP
		}
		if f.Key == "direction" {
			v = direction
		}
		if v != "" {
			fields[f.Key] = structpb.NewStringValue(v)
		}
	}
	return []*accesslogv3.AccessLog{{
		Name: wellknown.FileAccessLog,
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&filev3.FileAccessLog{
			Path: path,
			AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: &structpb.Struct{Fields: fields}},
			}},
		})},
	}}
}

// workloadTelemetry is what the Telemetry applying to one workload puts on
// its listeners and clusters. A nil *workloadTelemetry adds nothing.
type workloadTelemetry struct {
	logs      *accessLogs
	tracing   *hcmv3.HttpConnectionManager_Tracing
	collector *clusterv3.Cluster
	metadata  *corev3.Metadata
}

// listenerTelemetry is a workloadTelemetry for one listener direction. Its
// methods are no-ops on nil.
type listenerTelemetry struct {
	httpLog, tcpLog []*accesslogv3.AccessLog
	tracing         *hcmv3.HttpConnectionManager_Tracing
	metadata        *corev3.Metadata
	direction       corev3.TrafficDirection
}

// telemetryFor resolves the Telemetry applying to wl; nil when it changes
// nothing (no access log, no tracing, metrics on) and no service selects
// wl. The service is "NAME.NS" of the first service selecting wl; the
// tracer's service.name is that, else "NAME.NS" of wl itself.
func (ix *Index) telemetryFor(wl *v1alpha1.Workload, selecting []*serviceInfo) *workloadTelemetry {
	service := ""
	if len(selecting) > 0 {
		service = selecting[0].name + "." + selecting[0].ns
	}
	tel, ok := ix.telemetry.scopes.resolve(wl.Namespace, selecting)
	if !ok {
		return serviceOnly(service)
	}
	wt := &workloadTelemetry{logs: ix.telemetry.logs[tel]}
	if tr := tel.Spec.Tracing; tr != nil {
		name := cmp.Or(service, wl.Name+"."+wl.Namespace)
		pct := v1alpha1.DefaultSamplingPercent
		if tr.SamplingPercent != nil {
			pct = *tr.SamplingPercent
		}
		wt.tracing = &hcmv3.HttpConnectionManager_Tracing{
			RandomSampling: &typev3.Percent{Value: pct},
			Provider: &tracev3.Tracing_Http{
				Name: OpenTelemetryTracer,
				ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: mustAny(&tracev3.OpenTelemetryConfig{
					GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: CollectorCluster},
					}},
					ServiceName: name,
				})},
			},
		}
		wt.collector = ix.collectorCluster(tr.Collector)
	}
	wt.metadata = telemetryMetadata(service, tel.Spec.MetricsOn())
	if wt.logs == nil && wt.tracing == nil && wt.metadata == nil {
		return nil
	}
	return wt
}

// serviceOnly is the telemetry of a workload no Telemetry applies to.
func serviceOnly(service string) *workloadTelemetry {
	if service == "" {
		return nil
	}
	return &workloadTelemetry{metadata: telemetryMetadata(service, true)}
}

// telemetryMetadata is the listeners' "verge.telemetry" metadata; nil when
// it would be empty.
func telemetryMetadata(service string, metrics bool) *corev3.Metadata {
	fields := map[string]*structpb.Value{}
	if service != "" {
		fields[TelemetryServiceKey] = structpb.NewStringValue(service)
	}
	if !metrics {
		fields[TelemetryMetricsKey] = structpb.NewBoolValue(false)
	}
	if len(fields) == 0 {
		return nil
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{TelemetryMetadataKey: {Fields: fields}}}
}

// collectorCluster is CollectorCluster reaching addr (validated HOST:PORT):
// STATIC for an IP address, STRICT_DNS for a name; HTTP/2 for gRPC.
func (ix *Index) collectorCluster(addr string) *clusterv3.Cluster {
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.ParseUint(portStr, 10, 16)
	typ := clusterv3.Cluster_STRICT_DNS
	if _, err := netip.ParseAddr(host); err == nil {
		typ = clusterv3.Cluster_STATIC
	}
	return &clusterv3.Cluster{
		Name:                          CollectorCluster,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:                durationpb.New(connectTimeout),
		LbPolicy:                      clusterv3.Cluster_ROUND_ROBIN,
		TypedExtensionProtocolOptions: ix.h2Options,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: CollectorCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(host, int32(port)),
					}},
				}},
			}},
		},
	}
}

// listener returns the telemetry of one listener of the given direction.
func (wt *workloadTelemetry) listener(direction string) *listenerTelemetry {
	if wt == nil {
		return nil
	}
	lt := &listenerTelemetry{tracing: wt.tracing, metadata: wt.metadata, direction: corev3.TrafficDirection_OUTBOUND}
	if direction == directionInbound {
		lt.direction = corev3.TrafficDirection_INBOUND
	}
	if l := wt.logs; l != nil {
		lt.httpLog, lt.tcpLog = l.httpOut, l.tcpOut
		if direction == directionInbound {
			lt.httpLog, lt.tcpLog = l.httpIn, l.tcpIn
		}
	}
	return lt
}

// addCollector adds the collector cluster when tracing is on.
func (wt *workloadTelemetry) addCollector(b *collector) {
	if wt != nil && wt.collector != nil {
		b.cluster(wt.collector, nil)
	}
}

func (lt *listenerTelemetry) hcm(m *hcmv3.HttpConnectionManager) {
	if lt == nil {
		return
	}
	m.AccessLog = lt.httpLog
	m.Tracing = lt.tracing
}

func (lt *listenerTelemetry) tcp(p *tcpv3.TcpProxy) {
	if lt == nil {
		return
	}
	p.AccessLog = lt.tcpLog
}

// apply sets l's metadata and, with tracing, its traffic_direction (which
// Envoy's tracer reads for the span kind).
func (lt *listenerTelemetry) apply(l *listenerv3.Listener) {
	if lt == nil {
		return
	}
	l.Metadata = lt.metadata
	if lt.tracing != nil {
		l.TrafficDirection = lt.direction
	}
}

// tracingCluster is the cluster m's tracer exports to, "" for none; for
// Resources.Validate, which requires it to be present.
func tracingCluster(m *hcmv3.HttpConnectionManager) string {
	tc := m.GetTracing().GetProvider().GetTypedConfig()
	if tc == nil {
		return ""
	}
	otel := &tracev3.OpenTelemetryConfig{}
	if tc.UnmarshalTo(otel) != nil {
		return ""
	}
	return otel.GetGrpcService().GetEnvoyGrpc().GetClusterName()
}
