package xdsclient

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/telemetry"
)

// Telemetry fields (docs/xds-telemetry.md is the contract; the control
// plane's side is internal/xds/translate/telemetry.go):
//
//   - access_log of the HTTP connection manager and of tcp_proxy: at most
//     one envoy.access_loggers.file whose log_format is exactly the
//     json_format the proxy writes (telemetry.AccessLogFields); the proxy writes its own
//     line for those keys, so any other format is refused rather than
//     silently not honoured.
//   - tracing of the HTTP connection manager: random_sampling (unset is
//     Envoy's 100%) and an envoy.tracers.opentelemetry provider exporting
//     over envoy_grpc to a cluster, with service_name.
//   - the listener's metadata filter_metadata "verge.telemetry": "service"
//     (string) and "metrics" (bool).
//
// Anything else in these fields is NACKed with its path.
const (
	telemetryMetadataKey = "verge.telemetry"
	fileAccessLogName    = "envoy.access_loggers.file"
)

// listenerTelemetry returns out.Telemetry, creating it.
func listenerTelemetry(out *config.Listener) *config.ListenerTelemetry {
	if out.Telemetry == nil {
		out.Telemetry = &config.ListenerTelemetry{}
	}
	return out.Telemetry
}

// convertListenerMetadata reads the listener's "verge.telemetry" metadata.
// Other metadata namespaces are ignored, as Envoy ignores what no
// extension reads. Errors start with a field path.
func convertListenerMetadata(l *listenerv3.Listener, out *config.Listener) error {
	md, ok := l.GetMetadata().GetFilterMetadata()[telemetryMetadataKey]
	if !ok {
		return nil
	}
	path := fmt.Sprintf("metadata.filter_metadata[%q].", telemetryMetadataKey)
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(md.GetFields())) {
		v := md.GetFields()[k]
		switch k {
		case "service":
			s, ok := v.GetKind().(*structpb.Value_StringValue)
			if !ok {
				errs = append(errs, fmt.Errorf("%sservice: want a string", path))
				continue
			}
			listenerTelemetry(out).Service = s.StringValue
		case "metrics":
			b, ok := v.GetKind().(*structpb.Value_BoolValue)
			if !ok {
				errs = append(errs, fmt.Errorf("%smetrics: want a bool", path))
				continue
			}
			if !b.BoolValue {
				listenerTelemetry(out).MetricsDisabled = true
			}
		default:
			errs = append(errs, fmt.Errorf("%s%s: unsupported", path, k))
		}
	}
	return errors.Join(errs...)
}

// convertHCMTelemetry reads the connection manager's access_log and
// tracing. Errors start with "." (they follow "typed_config").
func convertHCMTelemetry(hcm *hcmv3.HttpConnectionManager, out *config.Listener) error {
	if err := convertAccessLogs(hcm.GetAccessLog(), true, out, ".access_log"); err != nil {
		return err
	}
	tr := hcm.GetTracing()
	if tr == nil {
		return nil
	}
	t, err := convertTracing(tr, ".tracing.")
	if err != nil {
		return err
	}
	listenerTelemetry(out).Tracing = t
	return nil
}

// convertAccessLogs reads at most one file access log (path names the
// access_log field). http selects the HTTP or the TCP format.
func convertAccessLogs(logs []*accesslogv3.AccessLog, http bool, out *config.Listener, path string) error {
	switch len(logs) {
	case 0:
		return nil
	case 1:
	default:
		return fmt.Errorf("%s: at most 1 access logger is supported, got %d", path, len(logs))
	}
	path += "[0]."
	al := logs[0]
	if err := onlyFields(al, path, "name", "typed_config"); err != nil {
		return err
	}
	if al.GetTypedConfig() == nil {
		return fmt.Errorf("%styped_config: required", path)
	}
	f := &filev3.FileAccessLog{}
	if err := unpackAny(al.GetTypedConfig(), f, path+"typed_config."); err != nil {
		return err
	}
	path += "typed_config."
	if err := onlyFields(f, path, "path", "log_format"); err != nil {
		return err
	}
	if f.GetPath() == "" {
		return fmt.Errorf("%spath: required", path)
	}
	lf := f.GetLogFormat()
	if lf == nil {
		return fmt.Errorf("%slog_format: required (the proxy writes JSON only)", path)
	}
	if err := onlyFields(lf, path+"log_format.", "json_format"); err != nil {
		return err
	}
	if err := checkLogFormat(lf.GetJsonFormat().GetFields(), http, path+"log_format.json_format"); err != nil {
		return err
	}
	listenerTelemetry(out).AccessLog = &config.AccessLog{Path: f.GetPath()}
	return nil
}

