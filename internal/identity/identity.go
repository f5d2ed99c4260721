// Package identity owns the control plane's identity API: creating, listing
// and revoking join tokens, issuing X.509 SVIDs to a proxy that presents a
// join token and a CSR, serving the trust bundle, and rotating the CA's root
// (see api.go for the paths and bodies). It also owns StoreTokens, the
// ca.TokenStore that keeps join tokens in the control plane's store, and the
// CA metrics (verge_ca_*).
//
// It owns revocation's bookkeeping too: the issuance log (CertificateLog,
// StoreCertificates: every certificate the CA signs is recorded before it
// is handed out), listing and revoking certificates, revoking every
// certificate descending from a revoked join token, refusing to renew a
// revoked certificate, and the in-memory set of revoked serials the
// control plane's listeners and CRL read (IsRevoked, Revocations). Run
// prunes expired records. Pushing the CRL to proxies is the caller's
// (Config.OnRevoke).
//
// It does not own the cryptography, the token rules or the CA material's file
// format (internal/ca), where the material lives (the control plane passes a
// Persist function), nor anything on the proxy side (keys, CSRs, SDS, mTLS).
//
// It does not authenticate administrators: the control plane puts the API
// behind apiserver.Guard, which admits only administrators to the token,
// certificate list, revocation and rotation endpoints. The certificate endpoint authenticates its callers
// itself: a join token (first issuance) or, over TLS, the client's current
// SVID (renewal, for exactly that identity).
package identity

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"verge.dev/verge/internal/ca"
)

// Refusal reasons, the values of the reason label of
// verge_ca_refusals_total. The set is fixed so the metric stays bounded.
const (
	ReasonMissingToken     = "missing_token"
	ReasonInvalidToken     = "invalid_token"
	ReasonExpiredToken     = "expired_token"
	ReasonRevokedToken     = "revoked_token"
	ReasonUsedUpToken      = "used_up_token"
	ReasonIdentityMismatch = "identity_mismatch"
	ReasonWrongTrustDomain = "wrong_trust_domain"
	ReasonBadCSR           = "bad_csr"
	ReasonUnsupportedKey   = "unsupported_key"
	ReasonTooLarge         = "too_large"
	// ReasonInvalidCertificate is a renewal whose client certificate does
	// not verify against the current bundle.
	ReasonInvalidCertificate = "invalid_certificate"
	// ReasonRevokedCertificate is a renewal whose client certificate is
	// revoked, or descends from a revoked join token.
	ReasonRevokedCertificate = "revoked_certificate"
)

var reasons = []string{
	ReasonMissingToken, ReasonInvalidToken, ReasonExpiredToken, ReasonRevokedToken, ReasonUsedUpToken,
	ReasonIdentityMismatch, ReasonWrongTrustDomain, ReasonBadCSR, ReasonUnsupportedKey, ReasonTooLarge,
	ReasonInvalidCertificate, ReasonRevokedCertificate,
}

// Config configures New. The caller must not modify it after the call.
type Config struct {
	// CA signs certificates and gives the bundle; required.
	CA *ca.CA
	// Tokens creates, redeems and revokes join tokens; required.
	Tokens *ca.Tokens
	// Persist saves the CA material after a rotation (the control plane
	// encrypts it into its data dir); required. Called with rotations
	// serialized.
	Persist func(*ca.Material) error
	// Registerer receives the verge_ca_* metrics; none registered when nil.
	Registerer prometheus.Registerer
	// OnRotate, when set, is called after every rotation, with rotations
	// serialized, once the new root signs (whether or not Persist
	// succeeded): the control plane pushes the new bundle to proxies and
	// renews its own certificate. It must not block for long.
	OnRotate func()
	// Certificates is the issuance log; an in-memory one when nil, which
	// forgets every revocation on restart (the control plane passes
	// StoreCertificates).
	Certificates CertificateLog
	// OnRevoke, when set, is called after certificates were revoked (and
	// by Run's sweep while any revocation is in force, so that the CRL is
	// re-signed before it goes stale), with Revocations already showing
	// them: the control plane pushes a new CRL to proxies. It may be called
	// concurrently and must not block for long.
	OnRevoke func()
	// Clock returns the current time; time.Now when nil. Tests set it.
	Clock func() time.Time
}

// Server serves the identity API. Safe for concurrent use.
type Server struct {
	ca       *ca.CA
	tokens   *ca.Tokens
	persist  func(*ca.Material) error
	onRotate func()
	logger   *slog.Logger

	// rotateMu makes rotate-then-persist atomic, so two concurrent
	// rotations cannot save their material in the wrong order.
	rotateMu sync.Mutex

	certs    CertificateLog
	onRevoke func()
	now      func() time.Time

	// revMu serializes writers of revoked; readers (every TLS handshake)
	// load it without a lock. The map, serial hex to revocation, is never
	// modified once published.
	revMu   sync.Mutex
	revoked atomic.Pointer[map[string]ca.Revocation]

	refusals *prometheus.CounterVec
	issued   prometheus.Counter
	revokedN prometheus.Counter
}

// New returns a Server and registers its metrics on cfg.Registerer.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	if cfg.CA == nil || cfg.Tokens == nil || cfg.Persist == nil {
		return nil, errors.New("new identity server: CA, Tokens and Persist are required")
	}
	s := &Server{
		ca:       cfg.CA,
		tokens:   cfg.Tokens,
		persist:  cfg.Persist,
		onRotate: cfg.OnRotate,
		certs:    cfg.Certificates,
		onRevoke: cfg.OnRevoke,
		now:      cfg.Clock,
		logger:   logger.With("component", "identity"),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_ca_refusals_total",
			Help: "Certificate requests refused, by reason.",
		}, []string{"reason"}),
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verge_ca_certificates_issued_total",
			Help: "X.509 SVIDs issued.",
		}),
		revokedN: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verge_ca_certificates_revoked_total",
			Help: "X.509 SVIDs revoked, one by one or with their join token.",
		}),
	}
	if s.certs == nil {
		s.certs = newMemCertificates()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.revoked.Store(&map[string]ca.Revocation{})
	// Every reason starts at zero so a dashboard sees the series before the
	// first refusal.
	for _, r := range reasons {
		s.refusals.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.refusals, s.issued, s.revokedN} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("new identity server: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Handler serves every path in api.go (TokensPath and CertificatesPath and
// their subtrees, BundlePath, RotatePath); mount it on each of them.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TokensPath, s.createToken)
	mux.HandleFunc("GET "+TokensPath, s.listTokens)
	mux.HandleFunc("DELETE "+TokensPath+"/{id}", s.revokeToken)
	mux.HandleFunc("POST "+CertificatesPath, s.issueCertificate)
	mux.HandleFunc("GET "+CertificatesPath, s.listCertificates)
	mux.HandleFunc("POST "+CertificatesPath+"/{serial}/revoke", s.revokeCertificate)
	mux.HandleFunc("GET "+BundlePath, s.bundle)
	mux.HandleFunc("POST "+RotatePath, s.rotate)
	return mux
}
