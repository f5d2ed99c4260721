package svid

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/proxy/backoff"
)

// certificatesPath is the identity API's issuance endpoint.
const certificatesPath = "/api/v1/certificates"

// certificateRequest and certificateResponse mirror identity.CertificateRequest
// and identity.CertificateResponse (see the package comment for why).
type certificateRequest struct {
	CSR []byte `json:"csr"`
}

type certificateResponse struct {
	CertificateChain []string  `json:"certificateChain"`
	TrustBundle      []string  `json:"trustBundle"`
	SPIFFEID         string    `json:"spiffeID"`
	ExpiresAt        time.Time `json:"expiresAt"`
}

// httpError is a certificate request the control plane answered with an
// error status.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.status, http.StatusText(e.status), e.msg)
}

func refused(err error) bool {
	he, ok := errors.AsType[*httpError](err)
	return ok && (he.status == http.StatusUnauthorized || he.status == http.StatusForbidden)
}

// Run obtains an SVID if there is no valid one, then renews it at half its
// lifetime (sooner after a trust bundle change), retrying failures with
// backoff while the current SVID keeps being served. It returns nil when ctx
// ends, or an error wrapping ErrTokenRefused when the control plane refused
// the join token and the proxy has no SVID to fall back on. Run must be
// called once.
func (s *Source) Run(ctx context.Context) error {
	mtls := s.HTTPClient()
	defer mtls.CloseIdleConnections()
	boot := &http.Client{Transport: &http.Transport{TLSClientConfig: s.bootstrapTLS(), Proxy: nil}}
	defer boot.CloseIdleConnections()

	retry := backoff.Backoff{Base: s.cfg.retryBase, Max: s.cfg.retryMax}
	var retryAt time.Time
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		wait := s.untilRenewal()
		if !retryAt.IsZero() {
			wait = max(retryAt.Sub(s.now()), 0)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
			// A bundle change moved the renewal time: recompute. (Since
			// Go 1.23 Reset after Stop never sees a stale tick.)
			t.Stop()
			continue
		case <-t.C:
		}
		if retryAt.IsZero() && s.untilRenewal() > 0 {
			continue
		}
		err := s.obtain(ctx, mtls, boot)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			s.renewals.WithLabelValues("success").Inc()
			retry.Reset()
			retryAt = time.Time{}
			continue
		}
		s.renewals.WithLabelValues("failure").Inc()
		if s.cur.Load() == nil && refused(err) {
			err = fmt.Errorf("%w: %w", ErrTokenRefused, err)
			s.log.Error("certificate request refused", "error", err)
			s.mu.Lock()
			s.runErr = err
			close(s.failed)
			s.mu.Unlock()
			return err
		}
		d := retry.Next()
		retryAt = s.now().Add(d)
		attrs := []any{"error", err, "retry_in", d}
		if st := s.cur.Load(); st != nil {
			// Degraded but serving: the current certificate stays in use.
			attrs = append(attrs, "expires_at", st.notAfter())
			if !s.now().Before(st.notAfter()) {
				s.log.Error("svid expired and not renewed", attrs...)
				continue
			}
		}
		s.log.Warn("certificate request failed", attrs...)
	}
}

// untilRenewal is how long until the next renewal is due; 0 when there is
// no SVID or it is due.
func (s *Source) untilRenewal() time.Duration {
	st := s.cur.Load()
	if st == nil {
		return 0
	}
	at := st.renewAt()
	s.mu.Lock()
	if !s.rotateAt.IsZero() && s.rotateAt.Before(at) {
		at = s.rotateAt
	}
	s.mu.Unlock()
	return max(at.Sub(s.now()), 0)
}

// obtain gets a new SVID for a new key: a renewal over mutual TLS with the
// current SVID while it is valid, else (or when that is refused and a join
// token is configured) a first issuance with the join token.
func (s *Source) obtain(ctx context.Context, mtls, boot *http.Client) error {
	s.mu.Lock()
	gen := s.rotateGen
	s.mu.Unlock()
	cur := s.cur.Load()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	// No URI SAN: the control plane takes the identity from the token or
	// from the client certificate, never from the CSR.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("create csr: %w", err)
	}

	var resp *certificateResponse
	if cur != nil && s.now().Before(cur.notAfter()) {
		resp, err = s.request(ctx, mtls, s.APIBase(), "", csr)
		if err != nil && refused(err) && s.cfg.JoinToken != "" {
			s.log.Warn("renewal refused; trying the join token", "error", err)
			resp, err = s.request(ctx, boot, s.server.String(), s.cfg.JoinToken, csr)
		}
	} else {
		if s.cfg.JoinToken == "" {
			return errors.New("svid expired and no join token to obtain a new one")
		}
		resp, err = s.request(ctx, boot, s.server.String(), s.cfg.JoinToken, csr)
	}
	if err != nil {
		return err
	}
	next, err := s.parseResponse(resp, key, cur)
	if err != nil {
		return fmt.Errorf("certificate response: %w", err)
	}

	s.mu.Lock()
	if prev := s.cur.Load(); prev != nil && prev.sds != nil && prev.sds.TrustDomain() == next.svid.ID.TrustDomain() {
		next.sds = prev.sds
	}
	if s.rotateGen == gen {
		s.rotateAt = time.Time{}
	}
	s.publishLocked(next)
	s.mu.Unlock()
	s.persist()
	s.log.Info("svid obtained", "spiffe_id", next.svid.ID.String(),
		"serial", next.svid.Certificates[0].SerialNumber.Text(16),
		"expires_at", next.notAfter(), "renew_at", next.renewAt())
	return nil
}

