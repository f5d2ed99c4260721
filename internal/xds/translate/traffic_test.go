package translate

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
)

// TestSectionOldestWins: each section goes to the oldest policy that sets
// it for the port, independently of the other sections.
func TestSectionOldestWins(t *testing.T) {
	at := func(name string, day int, port int32, spec v1alpha1.DestinationPolicySpec) *v1alpha1.DestinationPolicy {
		spec.TargetRef = v1alpha1.PolicyTargetReference{Name: "web", Port: port}
		return &v1alpha1.DestinationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1+day, 0, 0, 0, 0, time.UTC))},
			Spec:       spec,
		}
	}
	// Listed newest first so that the order of the input cannot decide.
	policies := []*v1alpha1.DestinationPolicy{
		at("newest", 3, 0, v1alpha1.DestinationPolicySpec{
			Retry:            &v1alpha1.RetryPolicy{Attempts: 9},
			CircuitBreaker:   &v1alpha1.CircuitBreaker{MaxRequests: 9},
			OutlierDetection: &v1alpha1.OutlierDetection{Interval: "9s"},
			HealthCheck:      &v1alpha1.HealthCheck{Interval: "9s"},
			RateLimit:        &v1alpha1.RateLimit{RequestsPerSecond: 9},
			Overload:         &v1alpha1.Overload{MaxConcurrent: 9},
			Bandwidth:        &v1alpha1.Bandwidth{BytesPerSecond: 9},
		}),
		at("middle-port-81", 2, 81, v1alpha1.DestinationPolicySpec{
			Retry:     &v1alpha1.RetryPolicy{Attempts: 2},
			RateLimit: &v1alpha1.RateLimit{RequestsPerSecond: 2},
		}),
		at("b-same-day", 1, 0, v1alpha1.DestinationPolicySpec{CircuitBreaker: &v1alpha1.CircuitBreaker{MaxRequests: 3}}),
		at("a-same-day", 1, 0, v1alpha1.DestinationPolicySpec{CircuitBreaker: &v1alpha1.CircuitBreaker{MaxRequests: 1}}),
		at("oldest", 0, 0, v1alpha1.DestinationPolicySpec{
			LoadBalancer: &v1alpha1.LoadBalancer{Policy: v1alpha1.LoadBalancerLeastRequest},
			Overload:     &v1alpha1.Overload{MaxConcurrent: 1},
		}),
	}
	svc := &v1alpha1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       v1alpha1.ServiceSpec{Ports: []v1alpha1.ServicePort{{Port: 80}, {Port: 81}}},
	}
	ix := NewIndex(Mesh{Services: []*v1alpha1.Service{svc}, DestinationPolicies: policies})
	si := ix.services["default/web"]

	type got struct {
		Retry, CB, RateLimit, Overload int32
		Outlier, Health                string
		Bandwidth                      int64
	}
	read := func(port int32) got {
		return got{
			Retry:     section(si, port, retrySection).Attempts,
			CB:        section(si, port, cbSection).MaxRequests,
			RateLimit: section(si, port, rateLimitSection).RequestsPerSecond,
			Overload:  section(si, port, overloadSection).MaxConcurrent,
			Outlier:   section(si, port, outlierSection).Interval,
			Health:    section(si, port, healthSection).Interval,
			Bandwidth: section(si, port, bandwidthSection).BytesPerSecond,
		}
	}
	for _, tc := range []struct {
		port int32
		want got
	}{
		// Port 80: the port-81 policy does not apply; names break the tie.
		{80, got{Retry: 9, CB: 1, RateLimit: 9, Overload: 1, Outlier: "9s", Health: "9s", Bandwidth: 9}},
		{81, got{Retry: 2, CB: 1, RateLimit: 2, Overload: 1, Outlier: "9s", Health: "9s", Bandwidth: 9}},
	} {
		t.Run(strconv.Itoa(int(tc.port)), func(t *testing.T) {
			if diff := cmp.Diff(tc.want, read(tc.port)); diff != "" {
				t.Errorf("sections (-want +got):\n%s", diff)
			}
		})
	}
	if section(nil, 80, retrySection) != nil {
		t.Error("section of a missing service is not nil")
	}
}

// TestLocalityPriority pins the priorities a caller gives each locality.
func TestLocalityPriority(t *testing.T) {
	loc := func(r, z string) *endpointv3.LocalityLbEndpoints {
		return &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: r, Zone: z}}
	}
	cla := func(ls ...*endpointv3.LocalityLbEndpoints) *endpointv3.ClusterLoadAssignment {
		return &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: ls}
	}
	all := cla(loc("", ""), loc("eu", "eu-a"), loc("eu", "eu-b"), loc("us", "us-a"))
	tests := []struct {
		name   string
		caller locality
		in     *endpointv3.ClusterLoadAssignment
		want   []uint32
	}{
		{"same zone, region, other", locality{"eu", "eu-a"}, all, []uint32{2, 0, 1, 2}},
		{"no same zone: renumbered", locality{"eu", "eu-c"}, all, []uint32{1, 0, 0, 1}},
		{"other region only", locality{"ap", "ap-a"}, all, []uint32{0, 0, 0, 0}},
		{"caller without labels", locality{}, all, []uint32{0, 0, 0, 0}},
		{"zone label only: renumbered", locality{"", "eu-a"}, all, []uint32{0, 1, 1, 1}},
		{"one locality", locality{"us", "us-a"}, cla(loc("eu", "eu-a")), []uint32{0}},
		{"empty", locality{"us", "us-a"}, cla(), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := withPriorities(tc.in, tc.caller)
			var got []uint32
			for _, le := range out.GetEndpoints() {
				got = append(got, le.GetPriority())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("priorities (-want +got):\n%s", diff)
			}
			for _, le := range tc.in.GetEndpoints() {
				if le.GetPriority() != 0 {
					t.Fatal("withPriorities modified its input")
				}
			}
		})
	}
}

