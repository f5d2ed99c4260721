package tracing

import (
	"net/http"
	"net/textproto"
)

// HTTPHeaders adapts net/http's header map to Headers. Get, Set and Del
// take the lower-case names the propagators use and map them to their
// canonical form without allocating for the names tracing uses.
type HTTPHeaders http.Header

// Get returns the first value of name, "" when absent.
func (h HTTPHeaders) Get(name string) string {
	if v := h[canonical(name)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values of name with value.
func (h HTTPHeaders) Set(name, value string) { h[canonical(name)] = []string{value} }

// Del removes name.
func (h HTTPHeaders) Del(name string) { delete(h, canonical(name)) }

// Keys makes HTTPHeaders a propagation.TextMapCarrier, which StartSpan
// then uses without wrapping it; the propagators it uses never call Keys.
func (h HTTPHeaders) Keys() []string { return nil }

func canonical(name string) string {
	switch name {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}
