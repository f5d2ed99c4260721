package proxy

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/proxy/balancer"
	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/fault"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/ratelimit"
	"verge.dev/verge/internal/proxy/resilience"
)

// routeTraffic is Route for a request whose route or listener has traffic
// management: admission (redirect, rate limit, shedding, fault abort) is
// decided here, and what the engine does around the exchange (delay,
// rewrites, header edits, retries, mirror) goes in Decision.Traffic.
//
// Shedding may block here, although h1.Router asks not to: an HTTP/1.1
// connection carries one request at a time, so waiting in the listener's
// priority queue (at most its MaxQueueWait) holds only the connection
// whose request waits, and it is what keeps the class order (a critical
// request queued ahead of bulk ones) on this path too. No lock is held
// while waiting.
func (r h1Router) routeTraffic(req *h1.Request, lcfg *config.Listener, stat string, head *requestHead, rte *route, info *routeInfo) h1.Decision {
	p := r.p
	tm := p.trafficMetrics
	rt := rte.traffic
	get := func(lower, _ string) string { return req.Header(lower) }

	if rt != nil && rt.redirect != nil {
		status := redirectStatus(rt.redirect)
		loc := redirectLocation(rt.redirect, "http", req.Host, req.Path, head.query)
		tm.redirects.WithLabelValues(stat).Inc()
		p.metrics.request(stat, "", status)
		return h1.Decision{Status: status, Header: []h1.Field{{Name: "location", Value: loc}}}
	}
	if rt != nil && rt.limit != nil {
		if ok, wait := rt.limit.allow(r.src.String(), get); !ok {
			tm.ratelimited.WithLabelValues(stat).Inc()
			p.metrics.request(stat, "", http.StatusTooManyRequests)
			return h1.Decision{Status: http.StatusTooManyRequests,
				Header: []h1.Field{{Name: "retry-after", Value: strconv.FormatInt(ratelimit.RetryAfterSeconds(wait), 10)}}}
		}
	}
	f := &h1Flow{p: p, rt: rt, stat: stat}
	if ls := p.shedderFor(lcfg); ls != nil {
		release, ok := ls.acquire(context.Background(), ls.classOf(rt, get))
		if !ok {
			p.metrics.request(stat, "", http.StatusServiceUnavailable)
			return h1.Decision{Status: http.StatusServiceUnavailable}
		}
		f.release = release
	}
	var delay time.Duration
	if rt != nil && len(rt.faults) > 0 {
		d, rf := rt.faultFor(head)
		if rf != nil {
			f.fault = rf.filter
			if d.Delay > 0 {
				delay = d.Delay
				tm.faults.WithLabelValues(stat, "delay").Inc()
			}
			if status, _ := rf.abortStatus(d, false); status != 0 {
				// The engine's local reply cannot be delayed: an abort
				// drawn together with a delay answers at once.
				tm.faults.WithLabelValues(stat, "abort").Inc()
				return f.local("", status)
			}
		}
	}
	cl := rte.pickCluster()
	if cl == nil {
		return f.local("", http.StatusServiceUnavailable)
	}
	if info != nil {
		info.cl = cl
	}
	f.cl = cl
	if cl.cfg.Protocol != config.UpstreamHTTP1 || (cl.tlsAddrs != nil && !p.bridgeOut()) {
		// As in Route: the table changed under a kept-alive connection.
		return f.local(cl.name, http.StatusServiceUnavailable)
	}
	if !cl.guard.admit() {
		return f.local(cl.name, http.StatusServiceUnavailable)
	}
	f.admitted = true
	var setCookie string
	var ep *balancer.Endpoint
	if rt != nil && len(rt.hash) > 0 {
		view := requestView{get: get, src: r.src.String}
		hash, ok, sc := rt.hashKey(&view)
		setCookie = sc
		if hp, isHash := cl.bal.(balancer.HashPicker); ok && isHash {
			ep = hp.PickHash(hash)
		} else {
			ep = cl.bal.Pick()
		}
	} else {
		ep = cl.bal.Pick()
	}
	if ep == nil {
		return f.local(cl.name, http.StatusServiceUnavailable)
	}
	up, ok := f.upstreamOf(ep)
	if !ok {
		ep.Done()
		return f.local(cl.name, http.StatusBadGateway)
	}
	f.ep, f.start = ep, time.Now()
	f.active = p.metrics.activeRequests.WithLabelValues(stat)
	f.active.Inc()
	return h1.Decision{
		Addr:     ep.Address,
		Upstream: up,
		Timeout:  rte.timeout,
		Done:     f.done,
		Traffic:  f.traffic(req, delay, setCookie),
	}
}

// h1Flow is the state of one fast-path exchange with traffic management,
// shared by the callbacks the engine makes (Next, Mirror, Done).
type h1Flow struct {
	p    *Proxy
	rt   *routeTraffic
	cl   *cluster
	stat string
	// ep is the endpoint of the attempt in progress, nil once reported.
	ep       *balancer.Endpoint
	start    time.Time
	retrying bool // ep's attempt is a retry holding a guard retry slot
	admitted bool // guard.admit succeeded: done is owed
	release  func()
	fault    *fault.Filter
	active   prometheus.Gauge
	tr       h1.Traffic
}

