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
//
// The engine also executes what a route's traffic management decided
// (Decision.Traffic, see traffic.go): target and Host rewrites, header
// edits, an injected delay, retries with per-try timeouts and backoff
// over either kind of exchange, and a mirror copy of the request; and it
// writes the extra fields of local replies (Decision.Header: redirects,
// rate limits). What to do is the Router's business (package proxy
// compiles it per snapshot); this package only carries it out, and a
// Decision without Traffic costs one nil check.
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
	// Header holds extra fields of the local reply when Addr is empty
	// (Location for a redirect, Retry-After for a rate limit).
	Header []Field
	// Traffic is the route's traffic management for this exchange; nil
	// keeps the plain single exchange (the fast path pays one nil check).
	Traffic *Traffic
	// Stats, if set, is filled in before Done is called, for metrics and
	// access logs; the router owns it (it may pool it).
	Stats *Stats
}

// Stats is what an exchange moved.
type Stats struct {
	// BytesIn is the request body received from the client (decoded);
	// BytesOut the response body sent to it (decoded, local replies
	// included).
	BytesIn, BytesOut int64
	// Retries is the number of attempts after the first.
	Retries int
	// Addr is the endpoint of the final attempt ("" for a local reply).
	Addr string
}

// Field is one header field.
type Field struct{ Name, Value string }

// Traffic is what the engine does around an exchange besides forwarding
// it: rewrites, header edits, an injected delay, retries and a mirror. The
// engine applies it on both kinds of exchange (pooled HTTP/1.1 and an
// Upstream). It is read-only for the engine and may be shared between
// requests, except for the callbacks' own state.
type Traffic struct {
	// Delay holds the request this long before the first attempt (fault
	// injection); the exchange's deadline keeps running.
	Delay time.Duration
	// Target, when not empty, replaces the request-target sent upstream
	// (origin-form, query included); Host, when not empty, the Host.
	Target string
	Host   string
	// RequestHeaders edit the request sent upstream, ResponseHeaders the
	// response sent downstream (names lower case; Set replaces every
	// field of the name, Add appends, Remove drops).
	RequestHeaders, ResponseHeaders *HeaderEdits
	// Attempts is the number of retries allowed after the first try. A
	// request whose body cannot be replayed (chunked, Expect: 100-continue,
	// or larger than what the engine holds in its buffer) is never
	// retried.
	Attempts int
	// PerTryTimeout bounds each try (zero: only Decision.Timeout).
	PerTryTimeout time.Duration
	// Backoff returns the pause before retry n (1-based); nil means none.
	Backoff func(n int) time.Duration
	// RetryOn reports whether an attempt's outcome is retried: status is
	// the response status (0 when no response head arrived) and failure
	// what went wrong before one did. A retried response is discarded
	// with its connection, never relayed.
	RetryOn func(status int, failure Failure) bool
	// Next is called before each retry with the outcome of the previous
	// attempt; it picks the endpoint of the next one (accounting for the
	// previous endpoint as it sees fit) or returns ok false to stop
	// retrying, and the previous outcome is then what the client gets.
	// Decision.Done reports the final attempt's outcome.
	Next func(status int, failure Failure) (addr string, up Upstream, ok bool)
	// Mirror, when set, receives a copy of the request as sent upstream
	// (after rewrites and edits; the body only when it is replayable, else
	// the mirror is skipped) once the request has been sent to the first
	// attempt; it must not block (it starts its own goroutine).
	Mirror func(req *OutRequest)
}

// HeaderEdits are header changes applied in order: Set, Add, Remove.
type HeaderEdits struct {
	Set    []Field
	Add    []Field
	Remove []string
}

// Failure is what went wrong in an attempt that got no response head.
type Failure int

const (
	// FailureNone: a response head arrived.
	FailureNone Failure = iota
	// FailureConnect: no connection could be made.
	FailureConnect
	// FailureReset: the connection broke before a response head.
	FailureReset
	// FailureTimeout: the attempt's deadline passed.
	FailureTimeout
	// FailureRefused: the upstream refused the stream before processing
	// it (HTTP/2 REFUSED_STREAM or GOAWAY), so a retry is always safe.
	FailureRefused
)

// Router picks the upstream for a request. It is called on the downstream
// connection's goroutine, concurrently for different connections, and must
// not block.
type Router interface {
	Route(req *Request) Decision
}
