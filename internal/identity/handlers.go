package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/internal/ca"
)

// createToken serves POST /api/v1/tokens.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	spec, err := tokenSpec(req)
	if err != nil {
		writeError(w, err)
		return
	}
	secret, tok, err := s.tokens.Create(r.Context(), spec)
	if err != nil {
		s.internal(w, "create join token", err)
		return
	}
	s.logger.Info("join token created", "token", tok)
	writeJSON(w, http.StatusCreated, TokenCreated{
		ID:             tok.ID,
		Token:          string(secret),
		Namespace:      tok.Namespace,
		ServiceAccount: tok.ServiceAccount,
		ExpiresAt:      tok.ExpiresAt,
		Uses:           tok.Uses,
	})
}

// tokenSpec defaults and validates req, reporting every bad field at once.
func tokenSpec(req TokenRequest) (ca.TokenSpec, error) {
	spec := ca.TokenSpec{Namespace: req.Namespace, ServiceAccount: req.ServiceAccount, TTL: DefaultTokenTTL, Uses: DefaultUses}
	if spec.Namespace == "" {
		spec.Namespace = DefaultNS
	}
	if req.Uses != nil {
		spec.Uses = *req.Uses
	}
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(spec.Namespace) {
		errs = append(errs, field.Invalid(field.NewPath("namespace"), spec.Namespace, msg))
	}
	if spec.ServiceAccount == "" {
		errs = append(errs, field.Required(field.NewPath("serviceAccount"), ""))
	}
	for _, msg := range validation.IsDNS1123Subdomain(spec.ServiceAccount) {
		if spec.ServiceAccount != "" {
			errs = append(errs, field.Invalid(field.NewPath("serviceAccount"), spec.ServiceAccount, msg))
		}
	}
	if req.TTL != "" {
		ttl, err := time.ParseDuration(req.TTL)
		switch {
		case err != nil:
			errs = append(errs, field.Invalid(field.NewPath("ttl"), req.TTL, "must be a duration such as 1h or 30m"))
		case ttl <= 0:
			errs = append(errs, field.Invalid(field.NewPath("ttl"), req.TTL, "must be positive"))
		case ttl > MaxTokenTTL:
			errs = append(errs, field.Invalid(field.NewPath("ttl"), req.TTL, "must be at most "+MaxTokenTTL.String()+" (30 days)"))
		default:
			spec.TTL = ttl
		}
	}
	if spec.Uses < 0 {
		errs = append(errs, field.Invalid(field.NewPath("uses"), spec.Uses, "must be at least 0 (0 is unlimited)"))
	}
	if len(errs) > 0 {
		return ca.TokenSpec{}, &invalidError{what: "join token", errs: errs}
	}
	return spec, nil
}

// listTokens serves GET /api/v1/tokens.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := s.tokens.List(r.Context())
	if err != nil {
		s.internal(w, "list join tokens", err)
		return
	}
	list := TokenList{Items: make([]TokenInfo, 0, len(toks))}
	for _, t := range toks {
		list.Items = append(list.Items, TokenInfo{
			ID: t.ID, Namespace: t.Namespace, ServiceAccount: t.ServiceAccount,
			CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt, Uses: t.Uses, Used: t.Used, Revoked: t.Revoked,
		})
	}
	writeJSON(w, http.StatusOK, list)
}

// revokeToken serves DELETE /api/v1/tokens/{id}: the token stays listed,
// marked revoked, until it expires, and every unexpired certificate that
// descends from it is revoked. Repeating the request is harmless, and
// finishes a cascade a store failure interrupted.
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.tokens.Revoke(r.Context(), id); err != nil {
		if errors.Is(err, ca.ErrTokenNotFound) {
			writeError(w, fmt.Errorf("join token %q: %w", id, ca.ErrTokenNotFound))
			return
		}
		s.internal(w, "revoke join token", err)
		return
	}
	n, err := s.revokeLineage(r.Context(), id)
	if n > 0 {
		s.notifyRevoke()
	}
	if err != nil {
		s.logger.Error("join token revoked, but not every certificate descending from it", "token_id", id, "revoked_certificates", n, "err", err)
		writeError(w, &requestError{code: http.StatusInternalServerError, reason: metav1.StatusReasonInternalError,
			msg: fmt.Sprintf("join token %s is revoked but %d of its certificates only could be revoked; repeat the request", id, n)})
		return
	}
	s.logger.Info("join token revoked", "token_id", id, "revoked_certificates", n)
	writeJSON(w, http.StatusOK, TokenRevoked{ID: id, RevokedCertificates: n})
}

