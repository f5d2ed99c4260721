package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/ca"
)

// Identities of the control plane and of administrators, in the namespace
// Verge reserves for itself.
const (
	SystemNamespace            = "verge-system"
	ControlPlaneServiceAccount = "control-plane"
	AdminServiceAccount        = "admin"
)

// selfSVID is the control plane's own X.509 SVID, issued by its CA with a
// key that never leaves memory. It serves the API and xDS ports through
// GetX509SVID, so a renewal applies to the next handshake. Run renews it at
// half its lifetime and whenever Renew is called (after a CA rotation, so
// that it chains to the new root).
type selfSVID struct {
	ca  *ca.CA
	id  spiffeid.ID
	dns []string
	ips []net.IP
	// record writes each certificate to the issuance log before it is
	// used, so that it can be listed and revoked like any other.
	record func(context.Context, *x509.Certificate) error
	logger *slog.Logger

	cur atomic.Pointer[x509svid.SVID]
	// renewAtNanos is when Run renews cur: half-way from its issuance to
	// its expiry (not from NotBefore, which the CA backdates), in Unix ns.
	renewAtNanos atomic.Int64
	renew        chan struct{}
}

// newSelfSVID issues the first SVID; sans are the DNS names and IP
// addresses clients may dial the control plane at, and become the
// certificate's DNS and IP SANs. record, when not nil, writes every
// certificate to the issuance log first.
func newSelfSVID(ctx context.Context, authority *ca.CA, sans []string, record func(context.Context, *x509.Certificate) error, logger *slog.Logger) (*selfSVID, error) {
	id, err := ca.WorkloadID(authority.Bundle().TrustDomain(), SystemNamespace, ControlPlaneServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("control plane svid: %w", err)
	}
	s := &selfSVID{ca: authority, id: id, record: record, logger: logger.With("component", "cp-svid"), renew: make(chan struct{}, 1)}
	for _, san := range sans {
		if ip := net.ParseIP(san); ip != nil {
			s.ips = append(s.ips, ip)
		} else {
			s.dns = append(s.dns, san)
		}
	}
	if err := s.issue(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// GetX509SVID implements x509svid.Source. The returned SVID is shared and
// must not be modified.
func (s *selfSVID) GetX509SVID() (*x509svid.SVID, error) {
	if v := s.cur.Load(); v != nil {
		return v, nil
	}
	return nil, errors.New("control plane svid: not issued")
}

// Renew asks Run to issue a new SVID now; it does not block.
func (s *selfSVID) Renew() {
	select {
	case s.renew <- struct{}{}:
	default:
	}
}

// serial returns the serial number of the current certificate.
func (s *selfSVID) serial() *big.Int { return s.cur.Load().Certificates[0].SerialNumber }

func (s *selfSVID) issue(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("control plane svid: generate key: %w", err)
	}
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{s.id.URL()}}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return fmt.Errorf("control plane svid: create csr: %w", err)
	}
	// The host names and addresses come from the control plane's own
	// configuration, never from a CSR: SignCSRWith adds them for this
	// identity only, so clients that check host names (curl --cacert,
	// browsers) accept the certificate as well as SPIFFE-aware ones.
	chain, err := s.ca.SignCSRWith(csr, s.id, ca.SignOptions{DNSNames: s.dns, IPAddresses: s.ips})
	if err != nil {
		return fmt.Errorf("control plane svid: %w", err)
	}
	if s.record != nil {
		if err := s.record(ctx, chain[0]); err != nil {
			return fmt.Errorf("control plane svid: %w", err)
		}
	}
	issued := time.Now()
	s.cur.Store(&x509svid.SVID{ID: s.id, Certificates: chain, PrivateKey: key})
	s.renewAtNanos.Store(issued.Add(chain[0].NotAfter.Sub(issued) / 2).UnixNano())
	s.logger.Info("control plane certificate issued", "spiffe_id", s.id.String(),
		"serial", chain[0].SerialNumber.Text(16), "expires_at", chain[0].NotAfter)
	return nil
}

func (s *selfSVID) renewAt() time.Time { return time.Unix(0, s.renewAtNanos.Load()) }

// Run renews the SVID until ctx ends; it returns nil then. A failed renewal
// is logged and retried every minute while the current SVID is still valid.
func (s *selfSVID) Run(ctx context.Context) error {
	const retry = time.Minute
	next := s.renewAt()
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.renew:
		case <-t.C:
		}
		t.Stop()
		if err := s.issue(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.logger.Error("control plane certificate not renewed", "err", err, "retry_in", retry,
				"expires_at", s.cur.Load().Certificates[0].NotAfter)
			next = time.Now().Add(retry)
			continue
		}
		next = s.renewAt()
	}
}

// caBundle is the CA's current trust bundle as an x509bundle.Source, read
// afresh on every handshake so a rotation applies at once.
type caBundle struct{ ca *ca.CA }

func (b caBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	bundle := b.ca.Bundle()
	if bundle.TrustDomain() != td {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td.Name())
	}
	return bundle, nil
}
