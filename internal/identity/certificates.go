package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strings"
	"sync"

	"verge.dev/verge/internal/store"
)

// CertificatePrefix is the store prefix of the issuance log: one key per
// certificate the CA signed, CertificatePrefix + serial (lower-case hex),
// holding its CertificateInfo as JSON.
const CertificatePrefix = "/verge.dev/certificates/"

// ErrCertificateNotFound is returned by a CertificateLog for a serial it
// does not hold.
var ErrCertificateNotFound = errors.New("identity: certificate not found")

// CertificateLog records the certificates the CA signed, so that they can
// be listed and revoked. Implementations are safe for concurrent use and
// return values the caller owns. StoreCertificates keeps them in the
// control plane's store; New falls back to an in-memory log.
type CertificateLog interface {
	// Create records a new certificate. The write is durable when it
	// returns: the certificate is then handed out.
	Create(ctx context.Context, c CertificateInfo) error
	// Get returns the record of serial, or ErrCertificateNotFound.
	Get(ctx context.Context, serial string) (CertificateInfo, error)
	// Update atomically replaces the record of serial by fn's result. If fn
	// returns an error nothing is written and Update returns it; an unknown
	// serial gives ErrCertificateNotFound. fn may run more than once.
	Update(ctx context.Context, serial string, fn func(CertificateInfo) (CertificateInfo, error)) (CertificateInfo, error)
	// List returns every record in any order.
	List(ctx context.Context) ([]CertificateInfo, error)
	// Delete removes a record, or fails with ErrCertificateNotFound.
	Delete(ctx context.Context, serial string) error
}

// normalSerial returns serial as the log keys it (lower-case hex without
// leading zeros, big.Int.Text(16)), or false when it is not a positive hex
// number.
func normalSerial(serial string) (string, bool) {
	if serial == "" || len(serial) > 64 {
		return "", false
	}
	n, ok := new(big.Int).SetString(serial, 16)
	if !ok || n.Sign() <= 0 {
		return "", false
	}
	return n.Text(16), true
}

// StoreCertificates is a CertificateLog over the control plane's store, so
// the log (and with it every revocation) survives restarts.
type StoreCertificates struct {
	st store.Store
}

var _ CertificateLog = (*StoreCertificates)(nil)

// NewStoreCertificates returns a CertificateLog keeping records in st under
// CertificatePrefix.
func NewStoreCertificates(st store.Store) *StoreCertificates { return &StoreCertificates{st: st} }

func certKey(serial string) (string, bool) {
	s, ok := normalSerial(serial)
	return CertificatePrefix + s, ok
}

// Create implements CertificateLog.
func (s *StoreCertificates) Create(ctx context.Context, c CertificateInfo) error {
	key, ok := certKey(c.Serial)
	if !ok {
		return fmt.Errorf("record certificate: serial %q: not a positive hex number", c.Serial)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("record certificate %s: %w", c.Serial, err)
	}
	if _, err := s.st.Create(ctx, key, b); err != nil {
		return fmt.Errorf("record certificate %s: %w", c.Serial, err)
	}
	return nil
}

// Get implements CertificateLog.
func (s *StoreCertificates) Get(ctx context.Context, serial string) (CertificateInfo, error) {
	c, _, err := s.get(ctx, serial)
	return c, err
}

func (s *StoreCertificates) get(ctx context.Context, serial string) (CertificateInfo, int64, error) {
	key, ok := certKey(serial)
	if !ok {
		return CertificateInfo{}, 0, ErrCertificateNotFound
	}
	kv, err := s.st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return CertificateInfo{}, 0, ErrCertificateNotFound
	}
	if err != nil {
		return CertificateInfo{}, 0, fmt.Errorf("read certificate %s: %w", serial, err)
	}
	var c CertificateInfo
	if err := json.Unmarshal(kv.Value, &c); err != nil {
		return CertificateInfo{}, 0, fmt.Errorf("decode certificate %s: %w", serial, err)
	}
	return c, kv.ModRevision, nil
}

