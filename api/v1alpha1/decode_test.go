package v1alpha1

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ids names decoded objects by kind, namespace and name, which is what the
// stream-level tests care about.
func ids(objs []Object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetObjectKind().GroupVersionKind().Kind+" "+o.GetNamespace()+"/"+o.GetName())
	}
	return out
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "yaml multi-document with empty and comment-only documents",
			in: `---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
# nothing here
---

...
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: x}
spec: {}
--- # trailing comment
`,
			want: []string{"Service /a", "HTTPRoute x/r"},
		},
		{
			name: "crlf line endings",
			in:   "apiVersion: verge.dev/v1alpha1\r\nkind: Workload\r\nmetadata:\r\n  name: w\r\nspec:\r\n  address: 10.0.0.1\r\n---\r\napiVersion: verge.dev/v1alpha1\r\nkind: Workload\r\nmetadata:\r\n  name: v\r\nspec:\r\n  address: 10.0.0.2\r\n",
			want: []string{"Workload /w", "Workload /v"},
		},
		{
			name: "json object",
			in:   `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}}`,
			want: []string{"Service /a"},
		},
		{
			name: "json stream",
			in: `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[]}}
{"apiVersion":"verge.dev/v1alpha1","kind":"Workload","metadata":{"name":"b"},"spec":{"address":""}}`,
			want: []string{"Service /a", "Workload /b"},
		},
		{
			name: "json array",
			in:   `[{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[]}}, null]`,
			want: []string{"Service /a"},
		},
		{
			name: "yaml flow mapping is not json",
			in:   `{apiVersion: verge.dev/v1alpha1, kind: Service, metadata: {name: a}, spec: {ports: []}}`,
			want: []string{"Service /a"},
		},
		{
			name: "list",
			in: `apiVersion: v1
kind: List
items:
- apiVersion: verge.dev/v1alpha1
  kind: Service
  metadata: {name: a}
  spec: {ports: []}
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {name: g}
`,
			want: []string{"Service /a", "GRPCRoute /g"},
		},
		{name: "empty", in: "", want: nil},
		{name: "only comments", in: "# hello\n---\n# world\n", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(tt.want, ids(objs)); diff != "" {
				t.Errorf("Decode objects (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeFields(t *testing.T) {
	in := `apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: backend
  labels: {app: backend}
spec:
  ports:
  - name: web
    port: 8080
    protocol: HTTP2
    targetPort: 80
  selector: {app: backend}
`
	got, err := DecodeOne([]byte(in))
	if err != nil {
		t.Fatalf("DecodeOne: %v", err)
	}
	want := &Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "backend", Labels: map[string]string{"app": "backend"}},
		Spec: ServiceSpec{
			Ports:    []ServicePort{{Name: "web", Port: 8080, Protocol: ProtocolHTTP2, TargetPort: 80}},
			Selector: map[string]string{"app": "backend"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DecodeOne (-want +got):\n%s", diff)
	}
}

func TestDecodeDestinationPolicy(t *testing.T) {
	in := `apiVersion: verge.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: backend-lb, namespace: default}
spec:
  targetRef: {kind: Service, name: backend, port: 80}
  loadBalancer:
    policy: LeastRequest
`
	got, err := DecodeOne([]byte(in))
	if err != nil {
		t.Fatalf("DecodeOne: %v", err)
	}
	want := &DestinationPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "DestinationPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "backend-lb", Namespace: "default"},
		Spec: DestinationPolicySpec{
			TargetRef:    PolicyTargetReference{Kind: "Service", Name: "backend", Port: 80},
			LoadBalancer: &LoadBalancer{Policy: LoadBalancerLeastRequest},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DecodeOne (-want +got):\n%s", diff)
	}
	// Strict: a misspelt field is an error naming its place.
	_, err = DecodeOne([]byte(in + "  circuitBreakers: {}\n"))
	if err == nil || !strings.Contains(err.Error(), `spec: unknown field "circuitBreakers"`) {
		t.Errorf("DecodeOne with an unknown section: %v, want spec: unknown field", err)
	}
	for _, name := range []string{"destinationpolicies", "dp", "DestinationPolicy"} {
		if k, ok := KindByName(name); !ok || k.Kind != "DestinationPolicy" {
			t.Errorf("KindByName(%q) = %q, %v", name, k.Kind, ok)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	const svc = "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n"
	tests := []struct {
		name    string
		in      string
		wantDoc int
		want    string
	}{
		{
			name:    "unknown kind",
			in:      svc + "---\napiVersion: verge.dev/v1alpha1\nkind: Foo\n",
			wantDoc: 2,
			want:    `document 2: unknown kind "Foo" in apiVersion "verge.dev/v1alpha1"`,
		},
		{
			name:    "unknown field",
			in:      "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - port: 80\n    prot: TCP\n",
			wantDoc: 1,
			want:    `document 1: spec.ports[0]: unknown field "prot"`,
		},
		{
			name:    "several unknown fields",
			in:      "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a, nmae: b}\nsepc: {}\n",
			wantDoc: 1,
			want:    "document 1: metadata: unknown field \"nmae\"\nunknown field \"sepc\"",
		},
		{
			name:    "field in the wrong case",
			in:      "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {Ports: []}\n",
			wantDoc: 1,
			want:    `document 1: spec: unknown field "Ports"`,
		},
		{
			name:    "duplicate yaml key",
			in:      svc + "---\n" + svc + "---\napiVersion: verge.dev/v1alpha1\nkind: Service\nkind: Service\n",
			wantDoc: 3,
			want:    `document 3: yaml: unmarshal errors:` + "\n" + `  line 13: key "kind" already set in map`,
		},
		{
			name:    "duplicate json key",
			in:      `{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":"a","name":"b"}}`,
			wantDoc: 1,
			want:    `document 1: metadata: duplicate field "name"`,
		},
		{
			name:    "wrong type",
			in:      "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n",
			wantDoc: 1,
			want:    `document 1: spec.ports.port: cannot unmarshal string into int32`,
		},
		{
			name:    "yaml syntax error line counts from the stream",
			in:      svc + "---\napiVersion: verge.dev/v1alpha1\nkind: Service\n  metadata: x\n",
			wantDoc: 2,
			want:    `document 2: yaml: line 8: mapping values are not allowed in this context`,
		},
		{
			name:    "yaml 1.1 boolean in a string field",
			in:      "apiVersion: verge.dev/v1alpha1\nkind: Workload\nmetadata: {name: yes}\n",
			wantDoc: 1,
			want:    `document 1: metadata.name: cannot unmarshal bool into string (quote the value)`,
		},
		{
			name:    "missing kind",
			in:      "apiVersion: verge.dev/v1alpha1\nmetadata: {name: a}\n",
			wantDoc: 1,
			want:    `document 1: kind: required`,
		},
		{
			name:    "missing apiVersion",
			in:      "kind: Service\n",
			wantDoc: 1,
			want:    `document 1: apiVersion: required`,
		},
		{
			name:    "not an object",
			in:      svc + "---\n- a\n- b\n",
			wantDoc: 2,
			want:    `document 2: not an object`,
		},
		{
			name:    "bad list item",
			in:      `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod"}]}`,
			wantDoc: 1,
			want:    `document 1: items[0]: unknown kind "Pod" in apiVersion "v1"`,
		},
		{
			name:    "content after separator",
			in:      svc + "--- {kind: Service}\n",
			wantDoc: 2,
			want:    `document 2: yaml: line 5: content after a document separator is not supported`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			de, ok := errors.AsType[*DecodeError](err)
			if !ok {
				t.Fatalf("Decode error = %v, want a *DecodeError", err)
			}
			if de.Doc != tt.wantDoc {
				t.Errorf("DecodeError.Doc = %d, want %d", de.Doc, tt.wantDoc)
			}
			if diff := cmp.Diff(tt.want, err.Error()); diff != "" {
				t.Errorf("Decode error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeOneCount(t *testing.T) {
	for _, in := range []string{"", "# none\n", "apiVersion: v1\nkind: List\nitems: []\n"} {
		if _, err := DecodeOne([]byte(in)); err == nil {
			t.Errorf("DecodeOne(%q) succeeded, want an error", in)
		}
	}
}

func TestKindOf(t *testing.T) {
	tests := []struct {
		obj  Object
		want string
	}{
		{&Service{}, "services"},
		{&Workload{}, "workloads"},
		{&HTTPRoute{}, "httproutes"},
		{&GRPCRoute{}, "grpcroutes"},
		{&DestinationPolicy{}, "destinationpolicies"},
		{&FaultInjection{}, "faultinjections"},
	}
	for _, tt := range tests {
		k, ok := KindOf(tt.obj)
		if !ok || k.Plural != tt.want {
			t.Errorf("KindOf(%T) = %q, %v; want %q", tt.obj, k.Plural, ok, tt.want)
		}
	}
	if _, ok := KindOf(&metav1.PartialObjectMetadata{}); ok {
		t.Errorf("KindOf(PartialObjectMetadata) = true, want false")
	}
}

func TestDecodeFaultInjection(t *testing.T) {
	const in = `apiVersion: verge.dev/v1alpha1
kind: FaultInjection
metadata: {name: chaos}
spec:
  targetRef: {name: backend}
  abort: {grpcStatus: UNAVAILABLE, percent: "2.5"}
`
	got, err := DecodeOne([]byte(in))
	if err != nil {
		t.Fatalf("DecodeOne: %v", err)
	}
	want := &FaultInjection{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "FaultInjection"},
		ObjectMeta: metav1.ObjectMeta{Name: "chaos"},
		Spec: FaultInjectionSpec{
			TargetRef: PolicyTargetReference{Name: "backend"},
			Abort:     &FaultAbort{GRPCStatus: "UNAVAILABLE", Percent: "2.5"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DecodeOne (-want +got):\n%s", diff)
	}
	_, err = DecodeOne([]byte(in + "  abort2: {}\n"))
	if err == nil || !strings.Contains(err.Error(), `spec: unknown field "abort2"`) {
		t.Errorf("DecodeOne with an unknown field: %v, want spec: unknown field", err)
	}
	for _, name := range []string{"faultinjections", "fi", "FaultInjection"} {
		if k, ok := KindByName(name); !ok || k.Kind != "FaultInjection" {
			t.Errorf("KindByName(%q) = %q, %v", name, k.Kind, ok)
		}
	}
}

// TestDecodeBooleanKey checks the hint for YAML 1.1's boolean keys: a retry
// policy's bare "on:" reads as true.
func TestDecodeBooleanKey(t *testing.T) {
	in := "apiVersion: verge.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {name: b}\n  retry:\n    on: [5xx]\n"
	_, err := DecodeOne([]byte(in))
	want := `document 1: spec.retry: unknown field "true" (a bare YAML key such as on or yes reads as a boolean: quote it, "on":)`
	if err == nil || err.Error() != want {
		t.Errorf("DecodeOne = %v, want %s", err, want)
	}
}
