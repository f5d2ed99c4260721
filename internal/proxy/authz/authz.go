// Package authz is the proxy's authorization engine: it compiles the
// authorization policies a listener carries (Envoy RBAC and JWT
// authentication filters, as the control plane sends them) into an Engine
// that decides one request or connection, and records decisions (metrics and
// the audit log). Policies are enforced at the destination's proxy, so only
// inbound listeners carry an Engine.
//
// CONTRACT STUB: the types and method sets below are what the data path
// (package proxy) and the xDS client build against; their bodies are being
// written.
package authz

import (
	"io"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

// Action is what a matched policy does.
type Action int

const (
	ActionAllow Action = iota + 1
	ActionDeny
	ActionAudit
)

// Request is what one decision reads. The data path fills what it knows; a
// TCP connection has HTTP false and no HTTP fields.
type Request struct {
	// Principal is the peer's SPIFFE ID from its mTLS certificate
	// ("spiffe://verge.local/ns/default/sa/web"), empty for plaintext.
	Principal string
	SourceIP  netip.Addr
	// DestPort is the port the connection reached (the listener's).
	DestPort uint32
	// HTTP is true for an HTTP or gRPC request.
	HTTP bool
	// Method, Path (without the query) and Host (authority) of the request.
	Method string
	Path   string
	Host   string
	// Header returns the first value of a header by lower-case name, ""
	// when absent. It must be set when HTTP is true. The engine reads
	// headers only as its rules need them (the bearer token for JWT rules,
	// named headers, every header only when a CEL condition asks for
	// request.headers), so the data path builds no map per request.
	Header func(name string) string
	// VisitHeaders calls fn for every header (lower-case name) until fn
	// returns false; used only by CEL conditions over request.headers.
	VisitHeaders func(fn func(name, value string) bool)
}

// Decision is the outcome for one request or connection.
type Decision struct {
	// Allowed is false when the request must be refused (HTTP 403, gRPC
	// PERMISSION_DENIED, TCP close).
	Allowed bool
	// Policy and Rule name what decided: the DENY or ALLOW policy that
	// matched, empty when no policy matched. Rule is the rule's name
	// ("rules[2]" when unnamed).
	Policy string
	Rule   string
	// Audited lists the AUDIT policies that matched ("policy/rule").
	Audited []string
	// Reason is a short human-readable cause ("denied by policy x rule y",
	// "no ALLOW policy matched", "JWT: signature invalid").
	Reason string
}

// Engine is a listener's compiled policy set. It is immutable and safe for
// concurrent use; a nil *Engine allows everything.
type Engine struct{}

// Check decides r. A nil Engine allows.
func (e *Engine) Check(r *Request) Decision {
	return Decision{Allowed: true}
}

// NeedsHTTP reports whether any rule reads HTTP fields; a TCP listener's
// engine never does.
func (e *Engine) NeedsHTTP() bool { return false }

// Recorder counts every decision (verge_authz_decisions_total) and writes
// deny and audit decisions to the audit log, one JSON line each with time,
// source (principal and IP), destination (listener, port, method, path),
// policy, rule and reason. Writing never blocks the request path: lines go
// through a bounded queue, and what does not fit is counted as dropped.
type Recorder struct{}

// NewRecorder returns a recorder writing the audit log to w (nil: no audit
// log, decisions are still counted). Close flushes it.
func NewRecorder(w io.Writer) *Recorder { return &Recorder{} }

// Record accounts one decision made on the named listener.
func (r *Recorder) Record(listener string, req *Request, d Decision) {}

// Collectors are the recorder's metrics, for the proxy's registry.
func (r *Recorder) Collectors() []prometheus.Collector { return nil }

// Close flushes the audit log queue.
func (r *Recorder) Close() error { return nil }