// issueCertificate serves POST /api/v1/certificates. The CSR is checked
// before the token is redeemed, so a proxy whose CSR is malformed does not
// spend a single-use token; a CSR for another identity is only found after
// (the identity comes from the token) and does spend it.
func (s *Server) issueCertificate(w http.ResponseWriter, r *http.Request) {
	secret, ok := bearer(r)
	if !ok {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			s.renewCertificate(w, r)
			return
		}
		s.refuse(w, r, "", &refusal{reason: ReasonMissingToken, err: ca.ErrTokenInvalid})
		return
	}
	tokID := tokenID(secret)
	var req CertificateRequest
	if err := decode(w, r, &req); err != nil {
		s.refuse(w, r, tokID, err)
		return
	}
	if err := precheckCSR(req.CSR); err != nil {
		s.refuse(w, r, tokID, err)
		return
	}
	tok, err := s.tokens.Redeem(r.Context(), secret)
	if err != nil {
		s.refuse(w, r, tokID, err)
		return
	}
	id, err := ca.SVIDFor(tok)
	if err != nil {
		s.refuse(w, r, tokID, err)
		return
	}
	chain, err := s.ca.SignCSRWith(req.CSR, id, ca.SignOptions{Lineage: tok.ID})
	if err != nil {
		s.refuse(w, r, tokID, err)
		return
	}
	if !s.record(w, r, chain[0], nil, tokID) {
		return
	}
	s.issued.Inc()
	leaf := chain[0]
	s.logger.Info("certificate issued", "spiffe_id", id.String(), "token_id", tok.ID,
		"serial", leaf.SerialNumber.Text(16), "expires_at", leaf.NotAfter)
	s.writeChain(w, id, chain)
}

// renewCertificate serves POST /api/v1/certificates without a bearer token
// over TLS: the client's certificate, verified against the current bundle
// (again: the listener's check is not this handler's to rely on), names the
// identity, and the CSR gets exactly that one, with the same lineage. An
// expired or foreign certificate is refused, and so is a revoked one or one
// descending from a revoked join token (the listener refuses revoked
// certificates already; this check does not rely on it, and also sees a
// revocation another replica wrote to the store).
func (s *Server) renewCertificate(w http.ResponseWriter, r *http.Request) {
	id, _, err := x509svid.Verify(r.TLS.PeerCertificates, s.ca.Bundle())
	if err != nil {
		s.refuse(w, r, "", &refusal{reason: ReasonInvalidCertificate, err: fmt.Errorf("renew certificate: %w: %w", errBadClientCert, err)})
		return
	}
	presented := r.TLS.PeerCertificates[0]
	lineage := ca.Lineage(presented)
	if err := s.checkRenewable(r.Context(), presented); err != nil {
		s.refuse(w, r, lineage, err)
		return
	}
	var req CertificateRequest
	if err := decode(w, r, &req); err != nil {
		s.refuse(w, r, lineage, err)
		return
	}
	chain, err := s.ca.SignCSRWith(req.CSR, id, ca.SignOptions{Lineage: lineage})
	if err != nil {
		s.refuse(w, r, lineage, err)
		return
	}
	if !s.record(w, r, chain[0], presented, lineage) {
		return
	}
	s.issued.Inc()
	leaf := chain[0]
	s.logger.Info("certificate renewed", "spiffe_id", id.String(), "token_id", lineage,
		"serial", leaf.SerialNumber.Text(16), "renewed_serial", presented.SerialNumber.Text(16), "expires_at", leaf.NotAfter)
	s.writeChain(w, id, chain)
}

func (s *Server) writeChain(w http.ResponseWriter, id spiffeid.ID, chain []*x509.Certificate) {
	resp := CertificateResponse{
		TrustBundle: s.bundlePEM(),
		SPIFFEID:    id.String(),
		ExpiresAt:   chain[0].NotAfter,
	}
	for _, c := range chain {
		resp.CertificateChain = append(resp.CertificateChain, certPEM(c))
	}
	writeJSON(w, http.StatusOK, resp)
}

