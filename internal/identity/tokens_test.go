package identity

import (
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store"
	"verge.dev/verge/internal/store/bolt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var created = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func TestStoreTokens(t *testing.T) {
	ctx := t.Context()
	st := openStore(t)
	s := NewStoreTokens(st)
	tok := ca.Token{ID: "0123456789abcdef", TrustDomain: "verge.local", Namespace: "default", ServiceAccount: "web",
		SecretSHA256: "ab", CreatedAt: created, ExpiresAt: created.Add(time.Hour), Uses: 2}

	if err := s.Create(ctx, tok); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := s.Create(ctx, tok); !errors.Is(err, ca.ErrTokenExists) {
		t.Errorf("Create again = %v, want ErrTokenExists", err)
	}
	if _, err := st.Get(ctx, "/verge.dev/tokens/0123456789abcdef"); err != nil {
		t.Errorf("token not at its key: %v", err)
	}

	got, err := s.Update(ctx, tok.ID, func(t ca.Token) (ca.Token, error) {
		t.Used++
		t.ID = "ignored"
		return t, nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	want := tok
	want.Used = 1
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Update (-want +got):\n%s", diff)
	}
	boom := errors.New("boom")
	if _, err := s.Update(ctx, tok.ID, func(ca.Token) (ca.Token, error) { return ca.Token{}, boom }); !errors.Is(err, boom) {
		t.Errorf("Update with failing fn = %v, want boom", err)
	}
	for _, id := range []string{"nope", "", "../x", "a/b"} {
		if _, err := s.Update(ctx, id, func(t ca.Token) (ca.Token, error) { return t, nil }); !errors.Is(err, ca.ErrTokenNotFound) {
			t.Errorf("Update(%q) = %v, want ErrTokenNotFound", id, err)
		}
		if err := s.Delete(ctx, id); !errors.Is(err, ca.ErrTokenNotFound) {
			t.Errorf("Delete(%q) = %v, want ErrTokenNotFound", id, err)
		}
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]ca.Token{want}, list); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if err := s.Delete(ctx, tok.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if list, err := s.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("List after Delete = %v, %v", list, err)
	}
}

// TestConcurrentRedeem checks that the optimistic retry loop keeps Redeem
// exact: a token with n uses gives exactly n certificates however many
// proxies race for it.
func TestConcurrentRedeem(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	toks := ca.NewTokens(td, NewStoreTokens(openStore(t)), nil)
	secret, _, err := toks.Create(t.Context(), ca.TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: time.Hour, Uses: 3})
	if err != nil {
		t.Fatal(err)
	}
	const racers = 10
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			_, errs[i] = toks.Redeem(t.Context(), string(secret))
		})
	}
	wg.Wait()
	ok, usedUp := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ca.ErrTokenUsedUp):
			usedUp++
		default:
			t.Errorf("Redeem: %v", err)
		}
	}
	if ok != 3 || usedUp != racers-3 {
		t.Errorf("%d redeemed, %d used up; want 3 and %d", ok, usedUp, racers-3)
	}
}
