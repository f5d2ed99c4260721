package apiclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/ca"
)

// DefaultTrustDomain is the trust domain assumed when the bundle's roots do
// not name one (an operator's CA without a SPIFFE URI SAN).
const DefaultTrustDomain = "verge.local"

// ClientOption configures New.
type ClientOption func(*Client)

// WithToken sends "Authorization: Bearer <token>" with every request: the
// admin token, for writes and join tokens.
func WithToken(token string) ClientOption {
	return func(c *Client) { c.token = token }
}

// ControlPlaneID is the control plane's SPIFFE ID in trust domain td:
// spiffe://<td>/ns/verge-system/sa/control-plane.
func ControlPlaneID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "ns", "verge-system", "sa", "control-plane")
}

// ServerTLSConfig returns the TLS configuration of a client of the control
// plane's https API: it trusts the roots in bundlePEM (what `verge ca
// bundle` prints) and accepts only the control plane's SVID, checked with
// go-spiffe (the certificate's SPIFFE ID, not a host name). The trust domain
// is the one the roots name in their URI SAN, DefaultTrustDomain when they
// name none. clientSVID, when not nil, is presented as client certificate
// (an administrator's or a workload's SVID).
func ServerTLSConfig(bundlePEM []byte, clientSVID x509svid.Source) (*tls.Config, error) {
	roots, err := ca.ParseCertificatesPEM(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("parse ca bundle: %w", err)
	}
	if len(roots) == 0 {
		return nil, errors.New("parse ca bundle: no CERTIFICATE block")
	}
	td, err := bundleTrustDomain(roots)
	if err != nil {
		return nil, err
	}
	id, err := ControlPlaneID(td)
	if err != nil {
		return nil, fmt.Errorf("control plane id: %w", err)
	}
	bundle := x509bundle.FromX509Authorities(td, roots)
	var c *tls.Config
	if clientSVID != nil {
		c = tlsconfig.MTLSClientConfig(clientSVID, bundle, tlsconfig.AuthorizeID(id))
	} else {
		c = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(id))
	}
	c.MinVersion = tls.VersionTLS13
	return c, nil
}

// bundleTrustDomain reads the trust domain from the roots' SPIFFE URI SANs
// (Verge's generated roots carry spiffe://<td>).
func bundleTrustDomain(roots []*x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, r := range roots {
		for _, u := range r.URIs {
			if u.Scheme == "spiffe" {
				td, err := spiffeid.TrustDomainFromURI(u)
				if err != nil {
					return spiffeid.TrustDomain{}, fmt.Errorf("ca bundle: root %q: uri san %q: %w", r.Subject, u, err)
				}
				return td, nil
			}
		}
	}
	return spiffeid.RequireTrustDomainFromString(DefaultTrustDomain), nil
}
