package translate

import (
	"fmt"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"verge.dev/verge/api/v1alpha1"
)

// validateFilters checks what Resources.Validate cannot see: the typed
// configs packed in Any inside listeners (HCM, its HTTP filters, network
// filters) must each pass their own ValidateAll.
func validateFilters(t *testing.T, r Resources) {
	t.Helper()
	check := func(where string, a *anypb.Any) {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: unpack %s: %v", where, a.GetTypeUrl(), err)
			return
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
		if hcm, ok := m.(*hcmv3.HttpConnectionManager); ok {
			for i, hf := range hcm.GetHttpFilters() {
				if hf.GetTypedConfig() != nil {
					sub, err := hf.GetTypedConfig().UnmarshalNew()
					if err != nil {
						t.Errorf("%s.http_filters[%d]: %v", where, i, err)
						continue
					}
					if v, ok := sub.(interface{ ValidateAll() error }); ok {
						if err := v.ValidateAll(); err != nil {
							t.Errorf("%s.http_filters[%d]: %v", where, i, err)
						}
					}
				}
			}
		}
	}
	for _, l := range r.Listeners {
		for i, fc := range l.GetFilterChains() {
			for j, f := range fc.GetFilters() {
				if tc := f.GetTypedConfig(); tc != nil {
					check(fmt.Sprintf("listener %s filter_chains[%d].filters[%d]", l.Name, i, j), tc)
				}
			}
		}
	}
}

func TestAuthzFiltersValid(t *testing.T) {
	m := loadMesh(t, "testdata/authz")
	ix := NewIndex(m)
	for _, w := range m.Workloads {
		validateFilters(t, ix.ForWorkload(w))
	}
}

// FuzzAuthorizationPolicy builds a policy from fuzzed values in every
// wildcard-taking field: whatever validation accepts must translate into
// filters whose configs pass ValidateAll, on HTTP and TCP listeners.
func FuzzAuthorizationPolicy(f *testing.F) {
	f.Add("DENY", "spiffe://verge.local/ns/a/*", "a", "a/b", "/x*", "GET", "*.mesh", "x-h", "*", "groups", "adm*", int32(8080))
	f.Add("ALLOW", "*", "*", "ns/sa", "*.json", "POST", "*", "h", "v*", "sub", "*", int32(5432))
	f.Add("AUDIT", "*/sa/web", "x", "x/y", "*", "*", "a", "", "", "", "", int32(0))
	f.Fuzz(func(t *testing.T, action, principal, ns, sa, path, method, host, header, value, claim, claimValue string, port int32) {
		rule := v1alpha1.AuthorizationRule{
			From: []v1alpha1.AuthorizationSource{{Principals: []string{principal}, NotNamespaces: []string{ns}, ServiceAccounts: []string{sa}}},
			To:   []v1alpha1.AuthorizationOperation{{Paths: []string{path}, NotMethods: []string{method}, Hosts: []string{host}, Ports: []int32{port}}},
		}
		if header != "" {
			rule.Headers = []v1alpha1.HeaderCondition{{Name: header, Values: []string{value}}}
		}
		if claim != "" {
			rule.When = []v1alpha1.ClaimCondition{{Claim: claim, NotValues: []string{claimValue}}}
		}
		p := &v1alpha1.AuthorizationPolicy{Spec: v1alpha1.AuthorizationPolicySpec{
			Action: v1alpha1.AuthorizationAction(action),
			Rules:  []v1alpha1.AuthorizationRule{rule, {}},
			JWT:    &v1alpha1.JWTAuthentication{Providers: []v1alpha1.JWTProvider{{Issuer: "i", JWKSFile: "/k"}}},
		}}
		p.Name, p.Namespace = "p", "shop"
		v1alpha1.Default(p)
		if len(v1alpha1.Validate(p)) > 0 {
			return
		}
		// A valid policy also survives YAML, as the store keeps it.
		if _, err := yaml.Marshal(p); err != nil {
			t.Fatal(err)
		}
		svcs := []*v1alpha1.Service{
			{Spec: v1alpha1.ServiceSpec{Ports: []v1alpha1.ServicePort{{Port: 80, TargetPort: 8080}}}},
			{Spec: v1alpha1.ServiceSpec{Ports: []v1alpha1.ServicePort{{Port: 5432, Protocol: v1alpha1.ProtocolTCP}}}},
		}
		svcs[0].Name, svcs[1].Name = "api", "db"
		wl := &v1alpha1.Workload{Spec: v1alpha1.WorkloadSpec{Address: "10.0.0.1", ServiceAccount: "x",
			Ports: []v1alpha1.WorkloadPort{{Port: 8080, InboundPort: 15080}, {Port: 5432, InboundPort: 15432}},
			Proxy: &v1alpha1.WorkloadProxy{}}}
		wl.Name, wl.Namespace, wl.Labels = "w", "shop", map[string]string{"app": "api"}
		m := Mesh{AuthorizationPolicies: []*v1alpha1.AuthorizationPolicy{p}, Workloads: []*v1alpha1.Workload{wl}}
		for _, s := range svcs {
			s.Namespace = "shop"
			v1alpha1.Default(s)
			s.Spec.Selector = map[string]string{"app": "api"}
			m.Services = append(m.Services, s)
		}
		r := NewIndex(m).ForWorkload(wl)
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		validateFilters(t, r)
		var n int
		for _, l := range r.Listeners {
			n += len(l.GetFilterChains()[0].GetFilters())
		}
		if n < 2 {
			t.Fatalf("no filters: %v", r.Listeners)
		}
	})
}
