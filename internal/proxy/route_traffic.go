package proxy

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/fault"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/ratelimit"
	"verge.dev/verge/internal/proxy/resilience"
)

// Route- and listener-level traffic management (issue 5): config.RouteTraffic
// compiled once per snapshot into routeTraffic, which the three request paths
// (h1router.go, forward.go, bridge.go) consult per request, and the inbound
// listeners' priority shedders. A route without traffic features has a nil
// *routeTraffic and its requests pay one nil check.
//
// Order on every path, as Envoy's filter chain runs: authorization, route
// match, direct response or redirect, local rate limit, overload shedding,
// fault injection, then the router (cluster breaker, hash pick, retries,
// mirrors). Local rate limits and faults count per snapshot: a new snapshot
// starts full buckets.

// maxRetryBody is the largest request body the net/http path keeps to send
// again on a retry; a larger one is streamed and its request not retried
// (Envoy's default per_request_buffer_limit is of this order).
const maxRetryBody = 64 << 10

// maxMirrorsInFlight bounds the mirror requests a proxy has in flight;
// beyond it copies are dropped (and counted), so a slow shadow service
// never costs the caller anything but the copy.
const maxMirrorsInFlight = 64

// mirrorTimeout bounds a mirror request whose route has no timeout.
const mirrorTimeout = 10 * time.Second

// routeTraffic is a config.RouteTraffic compiled for the request path. It
// is immutable except for the limiters and fault filters, which are safe
// for concurrent use.
type routeTraffic struct {
	cfg *config.RouteTraffic

	// Retries: attempts after the first try; retryOn and codes decide an
	// outcome; backoff paces them.
	attempts int
	retryOn  resilience.RetryOn
	codes    []int
	perTry   time.Duration
	backoff  resilience.Backoff
	// h1RetryOn and h1Backoff are bound once so that the h1 engine gets
	// them without a per-request closure.
	h1RetryOn func(status int, f h1.Failure) bool
	h1Backoff func(n int) time.Duration

	hash []hashPolicy

	reqEdits, respEdits *h1.HeaderEdits

	rewrite  *config.Rewrite
	redirect *config.Redirect

	faults []routeFault
	limit  *routeLimit

	mirrors []config.Mirror
	// class is the route's priority class name, "" for the header's.
	class string

	// static is the h1.Traffic of a route whose features need nothing per
	// request (header edits only); nil when h1Flow builds one.
	static *h1.Traffic
}

// hashPolicy is a config.HashPolicy with the header's net/http key.
type hashPolicy struct {
	config.HashPolicy
	canonical string
}

// routeFault is one fault rule: its header match is the route matcher's
// (regex and invert included), its dice the fault package's.
type routeFault struct {
	headers []headerMatch
	filter  *fault.Filter
	// grpcStatus replaces the HTTP abort status for gRPC requests when
	// not negative.
	grpcStatus int
	httpStatus int
}

// routeLimit is a route's local rate limit: one bucket, or one per key.
type routeLimit struct {
	bucket *ratelimit.Bucket
	keyed  *ratelimit.Keyed
	// bySource keys by the caller's SPIFFE ID (its address over
	// plaintext); header by that request header's value otherwise.
	bySource  bool
	header    string
	canonical string
}