// TestLocalityDisabled: a service whose policy turns locality off gives
// every caller its endpoints at priority 0; others get them by locality.
func TestLocalityDisabled(t *testing.T) {
	m := loadMesh(t, "testdata/traffic")
	r := NewIndex(m).ForWorkload(find(t, m.Workloads, "client-1"))
	prios := map[string][]uint32{}
	for _, cla := range r.Endpoints {
		for _, le := range cla.Endpoints {
			prios[cla.ClusterName] = append(prios[cla.ClusterName], le.Priority)
		}
	}
	if got := prios["web-v1.default.mesh:80"]; !cmp.Equal(got, []uint32{0, 1, 2}) {
		t.Errorf("web-v1 priorities = %v, want [0 1 2]", got)
	}
	if got := prios["web-v2.default.mesh:80"]; !cmp.Equal(got, []uint32{0, 0}) {
		t.Errorf("web-v2 (locality disabled) priorities = %v, want [0 0]", got)
	}
}

func TestPercent(t *testing.T) {
	frac := func(n uint32, d typev3.FractionalPercent_DenominatorType) *typev3.FractionalPercent {
		return &typev3.FractionalPercent{Numerator: n, Denominator: d}
	}
	tests := []struct {
		in   string
		want *typev3.FractionalPercent // nil: refused
	}{
		{"100", frac(100, typev3.FractionalPercent_HUNDRED)},
		{"0", frac(0, typev3.FractionalPercent_HUNDRED)},
		{"10", frac(10, typev3.FractionalPercent_HUNDRED)},
		{"0.5", frac(50, typev3.FractionalPercent_TEN_THOUSAND)},
		{"12.25", frac(1225, typev3.FractionalPercent_TEN_THOUSAND)},
		{"0.0001", frac(1, typev3.FractionalPercent_MILLION)},
		{".5", frac(50, typev3.FractionalPercent_TEN_THOUSAND)},
		{"100.5", nil},
		{"0.00001", nil},
		{"-1", nil},
		{"", nil},
		{".", nil},
		{"1e2", nil},
	}
	for _, tc := range tests {
		got, ok := percentFraction(tc.in)
		if ok != (tc.want != nil) || !cmp.Equal(tc.want, got, protocmp.Transform()) {
			t.Errorf("percentFraction(%q) = %v, %v; want %v", tc.in, got, ok, tc.want)
		}
	}
	// Fractions no denominator represents round to millionths.
	if got, want := fraction(1, 3), frac(333333, typev3.FractionalPercent_MILLION); !cmp.Equal(want, got, protocmp.Transform()) {
		t.Errorf("fraction(1, 3) = %v, want %v", got, want)
	}
}

// FuzzParsePercent: parsing never panics, stays within 0-100%, and a
// parsed value formatted back parses to itself.
func FuzzParsePercent(f *testing.F) {
	for _, s := range []string{"0", "100", "0.5", "12.3456", ".1", "1.", "100.0001", "+1", " 5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := parsePercent(s)
		if !ok {
			return
		}
		if v < 0 || v > 1_000_000 {
			t.Fatalf("parsePercent(%q) = %d, outside 0-1000000", s, v)
		}
		formatted := fmt.Sprintf("%d.%04d", v/10_000, v%10_000)
		if back, ok := parsePercent(formatted); !ok || back != v {
			t.Fatalf("parsePercent(%q) = %d; formatted %q parses to %d, %v", s, v, formatted, back, ok)
		}
	})
}

// TestFaultChoice: the oldest FaultInjection matching a route wins, and
// route names scope them.
func TestFaultChoice(t *testing.T) {
	m := loadMesh(t, "testdata/traffic")
	ix := NewIndex(m)
	pi := ix.ports["web.default.mesh:80"]
	abort := map[string]uint32{}
	for _, r := range pi.routes {
		if a := r.GetTypedPerFilterConfig()[faultFilterName]; a != nil {
			f := unmarshalFault(t, a.GetValue())
			abort[r.GetName()] = f.GetAbort().GetHttpStatus()
		}
	}
	want := map[string]uint32{
		"httproute/default/web/rule/0/match/0": 503, // "api": chaos-old, older than chaos-new
		"httproute/default/web/rule/2/match/0": 500, // unnamed: only chaos-new applies
	}
	if diff := cmp.Diff(want, abort); diff != "" {
		t.Errorf("faults by route (-want +got):\n%s", diff)
	}
}

func unmarshalFault(t *testing.T, b []byte) *faultv3.HTTPFault {
	t.Helper()
	f := &faultv3.HTTPFault{}
	if err := proto.Unmarshal(b, f); err != nil {
		t.Fatal(err)
	}
	return f
}
