package svid

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/internal/atomicfile"
)

// FileName is the file in Config.Dir holding the identity. One file rather
// than key, chain and bundle apart, so that a crash can never leave a key
// beside a certificate for another key.
const FileName = "svid.json"

// persisted is the content of FileName. DER throughout (base64 in JSON).
type persisted struct {
	// Key is the PKCS#8 private key.
	Key []byte `json:"key"`
	// Chain is the SVID, leaf first.
	Chain [][]byte `json:"chain"`
	// Bundle is the bundle of the last certificate response; SDSBundle the
	// last one received over SDS (empty until then).
	Bundle     [][]byte  `json:"bundle"`
	SDSBundle  [][]byte  `json:"sdsBundle,omitempty"`
	ObtainedAt time.Time `json:"obtainedAt"`
}

// HasPersisted reports whether dir holds a persisted identity file (valid
// or not); New says whether it is usable.
func HasPersisted(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, FileName))
	return err == nil
}

func load(dir string) (*state, error) {
	path := filepath.Join(dir, FileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load svid %q: %w", path, err)
	}
	var p persisted
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("load svid %q: %w", path, err)
	}
	var raw []byte
	for _, c := range p.Chain {
		raw = append(raw, c...)
	}
	sv, err := x509svid.ParseRaw(raw, p.Key)
	if err != nil {
		return nil, fmt.Errorf("load svid %q: chain: %w", path, err)
	}
	td := sv.ID.TrustDomain()
	st := &state{svid: sv, obtained: p.ObtainedAt}
	if st.issued, err = bundleFrom(td, p.Bundle); err != nil {
		return nil, fmt.Errorf("load svid %q: bundle: %w", path, err)
	}
	if len(p.SDSBundle) > 0 {
		if st.sds, err = bundleFrom(td, p.SDSBundle); err != nil {
			return nil, fmt.Errorf("load svid %q: sdsBundle: %w", path, err)
		}
	}
	return st, nil
}

func bundleFrom(td spiffeid.TrustDomain, ders [][]byte) (*x509bundle.Bundle, error) {
	if len(ders) == 0 {
		return nil, errors.New("empty")
	}
	roots := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		roots = append(roots, c)
	}
	return x509bundle.FromX509Authorities(td, roots), nil
}

func save(dir string, st *state) error {
	_, key, err := st.svid.MarshalRaw()
	if err != nil {
		return fmt.Errorf("save svid: %w", err)
	}
	p := persisted{Key: key, ObtainedAt: st.obtained}
	for _, c := range st.svid.Certificates {
		p.Chain = append(p.Chain, c.Raw)
	}
	for _, c := range st.issued.X509Authorities() {
		p.Bundle = append(p.Bundle, c.Raw)
	}
	if st.sds != nil {
		for _, c := range st.sds.X509Authorities() {
			p.SDSBundle = append(p.SDSBundle, c.Raw)
		}
	}
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("save svid: %w", err)
	}
	// 0600: it holds the private key.
	return atomicfile.Write(filepath.Join(dir, FileName), data, 0o600, 0o700)
}
