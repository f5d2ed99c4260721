package ca

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func newTestTokens(clk *fakeClock) *Tokens {
	return NewTokens(testTD, NewMemTokenStore(), clk.Now)
}

var webSpec = TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: time.Hour, Uses: 1}

func TestCreate(t *testing.T) {
	clk := newFakeClock()
	toks := newTestTokens(clk)
	secret, tok, err := toks.Create(t.Context(), TokenSpec{Namespace: "shop", ServiceAccount: "cart", TTL: time.Hour, Uses: 3})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := Token{
		TrustDomain:    "mesh.test",
		Namespace:      "shop",
		ServiceAccount: "cart",
		CreatedAt:      t0,
		ExpiresAt:      t0.Add(time.Hour),
		Uses:           3,
	}
	if diff := cmp.Diff(want, tok, cmpopts.IgnoreFields(Token{}, "ID", "SecretSHA256")); diff != "" {
		t.Errorf("token (-want +got):\n%s", diff)
	}
	s := string(secret)
	rest, ok := strings.CutPrefix(s, "vt1."+tok.ID+".")
	if !ok {
		t.Fatalf("secret %q does not start with vt1.<id>.", s)
	}
	if b, err := base64.RawURLEncoding.DecodeString(rest); err != nil || len(b) != 32 {
		t.Errorf("secret random part: %d bytes, err %v; want 32 bytes base64url", len(b), err)
	}
	sum := sha256.Sum256([]byte(s))
	if tok.SecretSHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("SecretSHA256 = %s, want the secret's sha256", tok.SecretSHA256)
	}
	list, err := toks.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Token{tok}, list); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if strings.Contains(fmt.Sprint(list), rest) {
		t.Error("stored token holds the secret")
	}
}

func TestCreateRefused(t *testing.T) {
	tests := []struct {
		name string
		spec TokenSpec
	}{
		{name: "empty namespace", spec: TokenSpec{ServiceAccount: "web", TTL: time.Hour}},
		{name: "empty service account", spec: TokenSpec{Namespace: "default", TTL: time.Hour}},
		{name: "namespace with slash", spec: TokenSpec{Namespace: "a/b", ServiceAccount: "web", TTL: time.Hour}},
		{name: "upper-case service account", spec: TokenSpec{Namespace: "default", ServiceAccount: "Web", TTL: time.Hour}},
		{name: "zero ttl", spec: TokenSpec{Namespace: "default", ServiceAccount: "web"}},
		{name: "negative uses", spec: TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: time.Hour, Uses: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := newTestTokens(newFakeClock()).Create(t.Context(), tt.spec)
			if !errors.Is(err, ErrBadTokenSpec) {
				t.Fatalf("Create error = %v, want ErrBadTokenSpec", err)
			}
		})
	}
}

func TestRedeem(t *testing.T) {
	type step struct {
		advance time.Duration
		revoke  bool
		secret  func(s Secret) string // nil: the token's own secret
		want    error
	}
	tamper := func(s Secret) string {
		str := string(s)
		last := str[len(str)-1]
		if last == 'A' {
			return str[:len(str)-1] + "B"
		}
		return str[:len(str)-1] + "A"
	}
	tests := []struct {
		name  string
		uses  int
		steps []step
	}{
		{name: "single use", uses: 1, steps: []step{{}, {want: ErrTokenUsedUp}}},
		{name: "three uses", uses: 3, steps: []step{{}, {}, {}, {want: ErrTokenUsedUp}}},
		{name: "unlimited", uses: 0, steps: []step{{}, {}, {}, {}, {}, {}}},
		{name: "expired", uses: 0, steps: []step{{}, {advance: time.Hour, want: ErrTokenExpired}}},
		{name: "just before expiry", uses: 0, steps: []step{{advance: time.Hour - time.Nanosecond}}},
		{name: "revoked", uses: 0, steps: []step{{}, {revoke: true, want: ErrTokenRevoked}}},
		{name: "wrong secret for the id", uses: 1, steps: []step{{secret: tamper, want: ErrTokenInvalid}, {}}},
		{name: "unknown id", uses: 1, steps: []step{{secret: func(Secret) string {
			return "vt1.0000000000000000." + base64.RawURLEncoding.EncodeToString(make([]byte, 32))
		}, want: ErrTokenInvalid}}},
		{name: "malformed", uses: 1, steps: []step{
			{secret: func(Secret) string { return "" }, want: ErrTokenInvalid},
			{secret: func(Secret) string { return "vt2.abc.def" }, want: ErrTokenInvalid},
			{secret: func(s Secret) string { return string(s) + "AA" }, want: ErrTokenInvalid},
			{secret: func(s Secret) string { id, _, _ := splitSecret(string(s)); return "vt1." + id + "." }, want: ErrTokenInvalid},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			toks := newTestTokens(clk)
			secret, created, err := toks.Create(t.Context(), TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: time.Hour, Uses: tt.uses})
			if err != nil {
				t.Fatal(err)
			}
			used := 0
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				if s.revoke {
					if err := toks.Revoke(t.Context(), created.ID); err != nil {
						t.Fatalf("step %d: Revoke: %v", i, err)
					}
				}
				in := string(secret)
				if s.secret != nil {
					in = s.secret(secret)
				}
				got, err := toks.Redeem(t.Context(), in)
				if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
					t.Fatalf("step %d: Redeem error = %v, want %v", i, err, s.want)
				}
				if err != nil {
					continue
				}
				used++
				if got.ID != created.ID || got.Used != used {
					t.Errorf("step %d: Redeem = id %s used %d, want id %s used %d", i, got.ID, got.Used, created.ID, used)
				}
			}
		})
	}
}