// compileRouteTraffic compiles t; it returns nil for a nil t. A part the
// primitives refuse (validated upstream, so not expected) is left out and
// reported through the returned error, the rest still applies.
func compileRouteTraffic(t *config.RouteTraffic) (*routeTraffic, error) {
	if t == nil {
		return nil, nil
	}
	rt := &routeTraffic{cfg: t, rewrite: t.Rewrite, redirect: t.Redirect, mirrors: t.Mirrors, class: t.PriorityClass}
	var errs []error
	if r := t.Retry; r != nil && r.Attempts > 0 {
		on, err := resilience.ParseRetryOn(strings.Join(r.On, ","))
		if err != nil {
			errs = append(errs, fmt.Errorf("retry.on: %w", err))
		}
		rt.attempts, rt.retryOn, rt.codes, rt.perTry = r.Attempts, on, slices.Clone(r.RetriableStatusCodes), r.PerTryTimeout
		rt.backoff = resilience.Backoff{Base: r.BaseInterval, Max: r.MaxInterval}
		rt.h1RetryOn = rt.retryH1
		rt.h1Backoff = rt.backoff.Delay
	}
	for _, h := range t.Hash {
		rt.hash = append(rt.hash, hashPolicy{HashPolicy: h, canonical: http.CanonicalHeaderKey(h.Header)})
	}
	rt.reqEdits = headerEdits(t.RequestHeaders)
	rt.respEdits = headerEdits(t.ResponseHeaders)
	for i, f := range t.Faults {
		rf, err := compileFault(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("faults[%d]: %w", i, err))
			continue
		}
		rt.faults = append(rt.faults, rf)
	}
	if l := t.RateLimit; l != nil {
		lim, err := compileLimit(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("rateLimit: %w", err))
		}
		rt.limit = lim
	}
	if rt.attempts == 0 && rt.rewrite == nil && len(rt.mirrors) == 0 && len(rt.faults) == 0 && !rt.setsCookie() {
		rt.static = &h1.Traffic{RequestHeaders: rt.reqEdits, ResponseHeaders: rt.respEdits}
	}
	if len(errs) > 0 {
		return rt, fmt.Errorf("route traffic: %w", joinErrs(errs))
	}
	return rt, nil
}

