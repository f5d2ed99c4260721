package proxy

import (
	"context"
	"net/http"
	"strconv"

	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/h2"
	"verge.dev/verge/internal/proxy/ratelimit"
)

// admit applies the inbound admission controls to a bridge stream: the
// matched route's local rate limit (keyed by the peer's SPIFFE ID for
// "source") and the listener's priority shedder. It answers the stream
// and returns false when refused; otherwise release, when not nil, must be
// called once the stream is done. Streams are served on goroutines of
// their own, so waiting in the shedder's queue holds only this stream.
func (b bridgeConn) admit(s *h2.Stream, lcfg *config.Listener, stat string, rte *route) (release func(), ok bool) {
	p := b.p
	tm := p.trafficMetrics
	rt := rte.traffic
	get := func(lower, _ string) string { return s.Get(lower) }
	if rt != nil && rt.limit != nil {
		source := b.principal
		if source == "" {
			source = b.src.String()
		}
		if ok, wait := rt.limit.allow(source, get); !ok {
			tm.ratelimited.WithLabelValues(stat).Inc()
			body := h1.LocalBody(http.StatusTooManyRequests)
			hdr := []hpack.HeaderField{
				{Name: "retry-after", Value: strconv.FormatInt(ratelimit.RetryAfterSeconds(wait), 10)},
				{Name: "content-type", Value: "text/plain; charset=utf-8"},
				{Name: "content-length", Value: formatLength(int64(len(body)))},
			}
			if s.WriteHeader(http.StatusTooManyRequests, hdr, false, false) == nil {
				_ = s.WriteData([]byte(body), true, true)
			}
			p.metrics.request(stat, "", http.StatusTooManyRequests)
			return nil, false
		}
	}
	if ls := p.shedderFor(lcfg); ls != nil {
		rel, ok := ls.acquire(context.Background(), ls.classOf(rt, get))
		if !ok {
			localReply(s, http.StatusServiceUnavailable, h1.LocalBody(http.StatusServiceUnavailable))
			p.metrics.request(stat, "", http.StatusServiceUnavailable)
			return nil, false
		}
		return rel, true
	}
	return nil, true
}