func TestRedeemSingleUseConcurrently(t *testing.T) {
	toks := newTestTokens(newFakeClock())
	const tokens, racers = 20, 8
	for range tokens {
		secret, _, err := toks.Create(t.Context(), webSpec)
		if err != nil {
			t.Fatal(err)
		}
		var wins, usedUp atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range racers {
			wg.Go(func() {
				<-start
				_, err := toks.Redeem(t.Context(), string(secret))
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, ErrTokenUsedUp):
					usedUp.Add(1)
				default:
					t.Errorf("Redeem: unexpected error %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || usedUp.Load() != racers-1 {
			t.Fatalf("%d successes and %d used-up refusals, want 1 and %d", wins.Load(), usedUp.Load(), racers-1)
		}
	}
}

func TestRevokeAndPrune(t *testing.T) {
	clk := newFakeClock()
	toks := newTestTokens(clk)
	if err := toks.Revoke(t.Context(), "nope"); !errors.Is(err, ErrTokenNotFound) {
		t.Errorf("Revoke unknown: error = %v, want ErrTokenNotFound", err)
	}
	usedSecret, _, err := toks.Create(t.Context(), webSpec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := toks.Redeem(t.Context(), string(usedSecret)); err != nil {
		t.Fatal(err)
	}
	_, revoked, err := toks.Create(t.Context(), TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := toks.Revoke(t.Context(), revoked.ID); err != nil {
		t.Fatal(err)
	}
	_, live, err := toks.Create(t.Context(), TokenSpec{Namespace: "default", ServiceAccount: "web", TTL: 3 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	ids := func() []string {
		list, err := toks.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, tk := range list {
			out = append(out, tk.ID)
		}
		return out
	}
	// The used-up token goes at once; the revoked one stays visible until
	// it expires.
	n, err := toks.Prune(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1, nil", n, err)
	}
	if diff := cmp.Diff([]string{revoked.ID, live.ID}, ids(), cmpopts.SortSlices(strings.Compare)); diff != "" {
		t.Errorf("after first Prune (-want +got):\n%s", diff)
	}
	clk.Advance(2 * time.Hour)
	if n, err := toks.Prune(t.Context()); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1, nil", n, err)
	}
	if diff := cmp.Diff([]string{live.ID}, ids()); diff != "" {
		t.Errorf("after second Prune (-want +got):\n%s", diff)
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	toks := newTestTokens(newFakeClock())
	secret, tok, err := toks.Create(t.Context(), webSpec)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	log.Info("token created", "token", tok, "secret", secret)
	log.Info("token created", slog.Any("token", &tok), slog.Any("secret", secret))
	log.With("secret", secret).Debug("redeem")
	log.Info("text", "msg", fmt.Sprintf("%v %s %+v %#v", secret, secret, secret, secret))

	_, random, _ := splitSecret(string(secret))
	out := buf.String()
	for _, leaked := range []string{random, tok.SecretSHA256} {
		if strings.Contains(out, leaked) {
			t.Errorf("log output contains a secret (%q):\n%s", leaked, out)
		}
	}
	if !strings.Contains(out, tok.ID) {
		t.Errorf("log output lacks the token id %s, which is not secret:\n%s", tok.ID, out)
	}
}
