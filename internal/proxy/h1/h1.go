// Package h1 is the proxy's HTTP/1.1 fast path: it reads requests from a
// downstream connection, forwards each to a pooled upstream HTTP/1.1
// connection and streams the response back, all on the connection's own
// goroutine.
//
// It is written by hand, not built on net/http, because net/http's server and
// Transport hand every request across three goroutines (conn reader, handler,
// Transport's writeLoop/readLoop), and each hand-off costs a wake-up that, on a
// 2-core edge box, dominates the latency a proxy hop adds. HTTP/2, gRPC and
// h2c upgrade stay on net/http (package proxy hands such connections there).
//
// Two seams let package proxy's HTTP/2 bridge between proxies reuse the
// engine: a Router may return a Decision whose Upstream carries the
// exchange (an HTTP/2 stream to a peer proxy instead of a pooled HTTP/1.1
// connection), and Pool.RoundTrip sends a request that did not come from
// Serve (a stream the peer proxy sent) to an application.
package h1

import (
	"time"
)

// Request is a parsed request head as the Router sees it. It is valid only
// during the Route call; the router must copy what it keeps.
type Request struct {
	Method string
	// Target is the request-target as sent (origin-form "/p?q" normally).
	Target string
	// Path is Target without the query.
	Path string
	// Host is the Host header (or the authority of an absolute-form target).
	Host string
	// Header returns the first value of a header (case-insensitive name), "" if absent.
	Header func(name string) string
	// VisitHeaders calls fn with every header field in order (name in
	// lower case) until fn returns false.
	VisitHeaders func(fn func(name, value string) bool)
}

// Decision is the router's answer for one request.
type Decision struct {
	// Addr is the upstream endpoint "host:port". Empty means answer locally
	// with Status.
	Addr string
	// Status is the local reply's status when Addr is empty (404 no route,
	// 503 no healthy endpoint).
	Status int
	// Upstream, if set, carries the exchange instead of a pooled HTTP/1.1
	// connection to Addr (which then only names the endpoint in errors).
	Upstream Upstream
	// Timeout bounds the whole exchange with the upstream; zero means none.
	Timeout time.Duration
	// Done, if set, is called exactly once when the exchange ends, with the
	// status of the response the client was sent (the upstream's, or the
	// proxy's own reply when the exchange failed before a response head
	// arrived; 0 if nothing was sent) and the error, if any. Used for
	// least-request accounting and metrics, which so count what the client
	// saw.
	Done func(status int, err error)
}

// Router picks the upstream for a request. It is called on the downstream
// connection's goroutine, concurrently for different connections, and must
// not block.
type Router interface {
	Route(req *Request) Decision
}