// traffic returns what the engine does around the exchange: the route's
// shared template when nothing is per request, else f's own.
func (f *h1Flow) traffic(req *h1.Request, delay time.Duration, setCookie string) *h1.Traffic {
	rt := f.rt
	if rt == nil {
		return nil
	}
	if rt.static != nil && delay == 0 {
		return rt.static
	}
	tr := &f.tr
	tr.Delay = delay
	tr.RequestHeaders, tr.ResponseHeaders = rt.reqEdits, rt.respEdits
	if setCookie != "" {
		e := &h1.HeaderEdits{}
		if rt.respEdits != nil {
			*e = *rt.respEdits
		}
		e.Add = append(e.Add[:len(e.Add):len(e.Add)], h1.Field{Name: "set-cookie", Value: setCookie})
		tr.ResponseHeaders = e
	}
	if rw := rt.rewrite; rw != nil {
		if path := rewritePath(rw, req.Path); path != req.Path {
			target := path
			if _, q, ok := strings.Cut(req.Target, "?"); ok {
				target += "?" + q
			}
			tr.Target = target
		}
		tr.Host = rw.Host
	}
	if rt.attempts > 0 {
		tr.Attempts = rt.attempts
		tr.PerTryTimeout = rt.perTry
		tr.Backoff = rt.h1Backoff
		tr.RetryOn = rt.h1RetryOn
		tr.Next = f.next
	}
	if len(rt.mirrors) > 0 {
		tr.Mirror = f.mirror
	}
	return tr
}

// upstreamOf returns what carries an exchange with ep: the bridge for a
// TLS endpoint (a peer proxy), the engine's pool otherwise; false when
// the cluster's TLS endpoints cannot be reached.
func (f *h1Flow) upstreamOf(ep *balancer.Endpoint) (h1.Upstream, bool) {
	cl := f.cl
	if !cl.isTLS(ep.Address) {
		return nil, true
	}
	if cl.tls.err != nil {
		f.p.warnOnce("cluster/"+cl.name, "tls endpoints not reached", "cluster", cl.name, "error", cl.tls.err)
		return nil, false
	}
	return cl.tls, true
}

// local ends a flow that sends nothing upstream with a local reply.
func (f *h1Flow) local(clusterName string, status int) h1.Decision {
	f.finish()
	f.p.metrics.request(f.stat, clusterName, status)
	return h1.Decision{Status: status}
}

// finish gives back what admission took.
func (f *h1Flow) finish() {
	if f.retrying {
		f.cl.guard.retryDone()
		f.retrying = false
	}
	if f.admitted {
		f.cl.guard.done()
		f.admitted = false
	}
	if f.release != nil {
		f.release()
		f.release = nil
	}
	if f.fault != nil {
		f.fault.Done()
		f.fault = nil
	}
}

// next implements h1.Traffic.Next: it reports the previous attempt and
// picks another endpoint (a different one when the cluster has several)
// if the cluster's breaker and retry budget allow a retry.
func (f *h1Flow) next(status int, fl h1.Failure) (string, h1.Upstream, bool) {
	cl := f.cl
	if f.ep != nil {
		cl.guard.report(f.ep, status, failureOf(fl), time.Since(f.start))
	}
	prev := ""
	if f.ep != nil {
		prev = f.ep.Address
	}
	f.ep = nil
	if f.retrying {
		cl.guard.retryDone()
		f.retrying = false
	}
	if !cl.guard.tryRetry() {
		return "", nil, false
	}
	ep := pickOther(cl.bal, prev)
	if ep == nil {
		cl.guard.retryDone()
		return "", nil, false
	}
	up, ok := f.upstreamOf(ep)
	if !ok {
		ep.Done()
		cl.guard.retryDone()
		return "", nil, false
	}
	f.ep, f.start, f.retrying = ep, time.Now(), true
	f.p.trafficMetrics.retries.WithLabelValues(f.stat, cl.name).Inc()
	return ep.Address, up, true
}

// pickOther picks an endpoint other than prev when a few picks find one.
func pickOther(bal balancer.Balancer, prev string) *balancer.Endpoint {
	for i := 0; ; i++ {
		ep := bal.Pick()
		if ep == nil || ep.Address != prev || i == 2 {
			return ep
		}
		ep.Done()
	}
}

// done implements Decision.Done.
func (f *h1Flow) done(status int, err error) {
	if f.ep != nil {
		fl := resilience.FailureNone
		if status == 0 && err != nil {
			fl = resilience.FailureReset
		}
		f.cl.guard.report(f.ep, status, fl, time.Since(f.start))
		f.ep = nil
	}
	f.finish()
	f.active.Dec()
	if status == 0 {
		status = 499
	}
	f.p.metrics.request(f.stat, f.cl.name, status)
}

// mirror implements h1.Traffic.Mirror: it copies req (valid only during
// the call) and sends the copy to each mirror cluster whose share hits,
// without waiting.
func (f *h1Flow) mirror(req *h1.OutRequest) {
	var cp *mirrorCopy
	st := f.p.state.Load()
	for i := range f.rt.mirrors {
		m := &f.rt.mirrors[i]
		if !mirrorHits(m) {
			continue
		}
		if cp == nil {
			var ok bool
			if cp, ok = copyOutRequest(req); !ok {
				return
			}
		}
		f.p.mirrorTo(st, m.Cluster, cp)
	}
}
