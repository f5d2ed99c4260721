package cli

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestGetTelemetries(t *testing.T) {
	url := server(t)
	const tel = `apiVersion: verge.dev/v1alpha1
kind: Telemetry
metadata: {name: ns}
spec:
  accessLog: {}
---
apiVersion: verge.dev/v1alpha1
kind: Telemetry
metadata: {name: web}
spec:
  service: web
  tracing: {samplingPercent: 12.5, collector: 127.0.0.1:4317}
  metrics: {enabled: false}
`
	if diff := cmp.Diff("telemetry/ns created\ntelemetry/web created\n",
		mustRun(t, url, tel, "apply", "-f", "-")); diff != "" {
		t.Errorf("apply (-want +got):\n%s", diff)
	}
	want := `NAME   SCOPE         ACCESSLOG     TRACING                 METRICS   AGE
ns     namespace     /dev/stdout   off                     on        5m
web    service/web   off           12.5%->127.0.0.1:4317   off       5m
`
	for _, args := range [][]string{{"get", "telemetries"}, {"get", "tel"}} {
		if diff := cmp.Diff(want, mustRun(t, url, "", args...)); diff != "" {
			t.Errorf("verge %v (-want +got):\n%s", args, diff)
		}
	}
}
