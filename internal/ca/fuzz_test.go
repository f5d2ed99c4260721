package ca

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FuzzSignCSR: arbitrary bytes never make SignCSR panic, and whatever it
// accepts yields an SVID for exactly the requested identity that verifies
// against the bundle. Seeds in testdata/fuzz/FuzzSignCSR: valid P-256 and
// Ed25519 CSRs, one naming another identity, an RSA one, garbage.
func FuzzSignCSR(f *testing.F) {
	clk := newFakeClock()
	c := newTestCA(f, clk, nil)
	f.Fuzz(func(t *testing.T, csr []byte) {
		chain, err := c.SignCSR(csr, testID)
		if err != nil {
			return
		}
		id, _, err := x509svid.Verify(chain, c.Bundle(), x509svid.WithTime(clk.Now()))
		if err != nil {
			t.Fatalf("accepted csr gave an svid that does not verify: %v", err)
		}
		if id != testID {
			t.Fatalf("svid for %s, want %s", id, testID)
		}
	})
}
