package xds

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"verge.dev/verge/internal/ca"
)

// Refusal reasons of verge_xds_auth_refusals_total. The set is fixed so the
// metric stays bounded.
const (
	AuthNoCertificate      = "no_client_certificate"
	AuthInvalidCertificate = "invalid_certificate"
	AuthWorkloadNotFound   = "workload_not_found"
	AuthIdentityMismatch   = "identity_mismatch"
	AuthLookupFailed       = "lookup_failed"
)

var authReasons = []string{AuthNoCertificate, AuthInvalidCertificate, AuthWorkloadNotFound, AuthIdentityMismatch, AuthLookupFailed}

// WorkloadLookup returns the spec.serviceAccount of the stored Workload
// namespace/name; found is false when there is none. It is called from gRPC
// stream goroutines, concurrently, once per stream (and again when a stream
// names another workload), and should read a consistent source (the store)
// so that a proxy that has just registered its Workload is not refused.
type WorkloadLookup func(ctx context.Context, namespace, name string) (serviceAccount string, found bool, err error)

// AuthnConfig configures NewAuthenticator.
type AuthnConfig struct {
	// TrustDomain is the mesh's; required.
	TrustDomain spiffeid.TrustDomain
	// Bundle verifies client certificates (again: the transport already
	// did, but the check must not depend on how the listener was built);
	// required.
	Bundle x509bundle.Source
	// Workloads looks up a Workload's service account; required.
	Workloads WorkloadLookup
	// AllowAnonymous lets a node that names a workload but presents no
	// client certificate through (the control plane's
	// --insecure-allow-anonymous, for proxies that have no identity yet).
	// A certificate that is presented is checked all the same.
	AllowAnonymous bool
	// Registerer receives verge_xds_auth_refusals_total; none when nil.
	Registerer prometheus.Registerer
}

// Authenticator decides which xDS streams may receive a Verge proxy's view.
// A node whose metadata names a workload ("workload": "ns/name") must come
// over TLS with an X.509 SVID of that workload's identity:
// spiffe://<td>/ns/<ns>/sa/<the Workload's spec.serviceAccount>. Any other
// node is let through: it gets the proxyless view, which holds nothing a
// proxy of the mesh could not read from the API anonymously.
type Authenticator struct {
	cfg      AuthnConfig
	logger   *slog.Logger
	refusals *prometheus.CounterVec
}

// NewAuthenticator checks cfg and registers the refusal metric.
func NewAuthenticator(cfg AuthnConfig, logger *slog.Logger) (*Authenticator, error) {
	if cfg.TrustDomain.IsZero() || cfg.Bundle == nil || cfg.Workloads == nil {
		return nil, errors.New("new xds authenticator: TrustDomain, Bundle and Workloads are required")
	}
	a := &Authenticator{
		cfg:    cfg,
		logger: logger.With("component", "xds-authn"),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_xds_auth_refusals_total",
			Help: "xDS streams refused because the client's identity does not match the workload it names, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range authReasons {
		a.refusals.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a.refusals); err != nil {
			return nil, fmt.Errorf("new xds authenticator: register metrics: %w", err)
		}
	}
	return a, nil
}

// StreamInterceptor returns the gRPC interceptor that enforces the rule on
// every xDS stream (ADS and the per-type services, state of the world and
// delta). It reads the stream's first request itself, so that a refusal
// ends the stream with PermissionDenied before the xDS server sees the
// node, and re-checks any later request that names another workload.
// Streams of other services pass untouched.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		newMsg := requestType(info.FullMethod)
		if newMsg == nil {
			return handler(srv, ss)
		}
		first := newMsg()
		if err := ss.RecvMsg(first); err != nil {
			return err
		}
		as := &authStream{ServerStream: ss, a: a, first: first}
		if err := as.check(first); err != nil {
			return err
		}
		if err := handler(srv, as); err != nil {
			return err
		}
		// go-control-plane ends a stream whose Recv fails with a nil error;
		// report the refusal that made Recv fail instead.
		return as.refused
	}
}

// requestType returns a constructor of the request message of an xDS
// streaming method, or nil for any other method.
func requestType(fullMethod string) func() proto.Message {
	svc, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok || !strings.HasPrefix(svc, "envoy.service.") {
		return nil
	}
	switch {
	case strings.HasPrefix(method, "Delta"):
		return func() proto.Message { return new(discovery.DeltaDiscoveryRequest) }
	case strings.HasPrefix(method, "Stream"):
		return func() proto.Message { return new(discovery.DiscoveryRequest) }
	}
	return nil
}

// authStream hands the first request, already read, to the xDS server and
// checks every later one that names a different workload.
type authStream struct {
	grpc.ServerStream
	a     *Authenticator
	first proto.Message
	// checked is the workload value last allowed on this stream.
	checked string
	// refused is the refusal that ended the stream, returned by the
	// interceptor in place of the handler's nil.
	refused error
}

func (s *authStream) RecvMsg(m any) error {
	if s.first != nil {
		first := s.first
		s.first = nil
		pm, ok := m.(proto.Message)
		if !ok {
			return status.Errorf(codes.Internal, "xds authn: unexpected message type %T", m)
		}
		proto.Reset(pm)
		proto.Merge(pm, first)
		return nil
	}
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.check(m); err != nil {
		s.refused = err
		// The xDS server stops reading and ends the stream on any error.
		return io.EOF
	}
	return nil
}

