package ca

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Join token errors; Redeem wraps exactly one of them.
var (
	// ErrTokenInvalid: malformed secret, unknown token, or wrong secret for
	// the token's ID. One error for all three so Redeem is no oracle.
	ErrTokenInvalid  = errors.New("ca: invalid join token")
	ErrTokenExpired  = errors.New("ca: join token expired")
	ErrTokenRevoked  = errors.New("ca: join token revoked")
	ErrTokenUsedUp   = errors.New("ca: join token has no uses left")
	ErrBadTokenSpec  = errors.New("ca: invalid join token spec")
	ErrTokenNotFound = errors.New("ca: join token not found")
	ErrTokenExists   = errors.New("ca: join token already exists")
)

// secretPrefix versions the secret format: "vt1.<id>.<base64url of 32 random
// bytes>". The ID is readable without the secret so an operator can find and
// revoke a leaked token from what was leaked.
const secretPrefix = "vt1."

// TokenSpec describes a join token to create.
type TokenSpec struct {
	// Namespace and ServiceAccount are the identity the token lets a proxy
	// claim (see SVIDFor): a DNS-1123 label and a DNS-1123 subdomain.
	Namespace      string
	ServiceAccount string
	// TTL is how long the token can be redeemed; must be positive.
	TTL time.Duration
	// Uses is how many times it can be redeemed: 0 unlimited, 1 single use.
	Uses int
}

