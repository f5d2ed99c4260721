package proxy

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"verge.dev/verge/internal/proxy/config"
)

// FuzzRouteMatch compiles one route from fuzzed match conditions and checks
// the matcher against a plain reading of the rules (Envoy's, as the Gateway
// API uses them): the path condition, an exact header, a query parameter;
// the two header views (net/http's and the h1 engine's) must agree, and
// nothing may panic on any request.
func FuzzRouteMatch(f *testing.F) {
	f.Add(uint8(0), "/api", "x-user", "alice", "v", "1", "GET", "svc.mesh", "/api/x", "v=1", "alice")
	f.Add(uint8(1), "/api", "", "", "", "", "POST", "svc.mesh:80", "/api", "", "")
	f.Add(uint8(2), "/a/[0-9]+", "x", "y", "", "", "GET", "h", "/a/12", "", "y")
	f.Add(uint8(3), "/foo", "", "", "q", "", "GET", "h", "/foobar", "q=%zz", "")
	f.Add(uint8(3), "/foo", "", "", "", "", "GET", "h", "/foo/bar", "", "")
	f.Fuzz(func(t *testing.T, kind uint8, pathArg, hName, hValue, qName, qValue, method, host, path, query, reqHValue string) {
		m := config.RouteMatch{}
		var re *regexp.Regexp
		switch kind % 4 {
		case 0:
			m.Prefix = pathArg
		case 1:
			m.Path = pathArg
		case 2:
			var err error
			if re, err = regexp.Compile("^(?:" + pathArg + ")$"); err != nil {
				return
			}
			m.Regex = re
		case 3:
			p := strings.TrimRight(pathArg, "/")
			if p == "" {
				return
			}
			m.PathSeparatedPrefix = p
		}
		hName = strings.ToLower(hName)
		validName := hName != "" && !strings.HasPrefix(hName, ":") && !strings.ContainsAny(hName, " \t\r\n:\x00")
		if validName {
			m.Headers = []config.HeaderMatch{{Name: hName, Exact: hValue}}
		}
		if qName != "" {
			m.QueryParams = []config.QueryParamMatch{{Name: qName, Exact: qValue}}
		}
		rt := compileRouteTable(&config.RouteTable{Name: "t", VirtualHosts: []*config.VirtualHost{{
			Name: "vh", Domains: []string{"*"}, Routes: []*config.Route{{Name: "r", Match: m}},
		}}}, map[string]*cluster{})

		std := http.Header{}
		if validName && reqHValue != "" {
			std.Set(hName, reqHValue)
		}
		head := requestHead{method: method, host: host, path: path, query: query, header: stdHeaders(std)}
		got := rt.match(&head) != nil
		head.header = funcHeaders(func(name string) string { return std.Get(name) })
		if viaFunc := rt.match(&head) != nil; viaFunc != got {
			t.Fatalf("net/http headers say %v, h1 headers say %v", got, viaFunc)
		}

		// The reference, without the query condition (whose unescaping
		// rules are queryValue's own and tested there).
		if qName != "" {
			return
		}
		want := true
		switch kind % 4 {
		case 0:
			want = strings.HasPrefix(path, m.Prefix)
		case 1:
			want = path == m.Path
		case 2:
			want = re.MatchString(path)
		case 3:
			p := m.PathSeparatedPrefix
			want = path == p || strings.HasPrefix(path, p+"/")
		}
		if validName {
			want = want && reqHValue != "" && std.Get(hName) == hValue
		}
		if got != want {
			t.Fatalf("match %+v on path %q header %q=%q: got %v, want %v", m, path, hName, reqHValue, got, want)
		}
	})
}
