package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	testTD = spiffeid.RequireTrustDomainFromString("mesh.test")
	testID = spiffeid.RequireFromString("spiffe://mesh.test/ns/default/sa/web")
	t0     = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// fakeClock is a settable clock for Config.Clock and NewTokens.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestCA(t testing.TB, clk *fakeClock, mat *Material) *CA {
	t.Helper()
	c, err := New(Config{TrustDomain: testTD, Clock: clk.Now, Material: mat})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func p256Key(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// makeCSR returns a DER CSR signed by key with the given URI SANs and DNS names.
func makeCSR(t testing.TB, key crypto.Signer, uris []string, dns ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

// leafSummary is what a test checks of an issued SVID.
type leafSummary struct {
	ID             string
	NotBefore      time.Time
	NotAfter       time.Time
	KeyUsage       x509.KeyUsage
	ExtKeyUsage    []x509.ExtKeyUsage
	IsCA           bool
	AKIMatchesCA   bool
	SerialBitsOK   bool
	ChainLen       int
	PublicKeyMatch bool
}

func summarize(chain []*x509.Certificate, signer *x509.Certificate, pub crypto.PublicKey) leafSummary {
	leaf := chain[0]
	s := leafSummary{
		NotBefore:      leaf.NotBefore,
		NotAfter:       leaf.NotAfter,
		KeyUsage:       leaf.KeyUsage,
		ExtKeyUsage:    leaf.ExtKeyUsage,
		IsCA:           leaf.IsCA,
		AKIMatchesCA:   len(leaf.AuthorityKeyId) > 0 && string(leaf.AuthorityKeyId) == string(signer.SubjectKeyId),
		SerialBitsOK:   leaf.SerialNumber.Sign() > 0 && leaf.SerialNumber.BitLen() <= 128,
		ChainLen:       len(chain),
		PublicKeyMatch: publicKeyEqual(pub, leaf),
	}
	if len(leaf.URIs) == 1 {
		s.ID = leaf.URIs[0].String()
	}
	return s
}

func TestSignCSR(t *testing.T) {
	clk := newFakeClock()
	c := newTestCA(t, clk, nil)
	root := c.Material().root
	ecKey := p256Key(t)
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  crypto.Signer
		pub  crypto.PublicKey
		uris []string
		dns  []string
	}{
		{name: "p256 without san", key: ecKey, pub: ecKey.Public()},
		{name: "p256 with own uri san", key: ecKey, pub: ecKey.Public(), uris: []string{testID.String()}},
		{name: "ed25519", key: edKey, pub: edPub},
		{name: "dns names are ignored", key: ecKey, pub: ecKey.Public(), dns: []string{"evil.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.SignCSR(makeCSR(t, tt.key, tt.uris, tt.dns...), testID)
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			want := leafSummary{
				ID:             testID.String(),
				NotBefore:      t0.Add(-time.Minute),
				NotAfter:       t0.Add(DefaultSVIDTTL),
				KeyUsage:       x509.KeyUsageDigitalSignature,
				ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				AKIMatchesCA:   true,
				SerialBitsOK:   true,
				ChainLen:       1,
				PublicKeyMatch: true,
			}
			if diff := cmp.Diff(want, summarize(chain, root, tt.pub)); diff != "" {
				t.Errorf("leaf (-want +got):\n%s", diff)
			}
			if len(chain[0].DNSNames) != 0 {
				t.Errorf("leaf DNSNames = %v, want none copied from the csr", chain[0].DNSNames)
			}
			id, _, err := x509svid.Verify(chain, c.Bundle(), x509svid.WithTime(clk.Now()))
			if err != nil {
				t.Fatalf("x509svid.Verify: %v", err)
			}
			if id != testID {
				t.Errorf("verified id = %s, want %s", id, testID)
			}
		})
	}
}

func TestSignCSRRefused(t *testing.T) {
	clk := newFakeClock()
	c := newTestCA(t, clk, nil)
	ecKey := p256Key(t)
	valid := makeCSR(t, ecKey, nil)

	badSig := append([]byte(nil), valid...)
	badSig[len(badSig)-1] ^= 0xff
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var many []string
	for i := range 200 {
		many = append(many, fmt.Sprintf("host-%03d.padding.example", i))
	}
	oversized := makeCSR(t, ecKey, nil, many...)
	if len(oversized) <= MaxCSRSize {
		t.Fatalf("oversized csr is only %d bytes", len(oversized))
	}
	other := spiffeid.RequireFromString("spiffe://mesh.test/ns/default/sa/db")

	tests := []struct {
		name string
		csr  []byte
		id   spiffeid.ID
		want error
	}{
		{name: "bad signature", csr: badSig, id: testID, want: ErrBadCSR},
		{name: "rsa key", csr: makeCSR(t, rsaKey, nil), id: testID, want: ErrUnsupportedKey},
		{name: "p384 key", csr: makeCSR(t, p384, nil), id: testID, want: ErrUnsupportedKey},
		{name: "oversized", csr: oversized, id: testID, want: ErrCSRTooLarge},
		{name: "uri san for another identity", csr: makeCSR(t, ecKey, []string{other.String()}), id: testID, want: ErrIdentityMismatch},
		{name: "two uri sans", csr: makeCSR(t, ecKey, []string{testID.String(), other.String()}), id: testID, want: ErrIdentityMismatch},
		{name: "non-spiffe uri san", csr: makeCSR(t, ecKey, []string{"https://mesh.test/ns/default/sa/web"}), id: testID, want: ErrIdentityMismatch},
		{name: "garbage", csr: []byte("this is not a certificate request"), id: testID, want: ErrBadCSR},
		{name: "empty", csr: nil, id: testID, want: ErrBadCSR},
		{name: "truncated", csr: valid[:len(valid)/2], id: testID, want: ErrBadCSR},
		{name: "foreign trust domain", csr: valid, id: spiffeid.RequireFromString("spiffe://other.test/ns/default/sa/web"), want: ErrWrongTrustDomain},
		{name: "zero id", csr: valid, id: spiffeid.ID{}, want: ErrWrongTrustDomain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.SignCSR(tt.csr, tt.id)
			if !errors.Is(err, tt.want) {
				t.Fatalf("SignCSR error = %v, want %v", err, tt.want)
			}
			if chain != nil {
				t.Errorf("SignCSR returned a chain with error %v", err)
			}
		})
	}
}