// checkLogFormat requires exactly the keys and values of telemetry.AccessLogFields for
// the listener kind.
func checkLogFormat(fields map[string]*structpb.Value, http bool, path string) error {
	var errs []error
	known := map[string]bool{}
	for _, f := range telemetry.AccessLogFields {
		want := f.TCP
		if http {
			want = f.HTTP
		}
		if f.Key != "direction" && want == "" {
			continue
		}
		known[f.Key] = true
		v, ok := fields[f.Key]
		if !ok {
			errs = append(errs, fmt.Errorf("%s[%q]: required", path, f.Key))
			continue
		}
		got := v.GetStringValue()
		if f.Key == "direction" {
			if got != "inbound" && got != "outbound" {
				errs = append(errs, fmt.Errorf("%s[%q]: want \"inbound\" or \"outbound\", got %q", path, f.Key, got))
			}
			continue
		}
		if _, isString := v.GetKind().(*structpb.Value_StringValue); !isString || got != want {
			errs = append(errs, fmt.Errorf("%s[%q]: want %q", path, f.Key, want))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !known[k] {
			errs = append(errs, fmt.Errorf("%s[%q]: unsupported", path, k))
		}
	}
	return errors.Join(errs...)
}

// convertTracing reads random_sampling and an OpenTelemetry provider
// exporting through an envoy_grpc cluster. path ends in ".".
func convertTracing(tr *hcmv3.HttpConnectionManager_Tracing, path string) (*config.Tracing, error) {
	if err := onlyFields(tr, path, "random_sampling", "provider"); err != nil {
		return nil, err
	}
	out := &config.Tracing{SamplePercent: 100}
	if rs := tr.GetRandomSampling(); rs != nil {
		// PGV has checked 0 <= value <= 100 (and NaN fails both bounds).
		out.SamplePercent = rs.GetValue()
	}
	p := tr.GetProvider()
	if p == nil {
		return nil, fmt.Errorf("%sprovider: required", path)
	}
	path += "provider."
	if err := onlyFields(p, path, "name", "typed_config"); err != nil {
		return nil, err
	}
	if p.GetTypedConfig() == nil {
		return nil, fmt.Errorf("%styped_config: required", path)
	}
	otel := &tracev3.OpenTelemetryConfig{}
	if err := unpackAny(p.GetTypedConfig(), otel, path+"typed_config."); err != nil {
		return nil, err
	}
	path += "typed_config."
	if err := onlyFields(otel, path, "grpc_service", "service_name"); err != nil {
		return nil, err
	}
	gs := otel.GetGrpcService()
	if gs == nil {
		return nil, fmt.Errorf("%sgrpc_service: required", path)
	}
	if err := onlyFields(gs, path+"grpc_service.", "envoy_grpc"); err != nil {
		return nil, err
	}
	eg := gs.GetEnvoyGrpc()
	if eg == nil {
		return nil, fmt.Errorf("%sgrpc_service.envoy_grpc: required", path)
	}
	if err := onlyFields(eg, path+"grpc_service.envoy_grpc.", "cluster_name"); err != nil {
		return nil, err
	}
	out.Collector = eg.GetClusterName()
	out.ServiceName = otel.GetServiceName()
	return out, nil
}
