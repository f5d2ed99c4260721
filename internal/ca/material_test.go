package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func certsPEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func keyPEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func rawCerts(certs ...*x509.Certificate) [][]byte {
	out := make([][]byte, 0, len(certs))
	for _, c := range certs {
		out = append(out, c.Raw)
	}
	return out
}

type certAndKey struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// newLeafCert returns a non-CA certificate signed by parent.
func newLeafCert(t *testing.T, parent *x509.Certificate, parentKey crypto.Signer) certAndKey {
	t.Helper()
	key := p256Key(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return certAndKey{cert, key}
}

func TestSaveLoad(t *testing.T) {
	clk := newFakeClock()
	opChain, opKey := newOperatorPKI(t, 1)
	opMat, err := MaterialFromPEM(certsPEM(opChain...), keyPEM(t, opKey))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mat  *Material // nil: self-signed root
	}{
		{name: "self-signed root"},
		{name: "operator intermediate", mat: opMat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCA(t, clk, tt.mat)
			dir := filepath.Join(t.TempDir(), "ca") // Save creates it
			pass := []byte("correct horse battery staple")
			if err := c.Material().Save(dir, pass); err != nil {
				t.Fatalf("Save: %v", err)
			}
			// Saving twice replaces the file and leaves no temp files.
			if err := c.Material().Save(dir, pass); err != nil {
				t.Fatalf("second Save: %v", err)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 || entries[0].Name() != FileName {
				t.Errorf("dir holds %v, want only %s", entries, FileName)
			}
			info, err := os.Stat(filepath.Join(dir, FileName))
			if err != nil {
				t.Fatal(err)
			}
			if perm := info.Mode().Perm(); perm != 0o600 {
				t.Errorf("file mode = %v, want 0600", perm)
			}
			raw, err := os.ReadFile(filepath.Join(dir, FileName))
			if err != nil {
				t.Fatal(err)
			}
			pkcs8, err := x509.MarshalPKCS8PrivateKey(c.Material().key)
			if err != nil {
				t.Fatal(err)
			}
			for _, secret := range [][]byte{pkcs8, c.Material().cert.Raw} {
				if bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString(secret))) || bytes.Contains(raw, secret) {
					t.Errorf("file holds key or certificate in clear")
				}
			}

			loaded, err := Load(dir, pass)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			c2 := newTestCA(t, clk, loaded)
			if diff := cmp.Diff(rawCerts(c.Bundle().X509Authorities()...), rawCerts(c2.Bundle().X509Authorities()...)); diff != "" {
				t.Errorf("Bundle after Load (-want +got):\n%s", diff)
			}
			if loaded.operator != c.Material().operator {
				t.Errorf("operator = %v after Load, want %v", loaded.operator, c.Material().operator)
			}
			chain, err := c2.SignCSR(makeCSR(t, p256Key(t), nil), testID)
			if err != nil {
				t.Fatalf("SignCSR with loaded material: %v", err)
			}
			if _, _, err := x509svid.Verify(chain, c.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
				t.Errorf("leaf from loaded material does not verify against the original bundle: %v", err)
			}
		})
	}
}

func TestLoadRefused(t *testing.T) {
	c := newTestCA(t, newFakeClock(), nil)
	pass := []byte("right")
	tests := []struct {
		name   string
		pass   []byte
		mutate func(env map[string]any)
		want   error
	}{
		{name: "wrong passphrase", pass: []byte("wrong"), want: ErrBadPassphrase},
		{name: "empty passphrase", pass: nil, want: ErrBadPassphrase},
		{name: "tampered ciphertext", pass: pass, want: ErrBadPassphrase, mutate: func(env map[string]any) {
			ct, _ := base64.StdEncoding.DecodeString(env["ciphertext"].(string))
			ct[len(ct)/2] ^= 1
			env["ciphertext"] = base64.StdEncoding.EncodeToString(ct)
		}},
		{name: "tampered kdf parameters", pass: pass, want: ErrBadPassphrase, mutate: func(env map[string]any) {
			env["kdf"].(map[string]any)["n"] = 1 << 14
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := c.Material().Save(dir, pass); err != nil {
				t.Fatal(err)
			}
			if tt.mutate != nil {
				path := filepath.Join(dir, FileName)
				raw, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				var env map[string]any
				if err := json.Unmarshal(raw, &env); err != nil {
					t.Fatal(err)
				}
				tt.mutate(env)
				if raw, err = json.Marshal(env); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, raw, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := Load(dir, tt.pass); !errors.Is(err, tt.want) {
				t.Fatalf("Load error = %v, want %v", err, tt.want)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		if _, err := Load(t.TempDir(), pass); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Load error = %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("save with empty passphrase", func(t *testing.T) {
		if err := c.Material().Save(t.TempDir(), nil); err == nil {
			t.Fatal("Save with empty passphrase succeeded")
		}
	})
}
