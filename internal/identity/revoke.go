package identity

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/internal/ca"
)

// SweepInterval is how often Run prunes expired records and re-announces
// the revocations in force.
const SweepInterval = 10 * time.Minute

// MaxRevokeReason bounds RevokeRequest.Reason, in bytes.
const MaxRevokeReason = 256

// errCertRevoked is a renewal whose client certificate is revoked or
// descends from a revoked join token.
var errCertRevoked = errors.New("client certificate is revoked")

// errAlreadyRevoked stops an Update of a record that is revoked already.
var errAlreadyRevoked = errors.New("already revoked")

// Record writes leaf's issuance record (serial, SPIFFE ID, lineage, issue
// and expiry times) to the log. The handlers call it for every certificate
// they sign before answering; the control plane calls it for its own. A
// certificate whose record could not be written must not be used: it could
// not be revoked.
func (s *Server) Record(ctx context.Context, leaf *x509.Certificate) error {
	info := CertificateInfo{
		Serial:    leaf.SerialNumber.Text(16),
		TokenID:   ca.Lineage(leaf),
		IssuedAt:  s.now().UTC(),
		ExpiresAt: leaf.NotAfter.UTC(),
	}
	if len(leaf.URIs) == 1 {
		info.SPIFFEID = leaf.URIs[0].String()
	}
	if err := s.certs.Create(ctx, info); err != nil {
		return fmt.Errorf("record certificate %s: %w", info.Serial, err)
	}
	return nil
}

// IsRevoked reports whether the certificate with this serial is revoked.
// It reads memory only, so it is cheap enough for every TLS handshake.
func (s *Server) IsRevoked(serial *big.Int) bool {
	_, ok := (*s.revoked.Load())[serial.Text(16)]
	return ok
}

// Revocations returns the revoked certificates not yet expired, oldest
// revocation first: the entries of the CRL.
func (s *Server) Revocations() []ca.Revocation {
	now := s.now()
	var out []ca.Revocation
	for _, r := range *s.revoked.Load() {
		if now.Before(r.ExpiresAt) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b ca.Revocation) int {
		return cmp.Or(a.RevokedAt.Compare(b.RevokedAt), a.Serial.Cmp(b.Serial))
	})
	return out
}

// addRevoked publishes infos in the revoked set, and drops expired entries.
func (s *Server) addRevoked(infos ...CertificateInfo) (changed bool) {
	s.revMu.Lock()
	defer s.revMu.Unlock()
	cur := *s.revoked.Load()
	now := s.now()
	next := make(map[string]ca.Revocation, len(cur)+len(infos))
	for k, r := range cur {
		if now.Before(r.ExpiresAt) {
			next[k] = r
		}
	}
	for _, c := range infos {
		serial, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok || c.RevokedAt == nil || !now.Before(c.ExpiresAt) {
			continue
		}
		next[c.Serial] = ca.Revocation{Serial: serial, RevokedAt: *c.RevokedAt, ExpiresAt: c.ExpiresAt}
	}
	s.revoked.Store(&next)
	return !maps.EqualFunc(cur, next, func(a, b ca.Revocation) bool { return a.Serial.Cmp(b.Serial) == 0 })
}

// Refresh reads the revoked certificates from the log into the set
// IsRevoked and Revocations read. The control plane calls it on start,
// before it serves and pushes the CRL, so a restart loses no revocation;
// Run calls it on every sweep, which also picks up revocations another
// replica wrote to a shared store. Revocations are never undone, so the
// set only loses entries when they expire. changed says whether the set
// differs from before.
func (s *Server) Refresh(ctx context.Context) (changed bool, err error) {
	certs, err := s.certs.List(ctx)
	if err != nil {
		return false, fmt.Errorf("refresh revocations: %w", err)
	}
	return s.addRevoked(slices.DeleteFunc(certs, func(c CertificateInfo) bool { return c.RevokedAt == nil })...), nil
}

// Prune deletes the records of expired certificates and returns how many.
func (s *Server) Prune(ctx context.Context) (int, error) {
	certs, err := s.certs.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("prune certificates: %w", err)
	}
	now := s.now()
	n := 0
	for _, c := range certs {
		if now.Before(c.ExpiresAt) {
			continue
		}
		if err := s.certs.Delete(ctx, c.Serial); err != nil && !errors.Is(err, ErrCertificateNotFound) {
			return n, fmt.Errorf("prune certificate %s: %w", c.Serial, err)
		}
		n++
	}
	return n, nil
}