func (s *Source) request(ctx context.Context, c *http.Client, base, token string, csr []byte) (*certificateResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	body, err := json.Marshal(certificateRequest{CSR: csr})
	if err != nil {
		return nil, err
	}
	u := strings.TrimRight(base, "/") + certificatesPath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("post %s: %w", u, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("post %s: read answer: %w", u, err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("post %s: %w", u, &httpError{status: res.StatusCode, msg: string(bytes.TrimSpace(data))})
	}
	var out certificateResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("post %s: decode answer: %w", u, err)
	}
	return &out, nil
}

// parseResponse checks the answer: the chain is a valid SVID for key,
// verifies under the answer's bundle, and on renewal keeps the identity.
func (s *Source) parseResponse(r *certificateResponse, key *ecdsa.PrivateKey, cur *state) (*state, error) {
	var chain []*x509.Certificate
	for i, p := range r.CertificateChain {
		certs, err := parsePEMCerts([]byte(p))
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("certificateChain[%d]: not a PEM certificate (%v)", i, err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) == 0 {
		return nil, errors.New("certificateChain: empty")
	}
	var roots []*x509.Certificate
	for i, p := range r.TrustBundle {
		certs, err := parsePEMCerts([]byte(p))
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("trustBundle[%d]: not a PEM certificate (%v)", i, err)
		}
		roots = append(roots, certs...)
	}
	if len(roots) == 0 {
		return nil, errors.New("trustBundle: empty")
	}
	var raw []byte
	for _, c := range chain {
		raw = append(raw, c.Raw...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	sv, err := x509svid.ParseRaw(raw, keyDER)
	if err != nil {
		return nil, fmt.Errorf("certificateChain: %w", err)
	}
	if r.SPIFFEID != "" && r.SPIFFEID != sv.ID.String() {
		return nil, fmt.Errorf("spiffeID %q: the certificate says %q", r.SPIFFEID, sv.ID)
	}
	if cur != nil && cur.svid.ID != sv.ID {
		return nil, fmt.Errorf("spiffeID %q: renewal of %q changed the identity", sv.ID, cur.svid.ID)
	}
	b := x509bundle.FromX509Authorities(sv.ID.TrustDomain(), roots)
	if _, _, err := x509svid.Verify(sv.Certificates, b, x509svid.WithTime(s.now())); err != nil {
		return nil, fmt.Errorf("certificateChain: does not verify under trustBundle: %w", err)
	}
	return &state{svid: sv, obtained: s.now(), issued: b}, nil
}

// bootstrapTLS verifies the control plane for a join-token request over
// https: its SVID must chain to the CAFile roots (or the persisted bundle)
// and be the control plane's ID, checked with go-spiffe. With neither, the
// system roots and host name verification apply (a control plane behind a
// publicly trusted certificate).
func (s *Source) bootstrapTLS() *tls.Config {
	roots := s.bootRoots
	if len(roots) == 0 {
		if st := s.cur.Load(); st != nil {
			roots = st.bundle().X509Authorities()
		}
	}
	if len(roots) == 0 {
		return &tls.Config{MinVersion: tls.VersionTLS13}
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is done below, by SPIFFE ID rather than host name.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyPeerCertificate
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, 0, len(rawCerts))
			for _, r := range rawCerts {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return fmt.Errorf("control plane certificate: %w", err)
				}
				certs = append(certs, c)
			}
			if len(certs) == 0 {
				return errors.New("control plane presented no certificate")
			}
			id, err := x509svid.IDFromCert(certs[0])
			if err != nil {
				return fmt.Errorf("control plane certificate: %w", err)
			}
			td := id.TrustDomain()
			if _, _, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(td, roots)); err != nil {
				return fmt.Errorf("control plane certificate: %w", err)
			}
			if want, _ := spiffeid.FromPath(td, ControlPlanePath); id != want {
				return fmt.Errorf("control plane certificate: %q is not %q", id, want)
			}
			return nil
		},
	}
}

// jitter returns a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return mrand.N(d)
}
