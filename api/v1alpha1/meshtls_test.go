package v1alpha1

import (
	"os"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMeshTLS(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "valid",
			in: `apiVersion: verge.dev/v1alpha1
kind: MeshTLS
metadata: {name: m, namespace: shop}
spec: {mode: STRICT, service: web}
`,
		},
		{
			name: "mode required",
			in: `apiVersion: verge.dev/v1alpha1
kind: MeshTLS
metadata: {name: m}
spec: {}
`,
			want: []string{`spec.mode: Required value: STRICT or PERMISSIVE`},
		},
		{
			name: "bad mode and service",
			in: `apiVersion: verge.dev/v1alpha1
kind: MeshTLS
metadata: {name: m}
spec: {mode: strict, service: Web.shop}
`,
			want: []string{
				`spec.mode: Unsupported value: "strict": supported values: "STRICT", "PERMISSIVE"`,
				`spec.service: Invalid value: "Web.shop": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
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

func TestDecodeMeshTLS(t *testing.T) {
	obj := decodeOne(t, `apiVersion: verge.dev/v1alpha1
kind: MeshTLS
metadata: {name: m}
spec: {mode: PERMISSIVE}
`)
	Default(obj)
	want := &MeshTLS{
		TypeMeta:   metav1.TypeMeta{APIVersion: "verge.dev/v1alpha1", Kind: "MeshTLS"},
		ObjectMeta: metav1.ObjectMeta{Name: "m", Namespace: "default"},
		Spec:       MeshTLSSpec{Mode: MeshTLSPermissive},
	}
	if diff := cmp.Diff(want, obj); diff != "" {
		t.Errorf("decode (-want +got):\n%s", diff)
	}
	if _, err := Decode([]byte("apiVersion: verge.dev/v1alpha1\nkind: MeshTLS\nmetadata: {name: m}\nspec: {mode: STRICT, tls: true}\n")); err == nil {
		t.Error("Decode accepted an unknown field")
	}
	for _, name := range []string{"meshtlses", "mtls", "MeshTLS"} {
		if k, ok := KindByName(name); !ok || k.Kind != "MeshTLS" {
			t.Errorf("KindByName(%q) = %v, %v", name, k.Kind, ok)
		}
	}
	if k, ok := KindOf(&MeshTLS{}); !ok || k.Plural != "meshtlses" {
		t.Errorf("KindOf(MeshTLS) = %q, %v", k.Plural, ok)
	}
}

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// TestDocsResourcesExamples decodes, defaults and validates every YAML block
// of docs/resources.md, so the documented examples stay valid.
func TestDocsResourcesExamples(t *testing.T) {
	data, err := os.ReadFile("../../docs/resources.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := yamlBlock.FindAllSubmatch(data, -1)
	if len(blocks) == 0 {
		t.Fatal("no yaml examples in docs/resources.md")
	}
	for i, b := range blocks {
		objs, err := Decode(b[1])
		if err != nil {
			t.Errorf("example %d: %v", i, err)
			continue
		}
		for _, o := range objs {
			Default(o)
			if errs := Validate(o); len(errs) > 0 {
				t.Errorf("example %d: %s: %v", i, o.GetName(), errs.ToAggregate())
			}
		}
	}
}