// Token is a stored join token. It holds only the SHA-256 of its secret, and
// its LogValue leaves even that out. The JSON form is what a TokenStore backed
// by internal/store keeps.
type Token struct {
	ID             string `json:"id"`
	TrustDomain    string `json:"trustDomain"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	// SecretSHA256 is the hex SHA-256 of the whole secret string.
	SecretSHA256 string    `json:"secretSHA256"`
	CreatedAt    time.Time `json:"createdAt"`
	ExpiresAt    time.Time `json:"expiresAt"`
	// Uses is the limit (0 unlimited); Used counts successful redemptions.
	Uses    int  `json:"uses"`
	Used    int  `json:"used"`
	Revoked bool `json:"revoked,omitempty"`
}

// LogValue implements slog.LogValuer without the secret's hash.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", t.ID),
		slog.String("namespace", t.Namespace),
		slog.String("service_account", t.ServiceAccount),
		slog.Time("expires_at", t.ExpiresAt),
		slog.Int("uses", t.Uses),
		slog.Int("used", t.Used),
		slog.Bool("revoked", t.Revoked),
	)
}

// Secret is a join token's secret, returned once by Create. It is redacted in
// logs and by fmt (String); string(s) gives the value to hand to the operator.
type Secret string

// LogValue implements slog.LogValuer: the token ID, never the secret part.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// String returns the redacted form "vt1.<id>.REDACTED".
func (s Secret) String() string {
	if id, _, ok := splitSecret(string(s)); ok {
		return secretPrefix + id + ".REDACTED"
	}
	return "REDACTED"
}

// GoString keeps %#v from printing the secret too.
func (s Secret) GoString() string { return s.String() }

func splitSecret(s string) (id, random string, ok bool) {
	rest, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return "", "", false
	}
	id, random, ok = strings.Cut(rest, ".")
	return id, random, ok && id != "" && random != ""
}

func hashSecret(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TokenStore is the storage Tokens needs. Implementations are safe for
// concurrent use and return values the caller owns. MemTokenStore is one; the
// control plane provides one over internal/store.
type TokenStore interface {
	// Create stores a new token, or fails with ErrTokenExists.
	Create(ctx context.Context, tok Token) error
	// Update atomically replaces the token with ID id by fn's result and
	// returns it. If fn returns an error nothing is written and Update returns
	// that error. An unknown id gives ErrTokenNotFound. An implementation over
	// an optimistic store retries on conflict, so fn must be free of side
	// effects and must not call the store (MemTokenStore runs it under its lock).
	Update(ctx context.Context, id string, fn func(Token) (Token, error)) (Token, error)
	// Get returns the token with ID id, or ErrTokenNotFound.
	Get(ctx context.Context, id string) (Token, error)
	// List returns every stored token in any order.
	List(ctx context.Context) ([]Token, error)
	// Delete removes a token, or fails with ErrTokenNotFound.
	Delete(ctx context.Context, id string) error
}

// Tokens creates, redeems and revokes join tokens for one trust domain. Safe
// for concurrent use; atomicity of Redeem comes from TokenStore.Update.
type Tokens struct {
	store TokenStore
	td    spiffeid.TrustDomain
	now   func() time.Time
}

// NewTokens returns Tokens storing in store. clock is time.Now when nil.
func NewTokens(td spiffeid.TrustDomain, store TokenStore, clock func() time.Time) *Tokens {
	if clock == nil {
		clock = time.Now
	}
	return &Tokens{store: store, td: td, now: clock}
}

// Create makes a token for spec and returns its secret (shown to the operator
// once; only its hash is stored) and the stored token. A bad spec gives
// ErrBadTokenSpec naming the field.
func (t *Tokens) Create(ctx context.Context, spec TokenSpec) (Secret, Token, error) {
	if t.td.IsZero() {
		return "", Token{}, fmt.Errorf("create join token: %w: trust domain is empty", ErrBadTokenSpec)
	}
	if err := checkNames(spec.Namespace, spec.ServiceAccount); err != nil {
		return "", Token{}, fmt.Errorf("create join token: %w: %w", ErrBadTokenSpec, err)
	}
	if spec.TTL <= 0 {
		return "", Token{}, fmt.Errorf("create join token: %w: ttl %v: must be positive", ErrBadTokenSpec, spec.TTL)
	}
	if spec.Uses < 0 {
		return "", Token{}, fmt.Errorf("create join token: %w: uses %d: must be at least 0", ErrBadTokenSpec, spec.Uses)
	}
	var idb [8]byte
	var rnd [32]byte
	rand.Read(idb[:]) // crypto/rand.Read never returns an error (Go 1.24+)
	rand.Read(rnd[:])
	id := hex.EncodeToString(idb[:])
	secret := secretPrefix + id + "." + base64.RawURLEncoding.EncodeToString(rnd[:])
	now := t.now()
	tok := Token{
		ID:             id,
		TrustDomain:    t.td.Name(),
		Namespace:      spec.Namespace,
		ServiceAccount: spec.ServiceAccount,
		SecretSHA256:   hashSecret(secret),
		CreatedAt:      now,
		ExpiresAt:      now.Add(spec.TTL),
		Uses:           spec.Uses,
	}
	if err := t.store.Create(ctx, tok); err != nil {
		return "", Token{}, fmt.Errorf("create join token %s: %w", id, err)
	}
	return Secret(secret), tok, nil
}

// Redeem checks secret and, if its token is valid, unexpired, unrevoked and
// has uses left, counts one use and returns the token (SVIDFor gives the
// identity it grants). Two concurrent Redeems of a single-use token: exactly
// one succeeds. Errors wrap ErrTokenInvalid, ErrTokenExpired, ErrTokenRevoked
// or ErrTokenUsedUp, or are the store's.
func (t *Tokens) Redeem(ctx context.Context, secret string) (Token, error) {
	id, random, ok := splitSecret(secret)
	if !ok {
		return Token{}, fmt.Errorf("redeem join token: %w: malformed secret", ErrTokenInvalid)
	}
	if b, err := base64.RawURLEncoding.DecodeString(random); err != nil || len(b) != 32 {
		return Token{}, fmt.Errorf("redeem join token %s: %w: malformed secret", id, ErrTokenInvalid)
	}
	want := hashSecret(secret)
	now := t.now()
	tok, err := t.store.Update(ctx, id, func(tok Token) (Token, error) {
		if subtle.ConstantTimeCompare([]byte(tok.SecretSHA256), []byte(want)) != 1 {
			return tok, ErrTokenInvalid
		}
		switch {
		case tok.Revoked:
			return tok, ErrTokenRevoked
		case !now.Before(tok.ExpiresAt):
			return tok, ErrTokenExpired
		case tok.Uses > 0 && tok.Used >= tok.Uses:
			return tok, ErrTokenUsedUp
		}
		tok.Used++
		return tok, nil
	})
	if errors.Is(err, ErrTokenNotFound) {
		err = ErrTokenInvalid
	}
	if err != nil {
		return Token{}, fmt.Errorf("redeem join token %s: %w", id, err)
	}
	return tok, nil
}

// Revoke marks the token revoked: later Redeems fail with ErrTokenRevoked.
// The record stays, visible in List, until Prune removes it after expiry.
// Unknown ids give ErrTokenNotFound.
func (t *Tokens) Revoke(ctx context.Context, id string) error {
	_, err := t.store.Update(ctx, id, func(tok Token) (Token, error) {
		tok.Revoked = true
		return tok, nil
	})
	if err != nil {
		return fmt.Errorf("revoke join token %s: %w", id, err)
	}
	return nil
}

// Get returns the stored token with ID id (ErrTokenNotFound when there is
// none, for example after Prune removed it).
func (t *Tokens) Get(ctx context.Context, id string) (Token, error) {
	tok, err := t.store.Get(ctx, id)
	if err != nil {
		return Token{}, fmt.Errorf("get join token %s: %w", id, err)
	}
	return tok, nil
}

// List returns every stored token, oldest first.
func (t *Tokens) List(ctx context.Context) ([]Token, error) {
	toks, err := t.store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list join tokens: %w", err)
	}
	slices.SortFunc(toks, func(a, b Token) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	return toks, nil
}

// Prune deletes tokens that can never be redeemed again (expired, or with no
// uses left) and returns how many it deleted.
func (t *Tokens) Prune(ctx context.Context) (int, error) {
	toks, err := t.store.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("prune join tokens: %w", err)
	}
	now := t.now()
	n := 0
	for _, tok := range toks {
		if now.Before(tok.ExpiresAt) && (tok.Uses == 0 || tok.Used < tok.Uses) {
			continue
		}
		if err := t.store.Delete(ctx, tok.ID); err != nil && !errors.Is(err, ErrTokenNotFound) {
			return n, fmt.Errorf("prune join token %s: %w", tok.ID, err)
		}
		n++
	}
	return n, nil
}

// MemTokenStore is an in-memory TokenStore, for tests and single-process use
// where tokens need not survive a restart.
type MemTokenStore struct {
	mu   sync.Mutex
	toks map[string]Token
}

// NewMemTokenStore returns an empty store.
func NewMemTokenStore() *MemTokenStore {
	return &MemTokenStore{toks: make(map[string]Token)}
}

// Create implements TokenStore.
func (s *MemTokenStore) Create(_ context.Context, tok Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.toks[tok.ID]; ok {
		return ErrTokenExists
	}
	s.toks[tok.ID] = tok
	return nil
}

// Update implements TokenStore; fn runs under the store's lock.
func (s *MemTokenStore) Update(_ context.Context, id string, fn func(Token) (Token, error)) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok, ok := s.toks[id]
	if !ok {
		return Token{}, ErrTokenNotFound
	}
	tok, err := fn(tok)
	if err != nil {
		return Token{}, err
	}
	tok.ID = id
	s.toks[id] = tok
	return tok, nil
}

// Get implements TokenStore.
func (s *MemTokenStore) Get(_ context.Context, id string) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok, ok := s.toks[id]
	if !ok {
		return Token{}, ErrTokenNotFound
	}
	return tok, nil
}

// List implements TokenStore.
func (s *MemTokenStore) List(context.Context) ([]Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Token, 0, len(s.toks))
	for _, t := range s.toks {
		out = append(out, t)
	}
	return out, nil
}

// Delete implements TokenStore.
func (s *MemTokenStore) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.toks[id]; !ok {
		return ErrTokenNotFound
	}
	delete(s.toks, id)
	return nil
}
