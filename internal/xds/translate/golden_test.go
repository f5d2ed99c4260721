package translate

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"sigs.k8s.io/yaml"

	"verge.dev/verge/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestGolden translates testdata/<case>/input.yaml and compares the result
// for every proxied workload (<workload>.json) and for proxyless clients
// (proxyless.json). Every resource must also pass its Validate().
//
// An optional dir/mesh.yaml sets Mesh options (mtls, trustDomain); with
// mtls, the trust bundle secret built from dir/root.pem is added to each
// Verge proxy's resources, as the xDS server adds it.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/input.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 5 {
		t.Fatalf("found %d golden cases, want at least 5", len(dirs))
	}
	for _, in := range dirs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			m := loadMesh(t, dir)
			ix := NewIndex(m)
			var secrets []*tlsv3.Secret
			if m.MTLS {
				secrets = []*tlsv3.Secret{TrustBundleSecret(loadRoots(t, filepath.Join(dir, "root.pem")), nil)}
			}
			for _, wl := range m.Workloads {
				if wl.Spec.Proxy == nil {
					continue
				}
				got := ix.ForWorkload(wl)
				got.Secrets = secrets
				validateResources(t, got)
				checkGolden(t, filepath.Join(dir, wl.Name+".json"), got)
			}
			got := ix.ForProxyless()
			validateResources(t, got)
			checkGolden(t, filepath.Join(dir, "proxyless.json"), got)
		})
	}
}

// loadMesh decodes, defaults and validates dir/input.yaml, and reads the
// optional dir/health.yaml ("ns/name": healthy|unhealthy).
func loadMesh(t *testing.T, dir string) Mesh {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "input.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := v1alpha1.Decode(data)
	if err != nil {
		t.Fatalf("decode %s: %v", dir, err)
	}
	var m Mesh
	opts, err := os.ReadFile(filepath.Join(dir, "mesh.yaml"))
	switch {
	case err == nil:
		var o struct {
			MTLS        bool   `json:"mtls"`
			TrustDomain string `json:"trustDomain"`
		}
		if err := yaml.UnmarshalStrict(opts, &o); err != nil {
			t.Fatalf("mesh.yaml: %v", err)
		}
		m.MTLS, m.TrustDomain = o.MTLS, o.TrustDomain
	case !errors.Is(err, os.ErrNotExist):
		t.Fatal(err)
	}
	for _, o := range objs {
		v1alpha1.Default(o)
		if errs := v1alpha1.Validate(o); len(errs) > 0 {
			t.Fatalf("%s %s/%s is invalid: %v", o.GetObjectKind().GroupVersionKind().Kind, o.GetNamespace(), o.GetName(), errs.ToAggregate())
		}
		if !m.Add(o) {
			t.Fatalf("unexpected %T in %s", o, dir)
		}
	}
	hdata, err := os.ReadFile(filepath.Join(dir, "health.yaml"))
	if errors.Is(err, os.ErrNotExist) {
		return m
	}
	if err != nil {
		t.Fatal(err)
	}
	var hm map[string]string
	if err := yaml.UnmarshalStrict(hdata, &hm); err != nil {
		t.Fatalf("health.yaml: %v", err)
	}
	m.Health = map[string]Health{}
	for k, v := range hm {
		switch v {
		case "healthy":
			m.Health[k] = HealthHealthy
		case "unhealthy":
			m.Health[k] = HealthUnhealthy
		default:
			t.Fatalf("health.yaml: %s: unknown health %q", k, v)
		}
	}
	return m
}

// envelope is the golden file: each resource as protojson, Any resolved.
type envelope struct {
	Listeners []json.RawMessage `json:"listeners"`
	Routes    []json.RawMessage `json:"routes"`
	Clusters  []json.RawMessage `json:"clusters"`
	Endpoints []json.RawMessage `json:"endpoints"`
	Secrets   []json.RawMessage `json:"secrets,omitempty"`
}

// loadRoots reads the DER of every certificate in a PEM file.
func loadRoots(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var roots [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		roots = append(roots, b.Bytes)
	}
	if len(roots) == 0 {
		t.Fatalf("%s: no certificates", path)
	}
	return roots
}

func marshalResources(t *testing.T, r Resources) []byte {
	t.Helper()
	env := envelope{Listeners: []json.RawMessage{}, Routes: []json.RawMessage{}, Clusters: []json.RawMessage{}, Endpoints: []json.RawMessage{}}
	add := func(dst *[]json.RawMessage, m proto.Message) {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		*dst = append(*dst, b)
	}
	for _, m := range r.Listeners {
		add(&env.Listeners, m)
	}
	for _, m := range r.Routes {
		add(&env.Routes, m)
	}
	for _, m := range r.Clusters {
		add(&env.Clusters, m)
	}
	for _, m := range r.Endpoints {
		add(&env.Endpoints, m)
	}
	for _, m := range r.Secrets {
		add(&env.Secrets, m)
	}
	compact, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	// protojson's spacing is deliberately random; re-indent for stable diffs.
	var out bytes.Buffer
	if err := json.Indent(&out, compact, "", "  "); err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func unmarshalResources(t *testing.T, data []byte) Resources {
	t.Helper()
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	var r Resources
	for _, b := range env.Listeners {
		r.Listeners = append(r.Listeners, unmarshalMsg[listenerv3.Listener](t, b))
	}
	for _, b := range env.Routes {
		r.Routes = append(r.Routes, unmarshalMsg[routev3.RouteConfiguration](t, b))
	}
	for _, b := range env.Clusters {
		r.Clusters = append(r.Clusters, unmarshalMsg[clusterv3.Cluster](t, b))
	}
	for _, b := range env.Endpoints {
		r.Endpoints = append(r.Endpoints, unmarshalMsg[endpointv3.ClusterLoadAssignment](t, b))
	}
	for _, b := range env.Secrets {
		r.Secrets = append(r.Secrets, unmarshalMsg[tlsv3.Secret](t, b))
	}
	return r
}

func unmarshalMsg[T any, P interface {
	*T
	proto.Message
}](t *testing.T, b []byte) P {
	t.Helper()
	m := P(new(T))
	if err := protojson.Unmarshal(b, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func checkGolden(t *testing.T, path string, got Resources) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, marshalResources(t, got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	want := unmarshalResources(t, data)
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("%s mismatch (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}

// validateResources fails the test when r.Validate() does.
func validateResources(t *testing.T, r Resources) {
	t.Helper()
	if err := r.Validate(); err != nil {
		t.Errorf("invalid resources: %v", err)
	}
}
