package v1alpha1

import (
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Telemetry sets what the proxies of some workloads record besides traffic:
// a JSON access log, distributed tracing exported over OTLP, and whether
// they keep the golden metrics. It is modelled on Istio's Telemetry API
// and scoped exactly as MeshTLS is:
//
//   - in namespace verge-system without spec.service: every workload of the mesh;
//   - in any other namespace without spec.service: the workloads of that namespace;
//   - with spec.service: the workloads that Service (in the same namespace) selects.
//
// The most specific Telemetry applying to a workload wins whole (service,
// then namespace, then mesh); among equally specific ones the oldest
// (creationTimestamp, then name). Sections are not merged across scopes: a
// service's Telemetry with only an access log turns off the tracing a
// mesh-wide one sets. A workload no Telemetry applies to has no access
// log, no tracing, and metrics on. Proxyless gRPC clients are not affected.
type Telemetry struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              TelemetrySpec `json:"spec"`
}

// TelemetrySpec is the desired state of a Telemetry. A section left out
// means "off" for the access log and tracing and "on" for metrics.
type TelemetrySpec struct {
	// Service, when set, names a Service in the Telemetry's namespace and
	// limits it to the workloads that service selects.
	Service   string              `json:"service,omitempty"`
	AccessLog *TelemetryAccessLog `json:"accessLog,omitempty"`
	Tracing   *TelemetryTracing   `json:"tracing,omitempty"`
	Metrics   *TelemetryMetrics   `json:"metrics,omitempty"`
}

// TelemetryAccessLog writes one JSON line per HTTP request and per TCP
// connection, on inbound and outbound listeners alike.
type TelemetryAccessLog struct {
	// Enabled defaults to true when the section is present; false turns a
	// wider scope's access log off for these workloads.
	Enabled *bool `json:"enabled,omitempty"`
	// Path is the file the proxy appends to: DefaultAccessLogPath (the
	// proxy's standard output) or another absolute path.
	Path string `json:"path,omitempty"`
}

// TelemetryTracing makes the proxies start or continue traces and export
// their spans to an OTLP/gRPC collector.
type TelemetryTracing struct {
	// SamplingPercent is the share (0 to 100) of requests without an
	// incoming sampling decision that start a sampled trace; default
	// DefaultSamplingPercent. A decision a caller made is kept.
	SamplingPercent *float64 `json:"samplingPercent,omitempty"`
	// Collector is the OTLP/gRPC collector as HOST:PORT, HOST an IP
	// address or a DNS name; required.
	Collector string `json:"collector"`
}

// TelemetryMetrics turns the proxies' golden metrics on or off.
type TelemetryMetrics struct {
	// Enabled defaults to true; false stops these workloads' proxies from
	// recording the golden metrics (for benchmarks comparing the cost).
	Enabled *bool `json:"enabled,omitempty"`
}

const (
	// DefaultAccessLogPath is the proxy's standard output.
	DefaultAccessLogPath = "/dev/stdout"
	// DefaultSamplingPercent is Istio's default sampling rate.
	DefaultSamplingPercent = 1.0
	// maxAccessLogPath is Linux's PATH_MAX.
	maxAccessLogPath = 4096
)

// AccessLogOn reports whether the spec asks for an access log.
func (s *TelemetrySpec) AccessLogOn() bool {
	return s.AccessLog != nil && (s.AccessLog.Enabled == nil || *s.AccessLog.Enabled)
}

// MetricsOn reports whether the spec keeps the golden metrics on.
func (s *TelemetrySpec) MetricsOn() bool {
	return s.Metrics == nil || s.Metrics.Enabled == nil || *s.Metrics.Enabled
}

// defaultTelemetry fills the defaults of the sections that are present.
func defaultTelemetry(t *Telemetry) {
	s := &t.Spec
	if a := s.AccessLog; a != nil {
		if a.Enabled == nil {
			a.Enabled = new(true)
		}
		if a.Path == "" {
			a.Path = DefaultAccessLogPath
		}
	}
	if tr := s.Tracing; tr != nil && tr.SamplingPercent == nil {
		tr.SamplingPercent = new(DefaultSamplingPercent)
	}
	if m := s.Metrics; m != nil && m.Enabled == nil {
		m.Enabled = new(true)
	}
}

func validateTelemetrySpec(s *TelemetrySpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.Service != "" {
		errs = append(errs, dnsLabel(p.Child("service"), s.Service)...)
	}
	if a := s.AccessLog; a != nil {
		ap := p.Child("accessLog")
		if a.Enabled == nil {
			errs = append(errs, field.Required(ap.Child("enabled"), ""))
		}
		errs = append(errs, accessLogPath(ap.Child("path"), a.Path)...)
	}
	if tr := s.Tracing; tr != nil {
		tp := p.Child("tracing")
		switch v := tr.SamplingPercent; {
		case v == nil:
			errs = append(errs, field.Required(tp.Child("samplingPercent"), ""))
		case math.IsNaN(*v) || *v < 0 || *v > 100:
			// NaN and the infinities cannot come from JSON but can from Go
			// callers; the message must not print them as numbers JSON
			// cannot carry either, so use the text form.
			errs = append(errs, field.Invalid(tp.Child("samplingPercent"), strconv.FormatFloat(*v, 'g', -1, 64), "must be between 0 and 100"))
		}
		errs = append(errs, collectorAddress(tp.Child("collector"), tr.Collector)...)
	}
	if m := s.Metrics; m != nil && m.Enabled == nil {
		errs = append(errs, field.Required(p.Child("metrics").Child("enabled"), ""))
	}
	return errs
}

// accessLogPath requires an absolute file path the proxy can open as
// written: no NUL (the kernel cuts the name there) and no line breaks (they
// would split the log line naming the file), no directory.
func accessLogPath(p *field.Path, v string) field.ErrorList {
	switch {
	case v == "":
		return field.ErrorList{field.Required(p, "")}
	case len(v) > maxAccessLogPath:
		return field.ErrorList{field.TooLong(p, "", maxAccessLogPath)}
	case strings.ContainsAny(v, "\x00\n\r"):
		return field.ErrorList{field.Invalid(p, v, "must not contain NUL or line breaks")}
	case !strings.HasPrefix(v, "/"):
		return field.ErrorList{field.Invalid(p, v, "must be an absolute path")}
	case strings.HasSuffix(v, "/"):
		return field.ErrorList{field.Invalid(p, v, "must name a file, not a directory")}
	}
	return nil
}

// collectorAddress requires HOST:PORT with HOST an IP address or a DNS
// name (IPv6 in brackets) and PORT 1 to 65535.
func collectorAddress(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "HOST:PORT of an OTLP/gRPC collector")}
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return field.ErrorList{field.Invalid(p, v, "must be HOST:PORT")}
	}
	var errs field.ErrorList
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		errs = append(errs, field.Invalid(p, v, "port must be a number between 1 and 65535"))
	}
	if _, err := netip.ParseAddr(host); err != nil {
		if host == "" {
			errs = append(errs, field.Invalid(p, v, "host is required"))
		} else if strings.Contains(v, "[") {
			errs = append(errs, field.Invalid(p, v, "bracketed host must be an IPv6 address"))
		} else {
			for _, msg := range validation.IsDNS1123Subdomain(host) {
				errs = append(errs, field.Invalid(p, v, "host: "+msg))
			}
		}
	}
	return errs
}
