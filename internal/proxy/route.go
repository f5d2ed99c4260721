package proxy

import (
	"cmp"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// routeTable is a config.RouteTable compiled once per snapshot: domains
// indexed for the virtual-host lookup, header names pre-canonicalized, and
// each route's clusters resolved to the snapshot's cluster state. It is
// immutable.
type routeTable struct {
	name   string
	exact  map[string]*vhost
	suffix []wildcard // "*.example.com", longest suffix first
	prefix []wildcard // "example.*", longest prefix first
	any    *vhost     // "*"
	// h1Only is true when every cluster the table can route to speaks
	// HTTP/1.1 (and no route answers with a body of its own), so the
	// HTTP/1.1 fast path may carry its connections. tlsEndpoints is set
	// when one of those clusters has endpoints reached with mutual TLS
	// (peer proxies): the fast path reaches them through the HTTP/2 bridge
	// (bridge.go), and the inbound bridge does not serve such a table.
	h1Only       bool
	tlsEndpoints bool
}

type wildcard struct {
	affix string
	vh    *vhost
}

type vhost struct {
	name   string
	routes []*route
}

// route is one compiled config.Route.
type route struct {
	cfg     *config.Route
	name    string
	headers []headerMatch
	// clusters parallels cfg.Clusters; an entry is nil when the snapshot has
	// no such cluster (requests choosing it get 503).
	clusters []*cluster
	timeout  time.Duration
	// regexPrefix is a literal every path matching an anchored Regex starts
	// with; checking it first skips most regex runs.
	regexPrefix string
	// traffic is the route's traffic management (route_traffic.go); nil
	// for a route without any, whose requests take the plain path.
	traffic *routeTraffic
	// guarded is set when one of the route's clusters has a guard
	// (breaker, outlier detection), which the h1 fast path then feeds.
	guarded bool
}

type headerMatch struct {
	config.HeaderMatch
	// canonical is the http.Header key for Name; pseudo is set for ":method",
	// ":authority", ":path" and ":scheme", which are not headers in net/http.
	canonical string
	pseudo    bool
}

func compileRouteTable(rt *config.RouteTable, clusters map[string]*cluster) *routeTable {
	t := &routeTable{name: rt.Name, exact: map[string]*vhost{}, h1Only: true}
	for _, cvh := range rt.VirtualHosts {
		vh := &vhost{name: cvh.Name}
		for _, cr := range cvh.Routes {
			r := &route{cfg: cr, name: cr.Name, timeout: cr.Timeout}
			// The xDS client validated the section; a part the primitives
			// still refuse is left out and the rest applies.
			r.traffic, _ = compileRouteTraffic(cr.Traffic)
			if re := cr.Match.Regex; re != nil && strings.HasPrefix(re.String(), "^") {
				r.regexPrefix, _ = re.LiteralPrefix()
			}
			for _, h := range cr.Match.Headers {
				name := strings.ToLower(h.Name)
				hm := headerMatch{HeaderMatch: h, pseudo: strings.HasPrefix(name, ":")}
				hm.Name = name
				hm.canonical = textproto.CanonicalMIMEHeaderKey(name)
				r.headers = append(r.headers, hm)
			}
			if dr := cr.DirectResponse; dr != nil && dr.Body != "" {
				// The h1 engine answers locally with a status only.
				t.h1Only = false
			}
			for _, wc := range cr.Clusters {
				c := clusters[wc.Name]
				r.clusters = append(r.clusters, c)
				if c != nil && c.cfg.Protocol != config.UpstreamHTTP1 {
					t.h1Only = false
				}
				if c != nil && c.tlsAddrs != nil {
					t.tlsEndpoints = true
				}
				if c != nil && c.guard != nil {
					r.guarded = true
				}
			}
			vh.routes = append(vh.routes, r)
		}
		for _, d := range cvh.Domains {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				if t.any == nil {
					t.any = vh
				}
			case strings.HasPrefix(d, "*"):
				t.suffix = append(t.suffix, wildcard{affix: d[1:], vh: vh})
			case strings.HasSuffix(d, "*"):
				t.prefix = append(t.prefix, wildcard{affix: d[:len(d)-1], vh: vh})
			default:
				if _, dup := t.exact[d]; !dup {
					t.exact[d] = vh
				}
			}
		}
	}
	longestFirst := func(a, b wildcard) int { return cmp.Compare(len(b.affix), len(a.affix)) }
	slices.SortStableFunc(t.suffix, longestFirst)
	slices.SortStableFunc(t.prefix, longestFirst)
	return t
}

// headers is the request-header view routing needs, so that net/http
// requests and the HTTP/1.1 fast path share one matcher. get is given the
// lower-case and the canonical form of the name and reports presence.
type headers interface {
	get(lower, canonical string) (string, bool)
}

// stdHeaders adapts http.Header.
type stdHeaders http.Header

