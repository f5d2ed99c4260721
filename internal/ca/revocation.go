package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// lineagePrefix marks the subject OrganizationalUnit that carries a
// certificate's lineage. The subject, not an extension, because every X.509
// tool shows it (openssl x509 -noout -subject), and SPIFFE leaves the
// subject of an X.509-SVID to the issuer.
const lineagePrefix = "verge-token:"

// MaxLineage bounds SignOptions.Lineage: an OrganizationalUnit is at most
// 64 characters (RFC 5280, ub-organizational-unit-name), the prefix takes
// the rest. Join token IDs are 16 hex digits.
const MaxLineage = 64 - len(lineagePrefix)

// lineageSubject is the subject of a certificate descending from token id:
// empty when id is.
func lineageSubject(id string) pkix.Name {
	if id == "" {
		return pkix.Name{}
	}
	return pkix.Name{OrganizationalUnit: []string{lineagePrefix + id}}
}

func checkLineage(id string) error {
	if len(id) > MaxLineage {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrBadLineage, len(id), MaxLineage)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%w: %q: want letters, digits, '-' and '_'", ErrBadLineage, id)
		}
	}
	return nil
}

// Lineage returns the join token ID a certificate signed by SignCSRWith
// descends from, or "" when it has none (the control plane's own, or a
// certificate from before lineage was recorded). Only the issuer's word
// counts: call it on a certificate that verified against the bundle.
func Lineage(cert *x509.Certificate) string {
	for _, ou := range cert.Subject.OrganizationalUnit {
		if id, ok := strings.CutPrefix(ou, lineagePrefix); ok && checkLineage(id) == nil {
			return id
		}
	}
	return ""
}

// Revocation is one revoked certificate, an entry of the CRL.
type Revocation struct {
	Serial    *big.Int
	RevokedAt time.Time
	// ExpiresAt is the certificate's NotAfter: past it the entry is left
	// out of the CRL, as the certificate no longer verifies anyway.
	ExpiresAt time.Time
}

// CRL returns a DER X.509 v2 certificate revocation list signed by the
// CA's current signing key and certificate, listing the entries whose
// certificate has not expired, by serial. ThisUpdate is now, NextUpdate now
// plus the SVID TTL (the caller signs a new list before then), and the CRL
// number increases with every call, also across restarts (it starts from
// the clock). A signing certificate without the cRLSign key usage or a
// subject key ID (possible with an operator's CA) cannot sign one: the
// error says so.
//
// Certificates signed under a root retired by Rotate are listed too, but
// an RFC 5280 checker matches a CRL to its issuer, so only a checker that
// reads serials (the Verge proxy) applies those entries.
func (c *CA) CRL(entries []Revocation) ([]byte, error) {
	m := c.mat.Load()
	now := c.now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(c.nextCRLNumber(now)),
		ThisUpdate: now,
		NextUpdate: now.Add(c.ttl),
	}
	for _, e := range entries {
		if e.Serial == nil || !now.Before(e.ExpiresAt) {
			continue
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   e.Serial,
			RevocationTime: e.RevokedAt.UTC(),
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, m.cert, m.key)
	if err != nil {
		return nil, fmt.Errorf("sign crl with %q: %w", m.cert.Subject, err)
	}
	return der, nil
}

// nextCRLNumber returns a number greater than every earlier one: the clock
// in nanoseconds, or the last number plus one when the clock has not moved
// (or went back).
func (c *CA) nextCRLNumber(now time.Time) int64 {
	for {
		last := c.crlNumber.Load()
		n := max(last+1, now.UnixNano())
		if c.crlNumber.CompareAndSwap(last, n) {
			return n
		}
	}
}
