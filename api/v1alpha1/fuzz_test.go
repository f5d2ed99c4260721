package v1alpha1

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// FuzzDecodeValidate feeds arbitrary bytes through Decode → Default →
// Validate. Seeds are the examples in testdata plus the corpus in
// testdata/fuzz/FuzzDecodeValidate, which every `go test` runs.
func FuzzDecodeValidate(f *testing.F) {
	files, err := filepath.Glob("testdata/*.*")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, prot: x}]}\n"))
	f.Add([]byte(`[{"apiVersion":"verge.dev/v1alpha1","kind":"Workload","metadata":{"name":"w"},"spec":{"address":"::1"}}]`))
	f.Add([]byte(`{"apiVersion":"verge.dev/v1alpha1","kind":"FaultInjection","metadata":{"name":"f"},` +
		`"spec":{"targetRef":{"name":"b"},"headers":{"x":"1"},"delay":{"duration":"1s","percent":"0.0001"},"abort":{"grpcStatus":"14","percent":"100"}}}`))
	f.Add([]byte("apiVersion: verge.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {name: b}\n" +
		"  loadBalancer: {policy: RingHash, consistentHash: {cookie: {name: c, ttl: 1s}}}\n  retry: {retryOn: [reset], baseInterval: 99999h}\n" +
		"  outlierDetection: {consecutive5xx: 0}\n  healthCheck: {tcp: {send: a}, interval: 1s, timeout: 999ms}\n" +
		"  rateLimit: {requestsPerSecond: 1, by: \"header:x\"}\n  overload: {maxConcurrent: 1, routeClasses: {r: bulk}}\n  bandwidth: {bytesPerSecond: 1024}\n"))
	f.Add([]byte(`{"apiVersion":"verge.dev/v1alpha1","kind":"Telemetry","metadata":{"name":"t","namespace":"verge-system"},` +
		`"spec":{"service":"w","accessLog":{"path":"/a\u0000b"},"tracing":{"samplingPercent":1e-300,"collector":"[::1]:4317"},"metrics":{}}}`))
	f.Add([]byte("apiVersion: verge.dev/v1alpha1\nkind: Telemetry\nmetadata: {name: t}\nspec:\n" +
		"  accessLog: {enabled: false, path: \"/x\\ny\"}\n  tracing: {samplingPercent: .nan, collector: \"h:99999\"}\n"))
	f.Add([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: b}]\n  rules:\n" +
		"  - matches: [{path: {value: /a}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n" +
		"  - filters: [{type: URLRewrite, urlRewrite: {hostname: h}}, {type: RequestMirror, requestMirror: {backendRef: {name: m, port: 1}, fraction: {numerator: 0}}}]\n" +
		"    backendRefs: [{name: b, port: 80}]\n"))

	f.Fuzz(checkDecodeValidate)
}

// roundTripEqual compares objects as their serialisation preserves them:
// metav1.Time is written with second precision (a Kubernetes convention), and
// managedFields hold raw JSON whose formatting is not preserved. Verge does
// not interpret either; both are server-managed metadata.
var roundTripEqual = []cmp.Option{
	cmpopts.EquateEmpty(),
	cmp.Comparer(func(a, b metav1.Time) bool { return a.Unix() == b.Unix() }),
	cmp.Comparer(func(a, b metav1.FieldsV1) bool {
		var va, vb any
		errA, errB := json.Unmarshal(a.Raw, &va), json.Unmarshal(b.Raw, &vb)
		return (errA == nil) == (errB == nil) && cmp.Equal(va, vb)
	}),
}

// checkDecodeValidate holds the properties FuzzDecodeValidate checks.
func checkDecodeValidate(t *testing.T, data []byte) {
	objs, err := Decode(data)
	if err != nil {
		return
	}
	again, err := Decode(data)
	if err != nil {
		t.Fatalf("second Decode failed: %v", err)
	}
	for i, obj := range objs {
		Default(obj)
		twice := again[i]
		Default(twice)
		Default(twice)
		if diff := cmp.Diff(obj, twice); diff != "" {
			t.Fatalf("Default is not idempotent (-once +twice):\n%s", diff)
		}
		if len(Validate(obj)) > 0 {
			continue
		}
		// A valid object survives encoding and decoding unchanged, so
		// what the store keeps and `verge get -o yaml` prints is what
		// was applied.
		out, err := yaml.Marshal(obj)
		if err != nil {
			t.Fatalf("Marshal valid object: %v", err)
		}
		back, err := DecodeOne(out)
		if err != nil {
			t.Fatalf("DecodeOne of a marshalled valid object: %v\n%s", err, out)
		}
		if diff := cmp.Diff(obj, back, roundTripEqual...); diff != "" {
			t.Fatalf("round trip changed the object (-before +after):\n%s\n%s", diff, out)
		}
		if errs := Validate(back); len(errs) > 0 {
			t.Fatalf("round trip made a valid object invalid: %v", errs)
		}
	}
}

// TestRoundTripText runs checkDecodeValidate on strings YAML treats
// specially, in a free-text field (an annotation) and a matched header value.
func TestRoundTripText(t *testing.T) {
	vals := []string{
		"\u2028\u2029\ufeff x\t\r\n", "null", "~", "0x10", "1e3", "yes", "y", "On", " lead", "trail ",
		"- a", "a: b", "#c", "'q'", `"`, `\`, "\n\n", "\ufffd", "\U0001F600", "<<", "2024-01-01",
		"+1", ".inf", "a\u00a0b", "\u200b", "\ue000", "\U0010FFFD", "\ufffe", "\u0085", "\x7f",
	}
	for _, v := range vals {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprintf("annotation %+q", v), func(t *testing.T) {
			checkDecodeValidate(t, []byte(`{"apiVersion":"verge.dev/v1alpha1","kind":"Service",
				"metadata":{"name":"a","annotations":{"k":`+string(b)+`}},"spec":{"ports":[{"port":80}]}}`))
		})
		t.Run(fmt.Sprintf("header %+q", v), func(t *testing.T) {
			checkDecodeValidate(t, []byte(`{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute",
				"metadata":{"name":"a"},"spec":{"parentRefs":[{"name":"b"}],"rules":[{"matches":[{"headers":[{"name":"x","value":`+
				string(b)+`}]}],"backendRefs":[{"name":"b","port":80}]}]}}`))
		})
	}
}
