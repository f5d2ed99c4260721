package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store"
)

// TokenPrefix is the store prefix of join tokens: one key per token,
// TokenPrefix + id, holding the ca.Token as JSON.
const TokenPrefix = "/verge.dev/tokens/"

// maxUpdateAttempts bounds the read-modify-write loop of Update. Conflicts
// only come from concurrent redemptions or revocations of the same token,
// so a handful of attempts is plenty; past it the caller sees ErrConflict.
const maxUpdateAttempts = 16

// StoreTokens is a ca.TokenStore over the control plane's store, so tokens
// survive restarts and are shared by replicas on etcd. Safe for concurrent
// use.
type StoreTokens struct {
	st store.Store
}

var _ ca.TokenStore = (*StoreTokens)(nil)

// NewStoreTokens returns a TokenStore keeping tokens in st under TokenPrefix.
func NewStoreTokens(st store.Store) *StoreTokens { return &StoreTokens{st: st} }

// tokenKey returns the key of id, or false for an id that cannot be a token
// ID (ca makes hex IDs): a slash would reach outside the token's own key.
func tokenKey(id string) (string, bool) {
	if id == "" || strings.ContainsAny(id, "/") {
		return "", false
	}
	return TokenPrefix + id, true
}

// Create implements ca.TokenStore.
func (s *StoreTokens) Create(ctx context.Context, tok ca.Token) error {
	key, ok := tokenKey(tok.ID)
	if !ok {
		return fmt.Errorf("store join token %q: invalid id", tok.ID)
	}
	b, err := json.Marshal(tok)
	if err != nil {
		return fmt.Errorf("store join token %s: %w", tok.ID, err)
	}
	if _, err := s.st.Create(ctx, key, b); err != nil {
		if errors.Is(err, store.ErrExists) {
			return ca.ErrTokenExists
		}
		return fmt.Errorf("store join token %s: %w", tok.ID, err)
	}
	return nil
}

// Update implements ca.TokenStore: read, apply fn, write if the token was
// not changed meanwhile, else retry (at most maxUpdateAttempts times).
func (s *StoreTokens) Update(ctx context.Context, id string, fn func(ca.Token) (ca.Token, error)) (ca.Token, error) {
	key, ok := tokenKey(id)
	if !ok {
		return ca.Token{}, ca.ErrTokenNotFound
	}
	for range maxUpdateAttempts {
		kv, err := s.st.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return ca.Token{}, ca.ErrTokenNotFound
		}
		if err != nil {
			return ca.Token{}, fmt.Errorf("read join token %s: %w", id, err)
		}
		var tok ca.Token
		if err := json.Unmarshal(kv.Value, &tok); err != nil {
			return ca.Token{}, fmt.Errorf("decode join token %s: %w", id, err)
		}
		next, err := fn(tok)
		if err != nil {
			return ca.Token{}, err
		}
		next.ID = id
		b, err := json.Marshal(next)
		if err != nil {
			return ca.Token{}, fmt.Errorf("encode join token %s: %w", id, err)
		}
		_, err = s.st.Update(ctx, key, b, kv.ModRevision)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return ca.Token{}, fmt.Errorf("write join token %s: %w", id, err)
		}
		return next, nil
	}
	return ca.Token{}, fmt.Errorf("update join token %s: %w after %d attempts", id, store.ErrConflict, maxUpdateAttempts)
}

// Get implements ca.TokenStore.
func (s *StoreTokens) Get(ctx context.Context, id string) (ca.Token, error) {
	key, ok := tokenKey(id)
	if !ok {
		return ca.Token{}, ca.ErrTokenNotFound
	}
	kv, err := s.st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return ca.Token{}, ca.ErrTokenNotFound
	}
	if err != nil {
		return ca.Token{}, fmt.Errorf("read join token %s: %w", id, err)
	}
	var tok ca.Token
	if err := json.Unmarshal(kv.Value, &tok); err != nil {
		return ca.Token{}, fmt.Errorf("decode join token %s: %w", id, err)
	}
	return tok, nil
}

// List implements ca.TokenStore.
func (s *StoreTokens) List(ctx context.Context) ([]ca.Token, error) {
	kvs, _, err := s.st.List(ctx, TokenPrefix)
	if err != nil {
		return nil, fmt.Errorf("list join tokens: %w", err)
	}
	out := make([]ca.Token, 0, len(kvs))
	for _, kv := range kvs {
		var tok ca.Token
		if err := json.Unmarshal(kv.Value, &tok); err != nil {
			return nil, fmt.Errorf("decode join token %q: %w", kv.Key, err)
		}
		out = append(out, tok)
	}
	return out, nil
}

// Delete implements ca.TokenStore.
func (s *StoreTokens) Delete(ctx context.Context, id string) error {
	key, ok := tokenKey(id)
	if !ok {
		return ca.ErrTokenNotFound
	}
	if _, err := s.st.Delete(ctx, key, 0); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return ca.ErrTokenNotFound
		}
		return fmt.Errorf("delete join token %s: %w", id, err)
	}
	return nil
}
