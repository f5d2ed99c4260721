package v1alpha1

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func telemetryDoc(spec string) string {
	return "apiVersion: verge.dev/v1alpha1\nkind: Telemetry\nmetadata: {name: t, namespace: shop}\nspec:\n" + spec
}

func TestTelemetryValidate(t *testing.T) {
	tests := []struct {
		name string
		spec string
		want []string
	}{
		{name: "empty spec", spec: "  {}\n"},
		{name: "everything", spec: "  service: web\n  accessLog: {enabled: false, path: /tmp/a.log}\n" +
			"  tracing: {samplingPercent: 0.01, collector: \"[::1]:4317\"}\n  metrics: {enabled: false}\n"},
		{name: "dns collector", spec: "  tracing: {samplingPercent: 100, collector: otel.example.com:4317}\n"},
		{name: "percent out of range", spec: "  tracing: {samplingPercent: 100.5, collector: 127.0.0.1:4317}\n",
			want: []string{`spec.tracing.samplingPercent: Invalid value: "100.5": must be between 0 and 100`}},
		{name: "negative percent", spec: "  tracing: {samplingPercent: -1, collector: 127.0.0.1:4317}\n",
			want: []string{`spec.tracing.samplingPercent: Invalid value: "-1": must be between 0 and 100`}},
		{name: "tracing without collector", spec: "  tracing: {samplingPercent: 5}\n",
			want: []string{`spec.tracing.collector: Required value: HOST:PORT of an OTLP/gRPC collector`}},
		{name: "collector without port", spec: "  tracing: {collector: 127.0.0.1}\n",
			want: []string{`spec.tracing.collector: Invalid value: "127.0.0.1": must be HOST:PORT`}},
		{name: "collector port out of range", spec: "  tracing: {collector: \"127.0.0.1:65536\"}\n",
			want: []string{`spec.tracing.collector: Invalid value: "127.0.0.1:65536": port must be a number between 1 and 65535`}},
		{name: "collector port zero", spec: "  tracing: {collector: \"127.0.0.1:0\"}\n",
			want: []string{`spec.tracing.collector: Invalid value: "127.0.0.1:0": port must be a number between 1 and 65535`}},
		{name: "collector port name", spec: "  tracing: {collector: \"collector:otlp\"}\n",
			want: []string{`spec.tracing.collector: Invalid value: "collector:otlp": port must be a number between 1 and 65535`}},
		{name: "collector without host", spec: "  tracing: {collector: \":4317\"}\n",
			want: []string{`spec.tracing.collector: Invalid value: ":4317": host is required`}},
		{name: "collector bad host", spec: "  tracing: {collector: \"Bad_Host:4317\"}\n",
			want: []string{`spec.tracing.collector: Invalid value: "Bad_Host:4317": host: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`}},
		{name: "collector bracketed name", spec: "  tracing: {collector: \"[collector]:4317\"}\n",
			want: []string{`spec.tracing.collector: Invalid value: "[collector]:4317": bracketed host must be an IPv6 address`}},
		{name: "relative path", spec: "  accessLog: {path: logs/access.json}\n",
			want: []string{`spec.accessLog.path: Invalid value: "logs/access.json": must be an absolute path`}},
		{name: "directory path", spec: "  accessLog: {path: /var/log/}\n",
			want: []string{`spec.accessLog.path: Invalid value: "/var/log/": must name a file, not a directory`}},
		{name: "path with newline", spec: "  accessLog: {path: \"/tmp/a\\nb\"}\n",
			want: []string{`spec.accessLog.path: Invalid value: "/tmp/a\nb": must not contain NUL or line breaks`}},
		{name: "path with NUL", spec: "  accessLog: {path: \"/tmp/a\\0b\"}\n",
			want: []string{
				`spec.accessLog.path: Invalid value: "/tmp/a\x00b": must not contain NUL or line breaks`,
				`spec.accessLog.path: Invalid value: "/tmp/a\x00b": must not contain control characters`,
			}},
		{name: "path too long", spec: "  accessLog: {path: /" + strings.Repeat("a", 4096) + "}\n",
			want: []string{`spec.accessLog.path: Too long: may not be more than 4096 bytes`}},
		{name: "bad service", spec: "  service: Web\n",
			want: []string{`spec.service: Invalid value: "Web": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := decodeOne(t, telemetryDoc(tt.spec))
			Default(obj)
			if diff := cmp.Diff(tt.want, errorStrings(Validate(obj))); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTelemetryValidateGo covers what only Go callers can build: values JSON
// cannot carry and sections Default did not fill.
func TestTelemetryValidateGo(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		tel := &Telemetry{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "shop"},
			Spec: TelemetrySpec{Tracing: &TelemetryTracing{SamplingPercent: &v, Collector: "127.0.0.1:4317"}}}
		Default(tel)
		errs := Validate(tel)
		if len(errs) != 1 || errs[0].Field != "spec.tracing.samplingPercent" || errs[0].Type != field.ErrorTypeInvalid {
			t.Errorf("samplingPercent %v: got %v, want one Invalid spec.tracing.samplingPercent", v, errs)
		}
	}
	tel := &Telemetry{TypeMeta: metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Telemetry"},
		ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "shop"},
		Spec:       TelemetrySpec{AccessLog: &TelemetryAccessLog{}, Tracing: &TelemetryTracing{Collector: "a:1"}, Metrics: &TelemetryMetrics{}}}
	want := []string{
		`spec.accessLog.enabled: Required value`,
		`spec.accessLog.path: Required value`,
		`spec.tracing.samplingPercent: Required value`,
		`spec.metrics.enabled: Required value`,
	}
	if diff := cmp.Diff(want, errorStrings(Validate(tel))); diff != "" {
		t.Errorf("Validate without Default (-want +got):\n%s", diff)
	}
}

func TestTelemetryDefault(t *testing.T) {
	obj := decodeOne(t, telemetryDoc("  accessLog: {}\n  tracing: {collector: 127.0.0.1:4317}\n  metrics: {}\n"))
	Default(obj)
	want := &Telemetry{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Telemetry"},
		ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "shop"},
		Spec: TelemetrySpec{
			AccessLog: &TelemetryAccessLog{Enabled: new(true), Path: "/dev/stdout"},
			Tracing:   &TelemetryTracing{SamplingPercent: new(1.0), Collector: "127.0.0.1:4317"},
			Metrics:   &TelemetryMetrics{Enabled: new(true)},
		},
	}
	if diff := cmp.Diff(want, obj); diff != "" {
		t.Errorf("Default (-want +got):\n%s", diff)
	}
	tel := obj.(*Telemetry)
	if !tel.Spec.AccessLogOn() || !tel.Spec.MetricsOn() {
		t.Errorf("AccessLogOn %v MetricsOn %v, want both true", tel.Spec.AccessLogOn(), tel.Spec.MetricsOn())
	}
	empty := decodeOne(t, telemetryDoc("  {}\n")).(*Telemetry)
	Default(empty)
	if empty.Spec.AccessLog != nil || empty.Spec.Tracing != nil || empty.Spec.Metrics != nil {
		t.Errorf("Default filled absent sections: %+v", empty.Spec)
	}
	if empty.Spec.AccessLogOn() || !empty.Spec.MetricsOn() {
		t.Errorf("empty spec: AccessLogOn %v MetricsOn %v, want false, true", empty.Spec.AccessLogOn(), empty.Spec.MetricsOn())
	}
}

func TestTelemetryKind(t *testing.T) {
	for _, name := range []string{"telemetries", "tel", "Telemetry"} {
		if k, ok := KindByName(name); !ok || k.Kind != "Telemetry" {
			t.Errorf("KindByName(%q) = %q, %v", name, k.Kind, ok)
		}
	}
	if k, ok := KindOf(&Telemetry{}); !ok || k.Plural != "telemetries" {
		t.Errorf("KindOf(Telemetry) = %q, %v", k.Plural, ok)
	}
	if _, err := Decode([]byte(telemetryDoc("  tracing: {collector: a:1, rate: 5}\n"))); err == nil ||
		!strings.Contains(err.Error(), `spec.tracing: unknown field "rate"`) {
		t.Errorf("Decode with an unknown field: %v", err)
	}
}