func TestSignCSRCappedAtCAExpiry(t *testing.T) {
	clk := newFakeClock()
	c, err := New(Config{TrustDomain: testTD, Clock: clk.Now, RootTTL: 2 * time.Hour, SVIDTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	csr := makeCSR(t, p256Key(t), nil)
	chain, err := c.SignCSR(csr, testID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chain[0].NotAfter, c.Material().root.NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter = %v, want capped at root's %v", got, want)
	}
	clk.Advance(3 * time.Hour)
	if _, err := c.SignCSR(csr, testID); !errors.Is(err, ErrCAExpired) {
		t.Errorf("SignCSR after root expiry: error = %v, want ErrCAExpired", err)
	}
}

// newOperatorPKI makes an operator root and a chain of depth intermediates
// under it; the last one is the CA the mesh signs with. It returns the chain
// (signing cert first, root last) and the signing key.
func newOperatorPKI(t *testing.T, depth int) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	mk := func(cn string, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
		key := p256Key(t)
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(time.Now().UnixNano()),
			Subject:               pkix.Name{CommonName: cn},
			NotBefore:             t0.Add(-24 * time.Hour),
			NotAfter:              t0.Add(365 * 24 * time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}
	cert, key := mk("operator root", nil, nil)
	chain := []*x509.Certificate{cert}
	for i := range depth {
		cert, key = mk(fmt.Sprintf("operator intermediate %d", i), cert, key)
		chain = append([]*x509.Certificate{cert}, chain...)
	}
	return chain, key
}

func TestIntermediate(t *testing.T) {
	for _, depth := range []int{0, 1, 2} {
		t.Run(fmt.Sprintf("depth %d", depth), func(t *testing.T) {
			clk := newFakeClock()
			opChain, opKey := newOperatorPKI(t, depth)
			opRoot := opChain[len(opChain)-1]
			mat, err := MaterialFromPEM(certsPEM(opChain...), keyPEM(t, opKey))
			if err != nil {
				t.Fatalf("MaterialFromPEM: %v", err)
			}
			c := newTestCA(t, clk, mat)

			if diff := cmp.Diff(rawCerts(opRoot), rawCerts(c.Bundle().X509Authorities()...)); diff != "" {
				t.Errorf("Bundle() (-want +got):\n%s", diff)
			}
			chain, err := c.SignCSR(makeCSR(t, p256Key(t), nil), testID)
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			// The leaf comes with every intermediate, not the root.
			if diff := cmp.Diff(rawCerts(opChain[:len(opChain)-1]...), rawCerts(chain[1:]...)); diff != "" {
				t.Errorf("intermediates (-want +got):\n%s", diff)
			}
			operatorOnly := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{opRoot})
			if _, _, err := x509svid.Verify(chain, operatorOnly, x509svid.WithTime(clk.Now())); err != nil {
				t.Errorf("verify against operator root: %v", err)
			}
			strangerChain, _ := newOperatorPKI(t, 0)
			stranger := x509bundle.FromX509Authorities(testTD, strangerChain)
			if _, _, err := x509svid.Verify(chain, stranger, x509svid.WithTime(clk.Now())); err == nil {
				t.Errorf("leaf verified against an unrelated root")
			}
			if err := c.Rotate(time.Hour); !errors.Is(err, ErrRotateOperatorCA) {
				t.Errorf("Rotate error = %v, want ErrRotateOperatorCA", err)
			}
		})
	}
}

func TestMaterialFromPEMRefused(t *testing.T) {
	opChain, opKey := newOperatorPKI(t, 1)
	_, otherKey := newOperatorPKI(t, 0)
	leafOnly := newLeafCert(t, opChain[0], opKey)
	tests := []struct {
		name     string
		chain    []byte
		key      []byte
		want     error
		newError bool // refused by New rather than by MaterialFromPEM
	}{
		{name: "no root", chain: certsPEM(opChain[0]), key: keyPEM(t, opKey), want: ErrBadMaterial},
		{name: "key mismatch", chain: certsPEM(opChain...), key: keyPEM(t, otherKey), want: ErrBadMaterial},
		{name: "garbage chain", chain: []byte("garbage"), key: keyPEM(t, opKey), want: ErrBadMaterial},
		{name: "garbage key", chain: certsPEM(opChain...), key: []byte("garbage"), want: ErrBadMaterial},
		{name: "not a ca", chain: certsPEM(append([]*x509.Certificate{leafOnly.cert}, opChain...)...), key: keyPEM(t, leafOnly.key), want: ErrBadMaterial, newError: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mat, err := MaterialFromPEM(tt.chain, tt.key)
			if tt.newError {
				if err != nil {
					t.Fatalf("MaterialFromPEM: %v", err)
				}
				_, err = New(Config{TrustDomain: testTD, Clock: newFakeClock().Now, Material: mat})
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRotate(t *testing.T) {
	clk := newFakeClock()
	c := newTestCA(t, clk, nil)
	oldRoot := c.Material().root
	oldLeaf, err := c.SignCSR(makeCSR(t, p256Key(t), nil), testID)
	if err != nil {
		t.Fatal(err)
	}
	const overlap = 25 * time.Hour
	if err := c.Rotate(overlap); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	newRoot := c.Material().root
	if newRoot.Equal(oldRoot) {
		t.Fatal("Rotate kept the old root")
	}
	newLeaf, err := c.SignCSR(makeCSR(t, p256Key(t), nil), testID)
	if err != nil {
		t.Fatal(err)
	}
	if err := newLeaf[0].CheckSignatureFrom(newRoot); err != nil {
		t.Errorf("new leaf not signed by the new root: %v", err)
	}

	// Persist the rotation state and reload it, as a restart would.
	dir := t.TempDir()
	if err := c.Material().Save(dir, []byte("pass")); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(dir, []byte("pass"))
	if err != nil {
		t.Fatal(err)
	}
	reloaded := newTestCA(t, clk, loaded)

	steps := []struct {
		advance   time.Duration
		wantRoots []*x509.Certificate
		oldLeafOK bool
		newLeafOK bool
	}{
		{advance: 0, wantRoots: []*x509.Certificate{newRoot, oldRoot}, oldLeafOK: true, newLeafOK: true},
		{advance: 12 * time.Hour, wantRoots: []*x509.Certificate{newRoot, oldRoot}, oldLeafOK: true, newLeafOK: true},
		// Past the overlap the old root is gone. Verify at a time when the
		// old leaf would otherwise still be valid, so only the bundle can
		// refuse it.
		{advance: overlap - 12*time.Hour, wantRoots: []*x509.Certificate{newRoot}, oldLeafOK: false, newLeafOK: true},
	}
	for i, s := range steps {
		clk.Advance(s.advance)
		for name, ca := range map[string]*CA{"running": c, "reloaded": reloaded} {
			b := ca.Bundle()
			if diff := cmp.Diff(rawCerts(s.wantRoots...), rawCerts(b.X509Authorities()...)); diff != "" {
				t.Errorf("step %d %s: Bundle() (-want +got):\n%s", i, name, diff)
			}
			at := x509svid.WithTime(t0.Add(time.Hour))
			if _, _, err := x509svid.Verify(oldLeaf, b, at); (err == nil) != s.oldLeafOK {
				t.Errorf("step %d %s: verify old leaf: err = %v, want ok = %v", i, name, err, s.oldLeafOK)
			}
			if _, _, err := x509svid.Verify(newLeaf, b, at); (err == nil) != s.newLeafOK {
				t.Errorf("step %d %s: verify new leaf: err = %v, want ok = %v", i, name, err, s.newLeafOK)
			}
		}
	}
	if err := c.Rotate(-time.Second); err == nil {
		t.Error("Rotate with negative overlap succeeded")
	}
}

func TestNewRefused(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no trust domain", cfg: Config{}},
		{name: "negative ttl", cfg: Config{TrustDomain: testTD, SVIDTTL: -time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatal("New succeeded")
			}
		})
	}
}

func BenchmarkSignCSR(b *testing.B) {
	c, err := New(Config{TrustDomain: testTD})
	if err != nil {
		b.Fatal(err)
	}
	csr := makeCSR(b, p256Key(b), []string{testID.String()})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SignCSR(csr, testID); err != nil {
			b.Fatal(err)
		}
	}
}