// Update implements CertificateLog: read, apply fn, write if the record was
// not changed meanwhile, else retry (at most maxUpdateAttempts times).
func (s *StoreCertificates) Update(ctx context.Context, serial string, fn func(CertificateInfo) (CertificateInfo, error)) (CertificateInfo, error) {
	key, _ := certKey(serial)
	for range maxUpdateAttempts {
		c, rev, err := s.get(ctx, serial)
		if err != nil {
			return CertificateInfo{}, err
		}
		next, err := fn(c)
		if err != nil {
			return CertificateInfo{}, err
		}
		next.Serial = c.Serial
		b, err := json.Marshal(next)
		if err != nil {
			return CertificateInfo{}, fmt.Errorf("encode certificate %s: %w", serial, err)
		}
		_, err = s.st.Update(ctx, key, b, rev)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return CertificateInfo{}, fmt.Errorf("write certificate %s: %w", serial, err)
		}
		return next, nil
	}
	return CertificateInfo{}, fmt.Errorf("update certificate %s: %w after %d attempts", serial, store.ErrConflict, maxUpdateAttempts)
}

// List implements CertificateLog.
func (s *StoreCertificates) List(ctx context.Context) ([]CertificateInfo, error) {
	kvs, _, err := s.st.List(ctx, CertificatePrefix)
	if err != nil {
		return nil, fmt.Errorf("list certificates: %w", err)
	}
	out := make([]CertificateInfo, 0, len(kvs))
	for _, kv := range kvs {
		var c CertificateInfo
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("decode certificate %q: %w", kv.Key, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// Delete implements CertificateLog.
func (s *StoreCertificates) Delete(ctx context.Context, serial string) error {
	key, ok := certKey(serial)
	if !ok {
		return ErrCertificateNotFound
	}
	if _, err := s.st.Delete(ctx, key, 0); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return ErrCertificateNotFound
		}
		return fmt.Errorf("delete certificate %s: %w", serial, err)
	}
	return nil
}

// memCertificates is the in-memory CertificateLog New uses when given
// none: for tests and embedders whose certificates need not outlive the
// process.
type memCertificates struct {
	mu    sync.Mutex
	certs map[string]CertificateInfo
}

func newMemCertificates() *memCertificates {
	return &memCertificates{certs: map[string]CertificateInfo{}}
}

func (m *memCertificates) Create(_ context.Context, c CertificateInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.certs[c.Serial]; ok {
		return fmt.Errorf("record certificate %s: %w", c.Serial, store.ErrExists)
	}
	m.certs[c.Serial] = c
	return nil
}

func (m *memCertificates) Get(_ context.Context, serial string) (CertificateInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, _ := normalSerial(serial)
	c, ok := m.certs[s]
	if !ok {
		return CertificateInfo{}, ErrCertificateNotFound
	}
	return c, nil
}

func (m *memCertificates) Update(_ context.Context, serial string, fn func(CertificateInfo) (CertificateInfo, error)) (CertificateInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, _ := normalSerial(serial)
	c, ok := m.certs[s]
	if !ok {
		return CertificateInfo{}, ErrCertificateNotFound
	}
	next, err := fn(c)
	if err != nil {
		return CertificateInfo{}, err
	}
	next.Serial = s
	m.certs[s] = next
	return next, nil
}

func (m *memCertificates) List(context.Context) ([]CertificateInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Collect(maps.Values(m.certs)), nil
}

func (m *memCertificates) Delete(_ context.Context, serial string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, _ := normalSerial(serial)
	if _, ok := m.certs[s]; !ok {
		return ErrCertificateNotFound
	}
	delete(m.certs, s)
	return nil
}

// filterCertificates keeps the records matching the non-empty filters.
func filterCertificates(certs []CertificateInfo, spiffeID, tokenID string) []CertificateInfo {
	return slices.DeleteFunc(certs, func(c CertificateInfo) bool {
		return (spiffeID != "" && c.SPIFFEID != spiffeID) || (tokenID != "" && !strings.EqualFold(c.TokenID, tokenID))
	})
}