func joinErrs(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

func headerEdits(m config.HeaderMutation) *h1.HeaderEdits {
	if len(m.Set) == 0 && len(m.Add) == 0 && len(m.Remove) == 0 {
		return nil
	}
	e := &h1.HeaderEdits{Remove: slices.Clone(m.Remove)}
	for _, h := range m.Set {
		e.Set = append(e.Set, h1.Field{Name: strings.ToLower(h.Name), Value: h.Value})
	}
	for _, h := range m.Add {
		e.Add = append(e.Add, h1.Field{Name: strings.ToLower(h.Name), Value: h.Value})
	}
	for i, n := range e.Remove {
		e.Remove[i] = strings.ToLower(n)
	}
	return e
}

// percentOf converts a 0-100 share to the fault package's finest unit.
func percentOf(p float64) fault.Percent {
	return fault.Percent{Numerator: uint32(min(max(p, 0), 100)*10000 + 0.5), Denominator: fault.Million}
}

func compileFault(f *config.Fault) (routeFault, error) {
	rf := routeFault{grpcStatus: f.AbortGRPCStatus, httpStatus: f.AbortHTTPStatus}
	for _, h := range f.Headers {
		name := strings.ToLower(h.Name)
		hm := headerMatch{HeaderMatch: h, pseudo: strings.HasPrefix(name, ":"), canonical: http.CanonicalHeaderKey(name)}
		hm.Name = name
		rf.headers = append(rf.headers, hm)
	}
	var c fault.Config
	if f.Delay > 0 && f.DelayPercent > 0 {
		c.Delay = &fault.Delay{Fixed: f.Delay, Percent: percentOf(f.DelayPercent)}
	}
	if f.AbortPercent > 0 {
		switch {
		case f.AbortHTTPStatus != 0:
			c.Abort = &fault.Abort{HTTPStatus: f.AbortHTTPStatus, Percent: percentOf(f.AbortPercent)}
		case f.AbortGRPCStatus > 0:
			c.Abort = &fault.Abort{GRPCStatus: f.AbortGRPCStatus, Percent: percentOf(f.AbortPercent)}
		}
	}
	if c.Delay == nil && c.Abort == nil {
		return rf, fmt.Errorf("neither a delay nor an abort to inject")
	}
	c.MaxActive = f.MaxActive
	filter, err := fault.New(c)
	if err != nil {
		return rf, err
	}
	rf.filter = filter
	return rf, nil
}

func compileLimit(l *config.RateLimit) (*routeLimit, error) {
	if l.FillInterval <= 0 || l.TokensPerFill <= 0 {
		return nil, fmt.Errorf("fillInterval %v, tokensPerFill %d: must be positive", l.FillInterval, l.TokensPerFill)
	}
	bc := ratelimit.BucketConfig{Rate: float64(l.TokensPerFill) / l.FillInterval.Seconds(), Burst: max(l.MaxTokens, 1)}
	lim := &routeLimit{}
	switch {
	case l.By == "":
		b, err := ratelimit.NewBucket(bc)
		if err != nil {
			return nil, err
		}
		lim.bucket = b
		return lim, nil
	case l.By == "source":
		lim.bySource = true
	case strings.HasPrefix(l.By, "header:"):
		lim.header = strings.ToLower(strings.TrimPrefix(l.By, "header:"))
		lim.canonical = http.CanonicalHeaderKey(lim.header)
	default:
		return nil, fmt.Errorf("by %q: want \"\", \"source\" or \"header:NAME\"", l.By)
	}
	k, err := ratelimit.NewKeyed(ratelimit.KeyedConfig{Bucket: bc})
	if err != nil {
		return nil, err
	}
	lim.keyed = k
	return lim, nil
}

// allow takes a token for a request from source (the caller's identity)
// whose headers get reads (lower-case names).
func (l *routeLimit) allow(source string, get func(lower, canonical string) string) (bool, time.Duration) {
	switch {
	case l.bucket != nil:
		return l.bucket.Allow()
	case l.bySource:
		return l.keyed.Allow(source)
	default:
		return l.keyed.Allow(get(l.header, l.canonical))
	}
}

// retry reports whether an attempt's outcome is retried under the route's
// conditions and retriable status codes.
func (rt *routeTraffic) retry(status, grpcStatus int, f resilience.Failure) bool {
	if resilience.ShouldRetry(rt.retryOn, status, grpcStatus, f) {
		return true
	}
	return f == resilience.FailureNone && slices.Contains(rt.codes, status)
}

func (rt *routeTraffic) retryH1(status int, f h1.Failure) bool {
	return rt.retry(status, resilience.GRPCStatusNone, failureOf(f))
}

// failureOf maps the h1 engine's failure kinds to resilience's.
func failureOf(f h1.Failure) resilience.Failure {
	switch f {
	case h1.FailureConnect:
		return resilience.FailureConnect
	case h1.FailureReset:
		return resilience.FailureReset
	case h1.FailureTimeout:
		return resilience.FailureTimeout
	case h1.FailureRefused:
		return resilience.FailureRefusedStream
	default:
		return resilience.FailureNone
	}
}

// setsCookie reports whether a hash policy makes the proxy set a cookie.
func (rt *routeTraffic) setsCookie() bool {
	for i := range rt.hash {
		if rt.hash[i].Cookie != "" && rt.hash[i].CookieTTL > 0 {
			return true
		}
	}
	return false
}

// requestView is what traffic decisions read of a request, whatever path
// it came on.
type requestView struct {
	// get returns a header's first value by lower-case and canonical name.
	get func(lower, canonical string) string
	// src formats the client's IP, only when a policy needs it.
	src func() string
}

// hashKey returns the request's hash for a hash-based balancer and, when a
// cookie policy with a TTL found no cookie, the Set-Cookie value to add to
// the response (its key is then the new cookie's value).
func (rt *routeTraffic) hashKey(v *requestView) (hash uint64, ok bool, setCookie string) {
	for i := range rt.hash {
		h := &rt.hash[i]
		switch {
		case h.Header != "":
			if s := v.get(h.Header, h.canonical); s != "" {
				return balancer.HashString(s), true, ""
			}
		case h.Cookie != "":
			if s, found := cookieValue(v.get("cookie", "Cookie"), h.Cookie); found {
				return balancer.HashString(s), true, ""
			}
			if h.CookieTTL > 0 {
				val := newCookieValue()
				c := &http.Cookie{Name: h.Cookie, Value: val, Path: h.CookiePath, MaxAge: int(h.CookieTTL / time.Second), HttpOnly: true}
				return balancer.HashString(val), true, c.String()
			}
		case h.SourceIP:
			if s := v.src(); s != "" {
				return balancer.HashString(s), true, ""
			}
		}
	}
	return 0, false, ""
}

// cookieValue finds a cookie in a Cookie header without parsing the rest.
func cookieValue(header, name string) (string, bool) {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		if k == name {
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}

func newCookieValue() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// faultFor draws the route's faults for a request: the first rule whose
// headers match and whose dice hit. filter is set when d is active; the
// caller calls filter.Done when the fault is over.
func (rt *routeTraffic) faultFor(head *requestHead) (d fault.Decision, rf *routeFault) {
	for i := range rt.faults {
		f := &rt.faults[i]
		matched := true
		for j := range f.headers {
			if !f.headers[j].matches(head) {
				matched = false
				break
			}
		}
		if !matched {
			continue
		}
		if d = f.filter.Decide(noLookup); d.Active() {
			return d, f
		}
	}
	return fault.Decision{}, nil
}

// noLookup is the fault filter's header view: the route matcher has
// already checked the rule's headers.
func noLookup(string) (string, bool) { return "", false }

// abortStatus is the HTTP status and gRPC code (-1: none) a fault abort
// answers a request with.
func (f *routeFault) abortStatus(d fault.Decision, grpc bool) (httpStatus, grpcStatus int) {
	switch {
	case grpc && d.GRPCStatus != 0:
		return http.StatusOK, d.GRPCStatus
	case grpc && d.HTTPStatus != 0 && f.grpcStatus >= 0:
		return http.StatusOK, f.grpcStatus
	case d.HTTPStatus != 0:
		return d.HTTPStatus, -1
	case d.GRPCStatus != 0 && f.httpStatus != 0:
		return f.httpStatus, -1
	case d.GRPCStatus != 0:
		return http.StatusServiceUnavailable, -1
	}
	return 0, -1
}

// rewritePath applies the route's path rewrite to path (no query); it
// returns path unchanged without one. Prefix rewrites follow the Gateway
// API: "/foo" replaced by "/bar" maps "/foo/x" to "/bar/x", by "/" maps it
// to "/x".
func rewritePath(rw *config.Rewrite, path string) string {
	switch {
	case rw == nil:
		return path
	case rw.FullPathSet || rw.FullPath != "":
		if rw.FullPath == "" {
			return "/"
		}
		return rw.FullPath
	case rw.PathPrefix != "" || rw.PrefixMatch != "":
		return replacePrefix(path, rw.PrefixMatch, rw.PathPrefix)
	}
	return path
}

// replacePrefix replaces match, a prefix of path, with repl, keeping one
// "/" between the two parts.
func replacePrefix(path, match, repl string) string {
	match = strings.TrimSuffix(match, "/")
	if !strings.HasPrefix(path, match) {
		return path
	}
	rest := path[len(match):]
	if repl == "" {
		repl = "/"
	}
	switch {
	case rest == "":
		return repl
	case strings.HasSuffix(repl, "/") && strings.HasPrefix(rest, "/"):
		return repl + rest[1:]
	case !strings.HasSuffix(repl, "/") && !strings.HasPrefix(rest, "/"):
		return repl + "/" + rest
	}
	return repl + rest
}

// redirectLocation builds a redirect's Location from the request's
// scheme, host, path and query.
func redirectLocation(rd *config.Redirect, scheme, host, path, query string) string {
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	hostname, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		hostname, port = host[:i], host[i+1:]
	}
	if rd.Host != "" {
		hostname = rd.Host
	}
	switch {
	case rd.Port != 0:
		port = strconv.FormatUint(uint64(rd.Port), 10)
	case rd.Scheme != "":
		// Gateway API: a redirect that names a scheme goes to its
		// well-known port.
		port = ""
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	switch {
	case rd.Path != "":
		path = rd.Path
	case rd.PathPrefix != "" || rd.PrefixMatch != "":
		path = replacePrefix(path, rd.PrefixMatch, rd.PathPrefix)
	}
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(hostname)
	if port != "" {
		b.WriteByte(':')
		b.WriteString(port)
	}
	b.WriteString(path)
	if query != "" {
		b.WriteByte('?')
		b.WriteString(query)
	}
	return b.String()
}

// redirectStatus defaults a redirect's status to 302 as Envoy does.
func redirectStatus(rd *config.Redirect) int {
	if rd.Status == 0 {
		return http.StatusFound
	}
	return rd.Status
}

// mirrorHits rolls a mirror's dice.
func mirrorHits(m *config.Mirror) bool {
	return m.Percent >= 100 || (m.Percent > 0 && rand.Float64()*100 < m.Percent)
}

// shadowHost is the Host of a mirrored request, as Envoy and Istio send
// it, so that the shadow service can tell copies apart.
func shadowHost(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		return host[:i] + "-shadow" + host[i:]
	}
	return host + "-shadow"
}

// listenerShed is an inbound listener's priority shedder with the config
// it was built from.
type listenerShed struct {
	cfg     *config.Overload
	shedder *ratelimit.Shedder
	// classes maps a class name to its index (0 most important);
	// fallback is DefaultClass's.
	classes  map[string]int
	fallback int
	// shed counts refusals by class index.
	shed []prometheus.Counter
}

// shedderFor returns the listener's shedder, nil when it has none. It is
// kept across snapshots while the Overload settings stay equal, so a
// config push does not forget the requests in flight.
func (p *Proxy) shedderFor(l *config.Listener) *listenerShed {
	if l.Traffic == nil || l.Traffic.Overload == nil {
		return nil
	}
	o := l.Traffic.Overload
	tm := p.trafficMetrics
	if v, ok := tm.shedders.Load(l.Name); ok {
		ls := v.(*listenerShed)
		if ls.cfg == o {
			return ls
		}
		if sameOverload(ls.cfg, o) {
			// Remember the new pointer so the next lookup is one compare.
			nls := *ls
			nls.cfg = o
			tm.shedders.Store(l.Name, &nls)
			return &nls
		}
	}
	ls, err := newListenerShed(o, statName(l), tm)
	if err != nil {
		p.warnOnce("overload/"+l.Name, "listener overload settings refused", "listener", l.Name, "error", err)
		return nil
	}
	tm.shedders.Store(l.Name, ls)
	return ls
}

func sameOverload(a, b *config.Overload) bool {
	return a.MaxConcurrent == b.MaxConcurrent && a.MaxQueue == b.MaxQueue && a.MaxQueueWait == b.MaxQueueWait &&
		a.Header == b.Header && a.DefaultClass == b.DefaultClass && slices.Equal(a.Classes, b.Classes)
}

func newListenerShed(o *config.Overload, stat string, tm *trafficMetrics) (*listenerShed, error) {
	classes := max(len(o.Classes), 1)
	// Reserve slots for the most important class (ratelimit's package
	// comment): critical requests are then admitted at once even while
	// bulk traffic holds every other slot.
	reserved := 0
	if o.MaxConcurrent > 1 {
		reserved = max(1, o.MaxConcurrent/10)
	}
	wait := o.MaxQueueWait
	if wait <= 0 {
		wait = time.Second
	}
	s, err := ratelimit.NewShedder(ratelimit.ShedConfig{Limit: o.MaxConcurrent, MaxQueue: o.MaxQueue, MaxWait: wait, Classes: classes, Reserved: reserved})
	if err != nil {
		return nil, err
	}
	ls := &listenerShed{cfg: o, shedder: s, classes: map[string]int{}, fallback: classes - 1}
	for i, c := range o.Classes {
		ls.classes[c] = i
		if c == o.DefaultClass {
			ls.fallback = i
		}
		ls.shed = append(ls.shed, tm.shed.WithLabelValues(stat, c))
	}
	if len(ls.shed) == 0 {
		ls.shed = append(ls.shed, tm.shed.WithLabelValues(stat, ""))
	}
	return ls, nil
}

// classOf is the request's class index: the route's class when set, else
// the header's, else the default.
func (ls *listenerShed) classOf(rt *routeTraffic, get func(lower, canonical string) string) int {
	name := ""
	if rt != nil {
		name = rt.class
	}
	if name == "" && ls.cfg.Header != "" {
		name = get(ls.cfg.Header, http.CanonicalHeaderKey(ls.cfg.Header))
	}
	if i, ok := ls.classes[name]; ok {
		return i
	}
	return ls.fallback
}

// acquire admits a request of class or refuses it (counted). It may wait
// up to the listener's MaxQueueWait for a slot, or until ctx ends.
func (ls *listenerShed) acquire(ctx context.Context, class int) (func(), bool) {
	release, err := ls.shedder.Acquire(ctx, class)
	if err != nil {
		ls.shed[min(class, len(ls.shed)-1)].Inc()
		return nil, false
	}
	return release, true
}

// trafficMetrics are the series of route-level traffic management
// (retries, rate-limited and shed requests, faults, mirrors, redirects).
// It also holds the proxy-wide state of that management that outlives
// snapshots (the listeners' shedders, the mirror semaphore), because it is
// what Proxy keeps for this file.
type trafficMetrics struct {
	retries     *prometheus.CounterVec // listener, cluster
	ratelimited *prometheus.CounterVec // listener
	shed        *prometheus.CounterVec // listener, class
	faults      *prometheus.CounterVec // listener, kind (delay|abort)
	mirrors     *prometheus.CounterVec // cluster, result (sent|dropped|failed)
	redirects   *prometheus.CounterVec // listener

	// shedders maps a listener name to its *listenerShed.
	shedders sync.Map
	// mirrorSlots bounds the mirror requests in flight.
	mirrorSlots chan struct{}
}

func newTrafficMetrics(reg interface{ MustRegister(...prometheus.Collector) }) *trafficMetrics {
	m := &trafficMetrics{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_retries_total",
			Help: "Retries sent by listener and cluster.",
		}, []string{"listener", "cluster"}),
		ratelimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_ratelimited_total",
			Help: "Requests refused by a route's local rate limit, by listener.",
		}, []string{"listener"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_shed_total",
			Help: "Requests refused by a listener's overload shedder, by listener and priority class.",
		}, []string{"listener", "class"}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_faults_total",
			Help: "Faults injected by listener and kind (delay, abort).",
		}, []string{"listener", "kind"}),
		mirrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_mirrors_total",
			Help: "Mirrored request copies by cluster and result (sent, dropped, failed).",
		}, []string{"cluster", "result"}),
		redirects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_proxy_redirects_total",
			Help: "Requests answered with a route's redirect, by listener.",
		}, []string{"listener"}),
		mirrorSlots: make(chan struct{}, maxMirrorsInFlight),
	}
	reg.MustRegister(m.retries, m.ratelimited, m.shed, m.faults, m.mirrors, m.redirects)
	return m
}

// startMirror runs fn in a goroutine if a mirror slot is free, else counts
// the copy as dropped. fn's outcome is counted under clusterName.
func (m *trafficMetrics) startMirror(clusterName string, fn func() error) {
	select {
	case m.mirrorSlots <- struct{}{}:
	default:
		m.mirrors.WithLabelValues(clusterName, "dropped").Inc()
		return
	}
	// The goroutine is bounded by the semaphore and by its request's
	// deadline; nobody waits for it, as nobody waits for the answer.
	go func() {
		defer func() { <-m.mirrorSlots }()
		if err := fn(); err != nil {
			m.mirrors.WithLabelValues(clusterName, "failed").Inc()
			return
		}
		m.mirrors.WithLabelValues(clusterName, "sent").Inc()
	}()
}