// refuse answers a refused certificate request, counts it and logs it with
// the token's ID (never its secret). Errors that are not the client's are
// answered 500 and logged as errors.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, tokID string, err error) {
	rf, ok := errors.AsType[*refusal](err)
	if !ok {
		reason, _, isRefusal := refusalFor(err)
		if !isRefusal {
			s.internal(w, "issue certificate", err)
			return
		}
		rf = &refusal{reason: reason, err: err}
	}
	s.refusals.WithLabelValues(rf.reason).Inc()
	attrs := []any{"reason", rf.reason, "remote_addr", r.RemoteAddr, "err", rf.err}
	if tokID != "" {
		attrs = append(attrs, "token_id", tokID)
	}
	s.logger.Warn("certificate request refused", attrs...)
	writeError(w, rf)
}

// bundle serves GET /api/v1/bundle: the PEM of every trusted root.
func (s *Server) bundle(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.WriteString(w, strings.Join(s.bundlePEM(), ""))
}

// rotate serves POST /api/v1/ca/rotate.
func (s *Server) rotate(w http.ResponseWriter, r *http.Request) {
	var req RotateRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	overlap := DefaultOverlap
	if req.Overlap != "" {
		d, err := time.ParseDuration(req.Overlap)
		var msg string
		switch {
		case err != nil:
			msg = "must be a duration such as 48h"
		case d < MinOverlap:
			msg = "must be at least " + MinOverlap.String()
		}
		if msg != "" {
			writeError(w, &invalidError{what: "rotation", errs: field.ErrorList{field.Invalid(field.NewPath("overlap"), req.Overlap, msg)}})
			return
		}
		overlap = d
	}
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	if err := s.ca.Rotate(overlap); err != nil {
		if errors.Is(err, ca.ErrRotateOperatorCA) {
			writeError(w, err)
			return
		}
		s.internal(w, "rotate ca", err)
		return
	}
	if s.onRotate != nil {
		s.onRotate()
	}
	if err := s.persist(s.ca.Material()); err != nil {
		// The new root is in use but would be lost on restart; say so
		// rather than pretend the rotation failed.
		s.logger.Error("rotated ca not saved: the previous root returns on restart", "err", err)
		writeError(w, &requestError{code: http.StatusInternalServerError, reason: metav1.StatusReasonInternalError,
			msg: "the CA rotated but its material could not be saved; see the control plane log"})
		return
	}
	roots := s.bundlePEM()
	s.logger.Info("ca rotated", "overlap", overlap.String(), "trusted_roots", len(roots))
	writeJSON(w, http.StatusOK, RotateResponse{TrustBundle: roots})
}

// internal answers 500 and logs err, which is not the client's doing.
func (s *Server) internal(w http.ResponseWriter, op string, err error) {
	s.logger.Error("identity request failed", "op", op, "err", err)
	writeError(w, err)
}

func (s *Server) bundlePEM() []string {
	var out []string
	for _, c := range s.ca.Bundle().X509Authorities() {
		out = append(out, certPEM(c))
	}
	return out
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// decode reads a JSON body of at most maxRequestBytes strictly (unknown
// fields are errors) into v. An empty body leaves v as it is.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return err
		}
		return badRequest("read body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("decode body: %v", err)
	}
	if dec.More() {
		return badRequest("decode body: data after the JSON object")
	}
	return nil
}

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	return tok, ok && strings.EqualFold(scheme, "Bearer") && tok != ""
}

// tokenID returns the ID part of a join token secret ("vt1.<id>.<random>",
// the ID 16 hex digits), or "" when secret does not have that shape, so that
// what is logged is never more than the ID.
func tokenID(secret string) string {
	rest, ok := strings.CutPrefix(secret, "vt1.")
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(rest, ".")
	if !ok || len(id) != 16 || strings.Trim(id, "0123456789abcdef") != "" {
		return ""
	}
	return id
}

// precheckCSR refuses a CSR that ca.SignCSR would refuse whatever the
// identity: too large, malformed, badly signed, or with a key type the mesh
// does not use. It mirrors the first checks of SignCSR, which stays
// authoritative; it exists so that such a request does not spend a use of
// the token.
func precheckCSR(der []byte) error {
	if len(der) == 0 {
		return fmt.Errorf("check csr: %w: csr is empty", ca.ErrBadCSR)
	}
	if len(der) > ca.MaxCSRSize {
		return fmt.Errorf("check csr: %w: %d bytes, limit %d", ca.ErrCSRTooLarge, len(der), ca.MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return fmt.Errorf("check csr: %w: %w", ca.ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("check csr: %w: signature: %w", ca.ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("check csr: %w: ecdsa curve %s, want P-256", ca.ErrUnsupportedKey, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("check csr: %w: %T, want ecdsa P-256 or ed25519", ca.ErrUnsupportedKey, csr.PublicKey)
	}
	return nil
}
