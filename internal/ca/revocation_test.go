package ca

import (
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestLineage: the token ID given at first issuance is read back from the
// certificate and carried on by a renewal that copies it.
func TestLineage(t *testing.T) {
	c := newTestCA(t, newFakeClock(), nil)
	const tok = "0123456789abcdef"
	first, err := c.SignCSRWith(makeCSR(t, p256Key(t), nil), testID, SignOptions{Lineage: tok})
	if err != nil {
		t.Fatal(err)
	}
	if got := Lineage(first[0]); got != tok {
		t.Fatalf("Lineage(first) = %q, want %q", got, tok)
	}
	renewed, err := c.SignCSRWith(makeCSR(t, p256Key(t), nil), testID, SignOptions{Lineage: Lineage(first[0])})
	if err != nil {
		t.Fatal(err)
	}
	if got := Lineage(renewed[0]); got != tok {
		t.Errorf("Lineage(renewed) = %q, want %q", got, tok)
	}
	if got := renewed[0].Subject.OrganizationalUnit; len(got) != 1 || got[0] != "verge-token:"+tok {
		t.Errorf("subject OU = %q", got)
	}
	plain, err := c.SignCSR(makeCSR(t, p256Key(t), nil), testID)
	if err != nil {
		t.Fatal(err)
	}
	if got := Lineage(plain[0]); got != "" || len(plain[0].Subject.Names) != 0 {
		t.Errorf("certificate without lineage: Lineage %q, subject %v", got, plain[0].Subject)
	}
	for _, bad := range []string{"a/b", "tok en", strings.Repeat("a", MaxLineage+1), "é"} {
		if _, err := c.SignCSRWith(makeCSR(t, p256Key(t), nil), testID, SignOptions{Lineage: bad}); !errors.Is(err, ErrBadLineage) {
			t.Errorf("lineage %q: %v, want ErrBadLineage", bad, err)
		}
	}
	if _, err := c.SignCSRWith(makeCSR(t, p256Key(t), nil), testID, SignOptions{Lineage: strings.Repeat("a", MaxLineage)}); err != nil {
		t.Errorf("lineage of MaxLineage bytes: %v", err)
	}
}

// TestSignOptionsSANs: DNS names and IP addresses come from the options,
// never from the CSR.
func TestSignOptionsSANs(t *testing.T) {
	c := newTestCA(t, newFakeClock(), nil)
	csr := makeCSR(t, p256Key(t), nil, "evil.example")
	chain, err := c.SignCSRWith(csr, testID, SignOptions{
		DNSNames:    []string{"localhost", "cp.example"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if diff := cmp.Diff([]string{"localhost", "cp.example"}, leaf.DNSNames); diff != "" {
		t.Errorf("DNS SANs (-want +got):\n%s", diff)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if diff := cmp.Diff([]string{"127.0.0.1", "::1"}, ips); diff != "" {
		t.Errorf("IP SANs (-want +got):\n%s", diff)
	}
	if err := leaf.VerifyHostname("cp.example"); err != nil {
		t.Errorf("VerifyHostname: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
		t.Errorf("URI SANs %v", leaf.URIs)
	}
	plain, err := c.SignCSR(csr, testID)
	if err != nil {
		t.Fatal(err)
	}
	if len(plain[0].DNSNames) != 0 || len(plain[0].IPAddresses) != 0 {
		t.Errorf("CSR SANs copied: %v %v", plain[0].DNSNames, plain[0].IPAddresses)
	}
}

func TestCRL(t *testing.T) {
	clk := newFakeClock()
	c := newTestCA(t, clk, nil)
	live, err := c.SignCSR(makeCSR(t, p256Key(t), nil), testID)
	if err != nil {
		t.Fatal(err)
	}
	entries := []Revocation{
		{Serial: live[0].SerialNumber, RevokedAt: clk.Now().Add(-time.Minute), ExpiresAt: live[0].NotAfter},
		{Serial: big.NewInt(42), RevokedAt: clk.Now().Add(-time.Hour), ExpiresAt: clk.Now()}, // expired: left out
		{Serial: nil, ExpiresAt: live[0].NotAfter},                                           // ignored
	}
	check := func(der []byte, wantSerials ...*big.Int) *big.Int {
		t.Helper()
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatalf("parse crl: %v", err)
		}
		signer := c.Material().cert
		if err := crl.CheckSignatureFrom(signer); err != nil {
			t.Errorf("crl signature: %v", err)
		}
		if !crl.ThisUpdate.Equal(clk.Now().Truncate(time.Second)) || !crl.NextUpdate.Equal(clk.Now().Add(DefaultSVIDTTL).Truncate(time.Second)) {
			t.Errorf("crl valid %v to %v, want from now for the svid ttl", crl.ThisUpdate, crl.NextUpdate)
		}
		var got []string
		for _, e := range crl.RevokedCertificateEntries {
			got = append(got, e.SerialNumber.Text(16))
		}
		var want []string
		for _, s := range wantSerials {
			want = append(want, s.Text(16))
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("revoked serials (-want +got):\n%s", diff)
		}
		return crl.Number
	}
	n1 := check(mustCRL(t, c, entries), live[0].SerialNumber)
	n2 := check(mustCRL(t, c, entries), live[0].SerialNumber)
	if n2.Cmp(n1) <= 0 {
		t.Errorf("crl numbers %v then %v, want increasing", n1, n2)
	}
	check(mustCRL(t, c, nil))

	// After a rotation the new root signs it.
	if err := c.Rotate(time.Hour); err != nil {
		t.Fatal(err)
	}
	check(mustCRL(t, c, entries), live[0].SerialNumber)

	// Under an operator's intermediate, the intermediate signs it.
	opChain, opKey := newOperatorPKI(t, 1)
	mat, err := MaterialFromPEM(certsPEM(opChain...), keyPEM(t, opKey))
	if err != nil {
		t.Fatal(err)
	}
	c = newTestCA(t, clk, mat)
	check(mustCRL(t, c, entries), live[0].SerialNumber)
}

func mustCRL(t *testing.T, c *CA, entries []Revocation) []byte {
	t.Helper()
	der, err := c.CRL(entries)
	if err != nil {
		t.Fatalf("CRL: %v", err)
	}
	return der
}