// Run sweeps the issuance log on start and every SweepInterval until ctx
// ends (it then returns nil): it prunes expired records, refreshes the
// revoked set and, while any revocation is in force or the set changed,
// calls OnRevoke so that the CRL is signed afresh before its NextUpdate. A
// failed sweep is logged and tried again at the next tick.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(SweepInterval)
	defer t.Stop()
	for {
		s.sweep(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Server) sweep(ctx context.Context) {
	n, err := s.Prune(ctx)
	if err != nil && ctx.Err() == nil {
		s.logger.Warn("certificate log not pruned", "err", err)
	}
	if n > 0 {
		s.logger.Info("expired certificate records pruned", "count", n)
	}
	changed, err := s.Refresh(ctx)
	if err != nil && ctx.Err() == nil {
		s.logger.Warn("revocations not refreshed", "err", err)
	}
	if changed || len(*s.revoked.Load()) > 0 {
		s.notifyRevoke()
	}
}

func (s *Server) notifyRevoke() {
	if s.onRevoke != nil {
		s.onRevoke()
	}
}

// revoke marks the record of serial revoked with reason and publishes it
// in the revoked set. An already revoked certificate keeps its first
// revocation; now is false then. The caller calls notifyRevoke.
func (s *Server) revoke(ctx context.Context, serial, reason string) (info CertificateInfo, now bool, err error) {
	var prev CertificateInfo
	at := s.now().UTC()
	info, err = s.certs.Update(ctx, serial, func(c CertificateInfo) (CertificateInfo, error) {
		if c.RevokedAt != nil {
			prev = c
			return c, errAlreadyRevoked
		}
		c.RevokedAt, c.Reason = &at, reason
		return c, nil
	})
	if errors.Is(err, errAlreadyRevoked) {
		s.addRevoked(prev)
		return prev, false, nil
	}
	if err != nil {
		return CertificateInfo{}, false, err
	}
	s.addRevoked(info)
	s.revokedN.Inc()
	s.logger.Info("certificate revoked", "serial", info.Serial, "spiffe_id", info.SPIFFEID,
		"token_id", info.TokenID, "reason", reason)
	return info, true, nil
}

// revokeLineage revokes every unexpired certificate descending from join
// token id and returns how many it revoked.
func (s *Server) revokeLineage(ctx context.Context, id string) (int, error) {
	certs, err := s.certs.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("revoke certificates of join token %s: %w", id, err)
	}
	now := s.now()
	n := 0
	for _, c := range certs {
		if c.TokenID != id || c.RevokedAt != nil || !now.Before(c.ExpiresAt) {
			continue
		}
		_, revoked, err := s.revoke(ctx, c.Serial, "token "+id+" revoked")
		if err != nil && !errors.Is(err, ErrCertificateNotFound) {
			return n, fmt.Errorf("revoke certificates of join token %s: %w", id, err)
		}
		if revoked {
			n++
		}
	}
	return n, nil
}

// listCertificates serves GET /api/v1/certificates.
func (s *Server) listCertificates(w http.ResponseWriter, r *http.Request) {
	certs, err := s.certs.List(r.Context())
	if err != nil {
		s.internal(w, "list certificates", err)
		return
	}
	now := s.now()
	certs = slices.DeleteFunc(certs, func(c CertificateInfo) bool { return !now.Before(c.ExpiresAt) })
	q := r.URL.Query()
	certs = filterCertificates(certs, q.Get("spiffeID"), q.Get("tokenID"))
	slices.SortFunc(certs, func(a, b CertificateInfo) int {
		return cmp.Or(a.IssuedAt.Compare(b.IssuedAt), strings.Compare(a.Serial, b.Serial))
	})
	writeJSON(w, http.StatusOK, CertificateList{Items: append([]CertificateInfo{}, certs...)})
}

