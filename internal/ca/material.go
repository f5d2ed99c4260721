package ca

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/scrypt"

	"verge.dev/verge/internal/atomicfile"
)

// Material is the CA's signing state: the signing key and certificate, the
// intermediates between it and its root, the root, and earlier roots still
// trusted during a rotation's overlap window. It is immutable once built.
// Obtain it from Load, MaterialFromPEM or CA.Material.
type Material struct {
	key crypto.Signer
	// cert signs SVIDs: the root itself (self-signed mode) or the operator's
	// intermediate.
	cert *x509.Certificate
	// intermediates sit between cert and root, excluding both.
	intermediates []*x509.Certificate
	root          *x509.Certificate
	retired       []retiredRoot
	// operator is true when the material came from the operator
	// (MaterialFromPEM); such a CA is never rotated by us.
	operator bool
}

type retiredRoot struct {
	cert  *x509.Certificate
	until time.Time
}

// trusted returns the roots in the bundle at now: the current root first, then
// retired roots whose overlap has not passed.
func (m *Material) trusted(now time.Time) []*x509.Certificate {
	roots := []*x509.Certificate{m.root}
	for _, r := range m.retired {
		if now.Before(r.until) {
			roots = append(roots, r.cert)
		}
	}
	return roots
}

// notAfter is the earliest expiry in the signing chain: no SVID may outlive it.
func (m *Material) notAfter() time.Time {
	t := m.cert.NotAfter
	for _, c := range append([]*x509.Certificate{m.root}, m.intermediates...) {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// verify checks that the material can sign at now: the key matches the signing
// certificate, which is a CA allowed to sign certificates and chains to the
// root through the intermediates.
func (m *Material) verify(now time.Time) error {
	if m == nil || m.key == nil || m.cert == nil || m.root == nil {
		return fmt.Errorf("%w: incomplete", ErrBadMaterial)
	}
	if !publicKeyEqual(m.key.Public(), m.cert) {
		return fmt.Errorf("%w: key does not match certificate %q", ErrBadMaterial, m.cert.Subject)
	}
	if !m.cert.BasicConstraintsValid || !m.cert.IsCA {
		return fmt.Errorf("%w: certificate %q is not a ca", ErrBadMaterial, m.cert.Subject)
	}
	if m.cert.KeyUsage != 0 && m.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: certificate %q lacks the certSign key usage", ErrBadMaterial, m.cert.Subject)
	}
	roots := x509.NewCertPool()
	roots.AddCert(m.root)
	inter := x509.NewCertPool()
	for _, c := range m.intermediates {
		inter.AddCert(c)
	}
	_, err := m.cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("%w: verify chain of %q: %w", ErrBadMaterial, m.cert.Subject, err)
	}
	return nil
}

// MaterialFromPEM builds material from an operator's files (--ca-cert,
// --ca-key). chainPEM holds the CA certificate the mesh signs with first, then
// any intermediates, and last the operator's root (self-signed); the root
// alone makes the CA sign directly under it. keyPEM holds the CA certificate's
// private key (PKCS#8, SEC 1 or PKCS#1). The bundle of a CA built from it is
// the operator's root. The chain is verified against the clock in New.
func MaterialFromPEM(chainPEM, keyPEM []byte) (*Material, error) {
	certs, err := ParseCertificatesPEM(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("parse ca chain: %w", err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("parse ca chain: %w: no CERTIFICATE block", ErrBadMaterial)
	}
	root := certs[len(certs)-1]
	if !selfSigned(root) {
		return nil, fmt.Errorf("parse ca chain: %w: last certificate %q is not self-signed: append the root", ErrBadMaterial, root.Subject)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse ca key: %w", err)
	}
	m := &Material{key: key, cert: certs[0], root: root, operator: true}
	if len(certs) > 2 {
		m.intermediates = certs[1 : len(certs)-1]
	}
	if !publicKeyEqual(key.Public(), m.cert) {
		return nil, fmt.Errorf("parse ca key: %w: key does not match certificate %q", ErrBadMaterial, m.cert.Subject)
	}
	return m, nil
}

func selfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func parseKeyPEM(keyPEM []byte) (crypto.Signer, error) {
	for rest := keyPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("%w: no private key PEM block", ErrBadMaterial)
		}
		var (
			k   any
			err error
		)
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s block: %w", ErrBadMaterial, b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: key type %T cannot sign", ErrBadMaterial, k)
		}
		return s, nil
	}
}