// check authorizes the workload a request's node names. Requests without a
// node (only the first must carry one) keep the stream's earlier decision.
func (s *authStream) check(m any) error {
	r, ok := m.(interface{ GetNode() *corev3.Node })
	if !ok || r.GetNode() == nil {
		return nil
	}
	node := r.GetNode()
	ns, name := parseWorkload(node)
	if name == "" {
		return nil // proxyless view
	}
	wl := joinWorkload(ns, name)
	if wl == s.checked {
		return nil
	}
	if err := s.a.authorize(s.Context(), node.GetId(), ns, name); err != nil {
		return err
	}
	s.checked = wl
	return nil
}

// authorize returns nil when the stream's peer may act for workload
// ns/name, else a PermissionDenied status naming the mismatch (counted and
// logged).
func (a *Authenticator) authorize(ctx context.Context, nodeID, ns, name string) error {
	id, ref := a.check(ctx, peerCertificates(ctx), fmt.Sprintf("node %q", nodeID), ns, name)
	if ref == nil {
		if id.IsZero() {
			a.logger.Debug("xds stream without identity allowed (--insecure-allow-anonymous)", "node", nodeID, "workload", joinWorkload(ns, name))
			return nil
		}
		a.logger.Debug("xds stream authorized", "node", nodeID, "workload", joinWorkload(ns, name), "spiffe_id", id.String())
		return nil
	}
	a.refusals.WithLabelValues(ref.Reason).Inc()
	attrs := []any{"reason", ref.Reason, "node", nodeID, "workload", joinWorkload(ns, name), "peer", peerAddr(ctx)}
	if !id.IsZero() {
		attrs = append(attrs, "spiffe_id", id.String())
	}
	if ref.err != nil {
		attrs = append(attrs, "err", ref.err)
	}
	if ref.Unavailable {
		a.logger.Error("xds stream refused: workload lookup failed", attrs...)
		return status.Error(codes.Unavailable, ref.Message)
	}
	a.logger.Warn("xds stream refused", attrs...)
	return status.Error(codes.PermissionDenied, ref.Message)
}

// WorkloadRefusal is why a caller may not act for a workload.
type WorkloadRefusal struct {
	// Reason is one of the Auth* refusal reasons.
	Reason  string
	Message string
	// Unavailable is true when the workload could not be looked up: the
	// caller should try again.
	Unavailable bool
	err         error
}

func (r *WorkloadRefusal) Error() string { return r.Message }
func (r *WorkloadRefusal) Unwrap() error { return r.err }

// AuthorizeWorkload applies the rule of xDS streams to another request of
// a proxy (its telemetry reports): certs, the client certificate chain of
// the caller's TLS connection (nil without one), must be an X.509 SVID of
// this mesh with workload ns/name's namespace and service account, looked
// up as for streams. It returns nil or a *WorkloadRefusal; without
// certificates it allows the request only with AllowAnonymous. Refusals
// are neither counted nor logged here (the metric counts streams): the
// caller does both. Safe for concurrent use.
func (a *Authenticator) AuthorizeWorkload(ctx context.Context, certs []*x509.Certificate, ns, name string) error {
	if _, ref := a.check(ctx, certs, "caller", ns, name); ref != nil {
		return ref
	}
	return nil
}

// check decides whether certs may act for workload ns/name; who names the
// caller in messages. It returns the verified identity (zero when none was
// presented and that is allowed) and the refusal, nil when allowed.
func (a *Authenticator) check(ctx context.Context, certs []*x509.Certificate, who, ns, name string) (spiffeid.ID, *WorkloadRefusal) {
	if len(certs) == 0 {
		if a.cfg.AllowAnonymous {
			return spiffeid.ID{}, nil
		}
		return spiffeid.ID{}, &WorkloadRefusal{Reason: AuthNoCertificate,
			Message: fmt.Sprintf("%s names workload %s/%s: a client certificate (X.509 SVID of the workload's service account) is required over TLS", who, ns, name)}
	}
	id, _, err := x509svid.Verify(certs, a.cfg.Bundle)
	if err != nil {
		return spiffeid.ID{}, &WorkloadRefusal{Reason: AuthInvalidCertificate, err: err,
			Message: fmt.Sprintf("%s: client certificate is not a valid SVID of this mesh", who)}
	}
	idNS, idSA, err := ca.ParseWorkloadID(id)
	if err != nil || !id.MemberOf(a.cfg.TrustDomain) {
		return id, &WorkloadRefusal{Reason: AuthIdentityMismatch,
			Message: fmt.Sprintf("%s: identity %s is not a workload identity of trust domain %q", who, id, a.cfg.TrustDomain.Name())}
	}
	if idNS != ns {
		return id, &WorkloadRefusal{Reason: AuthIdentityMismatch,
			Message: fmt.Sprintf("%s: identity %s is in namespace %q, workload %s/%s is in %q", who, id, idNS, ns, name, ns)}
	}
	sa, found, err := a.cfg.Workloads(ctx, ns, name)
	switch {
	case err != nil:
		return id, &WorkloadRefusal{Reason: AuthLookupFailed, Unavailable: true, err: err,
			Message: fmt.Sprintf("look up workload %s/%s: try again", ns, name)}
	case !found:
		return id, &WorkloadRefusal{Reason: AuthWorkloadNotFound,
			Message: fmt.Sprintf("%s: workload %s/%s does not exist: register it before connecting", who, ns, name)}
	case sa != idSA:
		return id, &WorkloadRefusal{Reason: AuthIdentityMismatch,
			Message: fmt.Sprintf("%s: identity %s has service account %q, workload %s/%s runs as %q", who, id, idSA, ns, name, sa)}
	}
	return id, nil
}

// peerCertificates returns the client certificates of a TLS stream, or nil.
func peerCertificates(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return ti.State.PeerCertificates
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