// revokeCertificate serves POST /api/v1/certificates/{serial}/revoke.
func (s *Server) revokeCertificate(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("serial")
	serial, ok := normalSerial(raw)
	if !ok {
		writeError(w, &requestError{code: http.StatusNotFound, reason: metav1.StatusReasonNotFound,
			msg: fmt.Sprintf("certificate %q not found: a serial is a positive hexadecimal number", raw)})
		return
	}
	var req RevokeRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Reason) > MaxRevokeReason {
		writeError(w, &invalidError{what: "revocation", errs: field.ErrorList{
			field.TooLong(field.NewPath("reason"), "", MaxRevokeReason)}})
		return
	}
	info, now, err := s.revoke(r.Context(), serial, req.Reason)
	if errors.Is(err, ErrCertificateNotFound) {
		writeError(w, &requestError{code: http.StatusNotFound, reason: metav1.StatusReasonNotFound,
			msg: fmt.Sprintf("certificate %s not found: not issued by this control plane, or expired and pruned", serial)})
		return
	}
	if err != nil {
		s.internal(w, "revoke certificate", err)
		return
	}
	if now {
		s.notifyRevoke()
	}
	writeJSON(w, http.StatusOK, info)
}

// checkRenewable refuses (a *refusal) a presented certificate that is
// revoked or descends from a revoked join token. Other errors are the
// store's. A certificate with no record (issued before the log existed) is
// judged by its lineage alone.
func (s *Server) checkRenewable(ctx context.Context, leaf *x509.Certificate) error {
	serial := leaf.SerialNumber.Text(16)
	revoked := s.IsRevoked(leaf.SerialNumber)
	if !revoked {
		rec, err := s.certs.Get(ctx, serial)
		switch {
		case errors.Is(err, ErrCertificateNotFound):
		case err != nil:
			return err
		default:
			revoked = rec.RevokedAt != nil
		}
	}
	if revoked {
		return &refusal{reason: ReasonRevokedCertificate, err: fmt.Errorf("renew certificate: %w: serial %s", errCertRevoked, serial)}
	}
	if lin := ca.Lineage(leaf); lin != "" {
		tokRevoked, err := s.tokenRevoked(ctx, lin)
		if err != nil {
			return err
		}
		if tokRevoked {
			return &refusal{reason: ReasonRevokedCertificate,
				err: fmt.Errorf("renew certificate: %w: serial %s descends from revoked join token %s", errCertRevoked, serial, lin)}
		}
	}
	return nil
}

// tokenRevoked reports whether join token id is revoked. A token that no
// longer exists (pruned after it expired) is not.
func (s *Server) tokenRevoked(ctx context.Context, id string) (bool, error) {
	tok, err := s.tokens.Get(ctx, id)
	if errors.Is(err, ca.ErrTokenNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return tok.Revoked, nil
}

// record writes leaf's record and then checks again that it may be handed
// out: a revocation of its join token (or, for a renewal, of the presented
// certificate) that ran while leaf was being signed listed the log before
// leaf's record was in it, so it could not revoke leaf. If it must not be
// handed out, its record is marked revoked and the request refused. It
// answers the request itself when it returns false.
func (s *Server) record(w http.ResponseWriter, r *http.Request, leaf, presented *x509.Certificate, tokID string) bool {
	ctx := r.Context()
	if err := s.Record(ctx, leaf); err != nil {
		s.internal(w, "record certificate", err)
		return false
	}
	var err error
	if presented != nil {
		err = s.checkRenewable(ctx, presented)
	} else if lin := ca.Lineage(leaf); lin != "" {
		var revoked bool
		if revoked, err = s.tokenRevoked(ctx, lin); err == nil && revoked {
			err = &refusal{reason: ReasonRevokedToken, err: fmt.Errorf("issue certificate: %w while the certificate was signed", ca.ErrTokenRevoked)}
		}
	}
	if err == nil {
		return true
	}
	if _, ok := errors.AsType[*refusal](err); ok {
		// The client may be gone; the record must still be marked.
		if _, _, rerr := s.revoke(context.WithoutCancel(ctx), leaf.SerialNumber.Text(16), "issued while its lineage was being revoked"); rerr != nil {
			s.logger.Error("certificate not handed out but its revocation not recorded", "serial", leaf.SerialNumber.Text(16), "err", rerr)
		} else {
			s.notifyRevoke()
		}
	}
	s.refuse(w, r, tokID, err)
	return false
}