// File format of Save and Load.
//
// One file, FileName, in the directory, mode 0600: a JSON object
//
//	{"format": "verge-ca/v1",
//	 "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<base64, 16 bytes>"},
//	 "cipher": "AES-256-GCM",
//	 "nonce": "<base64, 12 bytes>",
//	 "ciphertext": "<base64>"}
//
// The AES-256 key is scrypt(passphrase, salt, n, r, p, 32). The ciphertext
// seals the JSON object fileState (key as PKCS#8 DER, certificates as DER,
// retired roots with the end of their overlap window); the additional data is
// the format string and the KDF parameters, so they cannot be altered either.
// The certificates are sealed with the key, not stored beside it in clear:
// whoever can write the file could otherwise add a root to the trust bundle.
// GCM cannot tell a wrong passphrase from a modified file; both give
// ErrBadPassphrase. A new salt and nonce are drawn on every Save.
const (
	FileName   = "ca.json"
	fileFormat = "verge-ca/v1"
	// scrypt parameters recommended for interactive logins in 2017 (N=2^15,
	// r=8, p=1: about 32 MiB and tens of milliseconds). Stored in the file so
	// they can be raised without breaking old files.
	scryptN = 1 << 15
	scryptR = 8
	scryptP = 1
	// maxScryptN bounds N read from a file, so a crafted file cannot make
	// Load allocate gigabytes.
	maxScryptN = 1 << 20
)

type fileEnvelope struct {
	Format     string  `json:"format"`
	KDF        fileKDF `json:"kdf"`
	Cipher     string  `json:"cipher"`
	Nonce      []byte  `json:"nonce"`
	Ciphertext []byte  `json:"ciphertext"`
}

