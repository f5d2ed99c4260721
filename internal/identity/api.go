package identity

import "time"

// API paths served by Handler. The control plane mounts each of them on its
// API listener.
const (
	TokensPath       = "/api/v1/tokens"
	CertificatesPath = "/api/v1/certificates"
	BundlePath       = "/api/v1/bundle"
	RotatePath       = "/api/v1/ca/rotate"
)

// Limits and defaults of the token and rotation requests.
const (
	DefaultTokenTTL = time.Hour
	// MaxTokenTTL bounds a join token's life: a token is a bearer secret, and
	// one that never expires is one nobody remembers to revoke.
	MaxTokenTTL     = 30 * 24 * time.Hour
	DefaultUses     = 1
	DefaultOverlap  = 48 * time.Hour
	MinOverlap      = time.Minute
	DefaultNS       = "default"
	maxRequestBytes = 16 << 10
)

// TokenRequest is the body of POST /api/v1/tokens.
type TokenRequest struct {
	// Namespace of the identity the token grants; DefaultNS when empty.
	Namespace string `json:"namespace,omitempty"`
	// ServiceAccount of the identity the token grants; required.
	ServiceAccount string `json:"serviceAccount"`
	// TTL is a Go duration ("1h"); DefaultTokenTTL when empty, at most
	// MaxTokenTTL.
	TTL string `json:"ttl,omitempty"`
	// Uses is how many certificates the token can obtain: 0 unlimited,
	// DefaultUses when absent.
	Uses *int `json:"uses,omitempty"`
}

// TokenCreated is the 201 answer to POST /api/v1/tokens. Token is the secret
// and is never shown again.
type TokenCreated struct {
	ID             string    `json:"id"`
	Token          string    `json:"token"`
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"serviceAccount"`
	ExpiresAt      time.Time `json:"expiresAt"`
	Uses           int       `json:"uses"`
}

// TokenInfo is one token in GET /api/v1/tokens: everything but the secret.
type TokenInfo struct {
	ID             string    `json:"id"`
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"serviceAccount"`
	CreatedAt      time.Time `json:"createdAt"`
	ExpiresAt      time.Time `json:"expiresAt"`
	// Uses is the limit (0 unlimited); Used counts certificates obtained.
	Uses    int  `json:"uses"`
	Used    int  `json:"used"`
	Revoked bool `json:"revoked,omitempty"`
}

// TokenList is the answer to GET /api/v1/tokens, oldest token first.
type TokenList struct {
	Items []TokenInfo `json:"items"`
}

// CertificateRequest is the body of POST /api/v1/certificates, sent with
// "Authorization: Bearer <join token secret>".
type CertificateRequest struct {
	// CSR is a DER PKCS#10 request (standard base64 in JSON) with an ECDSA
	// P-256 or Ed25519 key and either no URI SAN or exactly the token's
	// SPIFFE ID.
	CSR []byte `json:"csr"`
}

// CertificateResponse is the 200 answer to POST /api/v1/certificates.
type CertificateResponse struct {
	// CertificateChain is PEM, the leaf SVID first, then intermediates.
	CertificateChain []string `json:"certificateChain"`
	// TrustBundle is the PEM of every root currently trusted.
	TrustBundle []string  `json:"trustBundle"`
	SPIFFEID    string    `json:"spiffeID"`
	ExpiresAt   time.Time `json:"expiresAt"`
}

// RotateRequest is the body of POST /api/v1/ca/rotate; an empty body takes
// the defaults.
type RotateRequest struct {
	// Overlap is a Go duration during which the old root stays trusted;
	// DefaultOverlap when empty, at least MinOverlap. It should be at least
	// the SVID lifetime, so certificates signed by the old root stay valid
	// until they expire.
	Overlap string `json:"overlap,omitempty"`
}

// RotateResponse is the 200 answer to POST /api/v1/ca/rotate.
type RotateResponse struct {
	// TrustBundle is the PEM of every root now trusted, the new one first.
	TrustBundle []string `json:"trustBundle"`
}

// CertificateInfo is one issued X.509 SVID as the control plane recorded it
// when it signed it (GET /api/v1/certificates, and the answer to a
// revocation).
type CertificateInfo struct {
	// Serial is the certificate's serial number in lower-case hex, without
	// leading zeros (big.Int.Text(16)).
	Serial   string `json:"serial"`
	SPIFFEID string `json:"spiffeID"`
	// TokenID is the join token the certificate descends from: the one that
	// obtained the first certificate of the chain of renewals it belongs
	// to. Empty for the control plane's own certificates.
	TokenID   string     `json:"tokenID,omitempty"`
	IssuedAt  time.Time  `json:"issuedAt"`
	ExpiresAt time.Time  `json:"expiresAt"`
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
	// Reason is the operator's note given at revocation, or "token <id>
	// revoked" for certificates revoked with their join token.
	Reason string `json:"reason,omitempty"`
}

// CertificateList is the answer to GET /api/v1/certificates: the
// certificates not yet expired, oldest first. Query parameters spiffeID and
// tokenID filter it.
type CertificateList struct {
	Items []CertificateInfo `json:"items"`
}

// RevokeRequest is the optional body of POST
// /api/v1/certificates/{serial}/revoke, answered 200 with the
// CertificateInfo. Revoking an already revoked certificate is not an error.
type RevokeRequest struct {
	// Reason is kept with the revocation and shown in listings (at most 256
	// bytes).
	Reason string `json:"reason,omitempty"`
}

// TokenRevoked is the 200 answer to DELETE /api/v1/tokens/{id}: revoking a
// join token also revokes every unexpired certificate that descends from it.
type TokenRevoked struct {
	ID                  string `json:"id"`
	RevokedCertificates int    `json:"revokedCertificates"`
}
