package v1alpha1

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMeshName(t *testing.T) {
	if got, want := MeshName("backend", "shop"), "backend.shop.mesh"; got != want {
		t.Errorf("MeshName = %q, want %q", got, want)
	}
	if got, want := MeshName("backend", ""), "backend.default.mesh"; got != want {
		t.Errorf("MeshName without namespace = %q, want %q", got, want)
	}
}

func TestParseMeshName(t *testing.T) {
	type result struct {
		Name, Namespace string
		OK              bool
	}
	tests := []struct {
		host string
		want result
	}{
		{"backend.shop.mesh", result{"backend", "shop", true}},
		{"backend.shop.mesh:8080", result{"backend", "shop", true}},
		{"backend.shop.mesh.", result{"backend", "shop", true}},
		{"Backend.Shop.MESH:80", result{"backend", "shop", true}},
		{"backend.mesh", result{}},
		{"backend.shop.svc.mesh", result{}},
		{"backend.shop.mesh:0", result{}},
		{"backend.shop.mesh:65536", result{}},
		{"backend.shop.mesh:http", result{}},
		{"backend.shop.mesh:", result{}},
		{"backend.shop.local", result{}},
		{"-x.shop.mesh", result{}},
		{".shop.mesh", result{}},
		{"", result{}},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			var got result
			got.Name, got.Namespace, got.OK = ParseMeshName(tt.host)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseMeshName(%q) (-want +got):\n%s", tt.host, diff)
			}
		})
	}
}

func FuzzParseMeshName(f *testing.F) {
	for _, s := range []string{"backend.shop.mesh", "a.b.mesh:1", "x.mesh", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		name, ns, ok := ParseMeshName(host)
		if !ok {
			return
		}
		// Formatting a parsed name gives a name that parses to the same parts.
		n2, ns2, ok2 := ParseMeshName(MeshName(name, ns))
		if !ok2 || n2 != name || ns2 != ns {
			t.Errorf("ParseMeshName(MeshName(%q, %q)) = %q, %q, %v", name, ns, n2, ns2, ok2)
		}
	})
}