type fileKDF struct {
	Name string `json:"name"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
	Salt []byte `json:"salt"`
}

type fileState struct {
	Key           []byte        `json:"key_pkcs8"`
	Cert          []byte        `json:"cert"`
	Intermediates [][]byte      `json:"intermediates,omitempty"`
	Root          []byte        `json:"root"`
	Retired       []fileRetired `json:"retired,omitempty"`
	Operator      bool          `json:"operator,omitempty"`
}

type fileRetired struct {
	Cert  []byte    `json:"cert"`
	Until time.Time `json:"until"`
}

func (k fileKDF) additionalData() ([]byte, error) {
	return json.Marshal(struct {
		Format string  `json:"format"`
		KDF    fileKDF `json:"kdf"`
		Cipher string  `json:"cipher"`
	}{fileFormat, k, "AES-256-GCM"})
}

func (k fileKDF) aead(passphrase []byte) (cipher.AEAD, error) {
	if k.Name != "scrypt" || k.N < 2 || k.N > maxScryptN || k.R < 1 || k.R > 32 || k.P < 1 || k.P > 16 {
		return nil, fmt.Errorf("unsupported kdf %s n=%d r=%d p=%d", k.Name, k.N, k.R, k.P)
	}
	dk, err := scrypt.Key(passphrase, k.Salt, k.N, k.R, k.P, 32)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	block, err := aes.NewCipher(dk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Save writes m to dir/FileName, encrypted with a key derived from passphrase
// (see the file format above). The directory is created (0700) if missing; the
// write is atomic and durable: temp file, fsync, rename, fsync of the directory.
func (m *Material) Save(dir string, passphrase []byte) error {
	path := filepath.Join(dir, FileName)
	if len(passphrase) == 0 {
		return fmt.Errorf("save ca %q: passphrase is empty", path)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(m.key)
	if err != nil {
		return fmt.Errorf("save ca %q: marshal key: %w", path, err)
	}
	st := fileState{Key: pkcs8, Cert: m.cert.Raw, Root: m.root.Raw, Operator: m.operator}
	for _, c := range m.intermediates {
		st.Intermediates = append(st.Intermediates, c.Raw)
	}
	for _, r := range m.retired {
		st.Retired = append(st.Retired, fileRetired{Cert: r.cert.Raw, Until: r.until.UTC()})
	}
	plain, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("save ca %q: %w", path, err)
	}
	kdf := fileKDF{Name: "scrypt", N: scryptN, R: scryptR, P: scryptP, Salt: make([]byte, 16)}
	if _, err := rand.Read(kdf.Salt); err != nil {
		return fmt.Errorf("save ca %q: salt: %w", path, err)
	}
	aead, err := kdf.aead(passphrase)
	if err != nil {
		return fmt.Errorf("save ca %q: %w", path, err)
	}
	ad, err := kdf.additionalData()
	if err != nil {
		return fmt.Errorf("save ca %q: %w", path, err)
	}
	env := fileEnvelope{Format: fileFormat, KDF: kdf, Cipher: "AES-256-GCM", Nonce: make([]byte, aead.NonceSize())}
	if _, err := rand.Read(env.Nonce); err != nil {
		return fmt.Errorf("save ca %q: nonce: %w", path, err)
	}
	env.Ciphertext = aead.Seal(nil, env.Nonce, plain, ad)
	out, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return fmt.Errorf("save ca %q: %w", path, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, FileName), append(out, '\n'), 0o600, 0o700); err != nil {
		return fmt.Errorf("save ca %q: %w", path, err)
	}
	return nil
}

// Load reads and decrypts dir/FileName written by Save. A missing file gives
// an error wrapping fs.ErrNotExist (first start: let New generate a root and
// Save it); a wrong passphrase or modified file gives ErrBadPassphrase. The
// material is checked against the clock in New.
func Load(dir string, passphrase []byte) (*Material, error) {
	path := filepath.Join(dir, FileName)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	var env fileEnvelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil, fmt.Errorf("load ca %q: %w", path, err)
	}
	if env.Format != fileFormat || env.Cipher != "AES-256-GCM" {
		return nil, fmt.Errorf("load ca %q: unsupported format %q cipher %q", path, env.Format, env.Cipher)
	}
	aead, err := env.KDF.aead(passphrase)
	if err != nil {
		return nil, fmt.Errorf("load ca %q: %w", path, err)
	}
	if len(env.Nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("load ca %q: nonce is %d bytes, want %d", path, len(env.Nonce), aead.NonceSize())
	}
	ad, err := env.KDF.additionalData()
	if err != nil {
		return nil, fmt.Errorf("load ca %q: %w", path, err)
	}
	plain, err := aead.Open(nil, env.Nonce, env.Ciphertext, ad)
	if err != nil {
		return nil, fmt.Errorf("load ca %q: %w", path, ErrBadPassphrase)
	}
	var st fileState
	if err := json.Unmarshal(plain, &st); err != nil {
		return nil, fmt.Errorf("load ca %q: state: %w", path, err)
	}
	m, err := st.material()
	if err != nil {
		return nil, fmt.Errorf("load ca %q: %w", path, err)
	}
	return m, nil
}

func (st fileState) material() (*Material, error) {
	k, err := x509.ParsePKCS8PrivateKey(st.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: key: %w", ErrBadMaterial, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: key type %T cannot sign", ErrBadMaterial, k)
	}
	m := &Material{key: key, operator: st.Operator}
	if m.cert, err = x509.ParseCertificate(st.Cert); err != nil {
		return nil, fmt.Errorf("%w: cert: %w", ErrBadMaterial, err)
	}
	if m.root, err = x509.ParseCertificate(st.Root); err != nil {
		return nil, fmt.Errorf("%w: root: %w", ErrBadMaterial, err)
	}
	if m.cert.Equal(m.root) {
		m.cert = m.root // SignCSR tells self-signed mode by identity
	}
	for i, der := range st.Intermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: intermediates[%d]: %w", ErrBadMaterial, i, err)
		}
		m.intermediates = append(m.intermediates, c)
	}
	for i, r := range st.Retired {
		c, err := x509.ParseCertificate(r.Cert)
		if err != nil {
			return nil, fmt.Errorf("%w: retired[%d]: %w", ErrBadMaterial, i, err)
		}
		m.retired = append(m.retired, retiredRoot{cert: c, until: r.Until})
	}
	return m, nil
}

// ParseCertificatesPEM parses every CERTIFICATE block of data, in order,
// skipping blocks of other types; an empty result is not an error.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return certs, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs), err)
		}
		certs = append(certs, c)
	}
}