func (h stdHeaders) get(_, canonical string) (string, bool) {
	v, ok := h[canonical]
	if !ok || len(v) == 0 {
		return "", false
	}
	return v[0], true
}

// funcHeaders adapts the h1 engine's header lookup, which cannot tell an
// empty header from an absent one.
type funcHeaders func(string) string

func (f funcHeaders) get(lower, _ string) (string, bool) {
	v := f(lower)
	return v, v != ""
}

// requestHead is what routing looks at. path excludes the query; query is
// the raw query string without "?".
type requestHead struct {
	method string
	host   string
	path   string
	query  string
	header headers
}

// match returns the first route of the virtual host chosen by head.host that
// matches head, or nil. It is pure and safe for concurrent use.
func (t *routeTable) match(head *requestHead) *route {
	vh := t.vhost(head.host)
	if vh == nil {
		return nil
	}
	for _, r := range vh.routes {
		if r.matches(head) {
			return r
		}
	}
	return nil
}

// vhost picks the virtual host as Envoy does: exact domain, then the longest
// "*.suffix", then the longest "prefix.*", then "*"; a host with a port that
// matches nothing is tried again without it.
func (t *routeTable) vhost(host string) *vhost {
	host = strings.ToLower(host)
	if vh := t.vhostExact(host); vh != nil {
		return vh
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		if vh := t.vhostExact(host[:i]); vh != nil {
			return vh
		}
	}
	return t.any
}

func (t *routeTable) vhostExact(host string) *vhost {
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, w := range t.suffix {
		if len(host) > len(w.affix) && strings.HasSuffix(host, w.affix) {
			return w.vh
		}
	}
	for _, w := range t.prefix {
		if len(host) > len(w.affix) && strings.HasPrefix(host, w.affix) {
			return w.vh
		}
	}
	return nil
}

func (r *route) matches(head *requestHead) bool {
	m := &r.cfg.Match
	switch {
	case m.Path != "":
		if head.path != m.Path {
			return false
		}
	case m.Regex != nil:
		// config anchors regexes, so this is a full match as Envoy's
		// safe_regex.
		if !strings.HasPrefix(head.path, r.regexPrefix) || !m.Regex.MatchString(head.path) {
			return false
		}
	case m.PathSeparatedPrefix != "":
		p := m.PathSeparatedPrefix
		if !strings.HasPrefix(head.path, p) || (len(head.path) > len(p) && head.path[len(p)] != '/') {
			return false
		}
	case m.Prefix != "":
		if !strings.HasPrefix(head.path, m.Prefix) {
			return false
		}
	}
	for i := range r.headers {
		if !r.headers[i].matches(head) {
			return false
		}
	}
	for i := range m.QueryParams {
		q := &m.QueryParams[i]
		v, ok := queryValue(head.query, q.Name)
		switch {
		case !ok:
			return false
		case q.Present:
		case q.Regex != nil:
			if !q.Regex.MatchString(v) {
				return false
			}
		default:
			if v != q.Exact {
				return false
			}
		}
	}
	return true
}

// queryValue returns the first value of the named parameter in a raw query
// string, unescaping only when needed so that the common case allocates
// nothing.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(k, "%+") {
			var err error
			if k, err = url.QueryUnescape(k); err != nil {
				continue
			}
		}
		if k != name {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			if u, err := url.QueryUnescape(v); err == nil {
				v = u
			}
		}
		return v, true
	}
	return "", false
}

func (h *headerMatch) matches(head *requestHead) bool {
	var v string
	var ok bool
	if h.pseudo {
		switch h.Name {
		case ":method":
			v, ok = head.method, true
		case ":authority":
			v, ok = head.host, true
		case ":path":
			v, ok = head.path, true
		case ":scheme":
			v, ok = "http", true
		}
	} else {
		v, ok = head.header.get(h.Name, h.canonical)
	}
	var res bool
	switch {
	case !ok:
		res = false
	case h.Present:
		res = true
	case h.Regex != nil:
		res = h.Regex.MatchString(v)
	default:
		res = v == h.Exact
	}
	return res != h.Invert
}

// pickCluster chooses one of the route's clusters in proportion to weight.
// It returns nil when the chosen cluster does not exist in the snapshot.
func (r *route) pickCluster() *cluster {
	switch len(r.clusters) {
	case 0:
		return nil
	case 1:
		return r.clusters[0]
	}
	total := r.cfg.TotalWeight
	if total == 0 {
		return r.clusters[rand.IntN(len(r.clusters))]
	}
	n := rand.Uint32N(total)
	for i, wc := range r.cfg.Clusters {
		if n < wc.Weight {
			return r.clusters[i]
		}
		n -= wc.Weight
	}
	return r.clusters[len(r.clusters)-1]
}

// pathOf returns the request path without the query, as sent on the wire
// (not decoded), without allocating for origin-form targets.
func pathOf(r *http.Request) string {
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		return r.URL.EscapedPath()
	}
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}
