package translate

import (
	"os"
	"path/filepath"
	"testing"

	"verge.dev/verge/api/v1alpha1"
)

// FuzzTranslate: any input the API accepts translates without panicking
// into resources that pass Validate(). The golden inputs are the seeds.
func FuzzTranslate(f *testing.F) {
	inputs, err := filepath.Glob("testdata/*/input.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, in := range inputs {
		data, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := v1alpha1.Decode(data)
		if err != nil {
			return
		}
		var m Mesh
		for _, o := range objs {
			v1alpha1.Default(o)
			if len(v1alpha1.Validate(o)) > 0 {
				return
			}
			m.Add(o)
		}
		ix := NewIndex(m)
		if err := ix.ForProxyless().Validate(); err != nil {
			t.Errorf("ForProxyless: %v", err)
		}
		for _, w := range m.Workloads {
			if err := ix.ForWorkload(w).Validate(); err != nil {
				t.Errorf("ForWorkload(%s/%s): %v", w.Namespace, w.Name, err)
			}
		}
		// With mutual TLS, and the trust bundle the server adds.
		m.MTLS = true
		ix = NewIndex(m)
		if err := ix.ForProxyless().Validate(); err != nil {
			t.Errorf("ForProxyless with MTLS: %v", err)
		}
		bundle := TrustBundleSecret([][]byte{[]byte("root")}, nil)
		for _, w := range m.Workloads {
			r := ix.ForWorkload(w)
			r.Secrets = append(r.Secrets, bundle)
			if err := r.Validate(); err != nil {
				t.Errorf("ForWorkload(%s/%s) with MTLS: %v", w.Namespace, w.Name, err)
			}
		}
	})
}
