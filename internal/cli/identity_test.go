package cli

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/store/bolt"
)

// identityServer serves the real identity API over a bolt store, with the
// tokens' clock at created (the CLI's clock is 5 minutes later).
func identityServer(t *testing.T) string {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	st, err := bolt.Open(filepath.Join(t.TempDir(), "verge.db"), logger)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("verge.local")
	authority, err := ca.New(ca.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := identity.New(identity.Config{
		CA:      authority,
		Tokens:  ca.NewTokens(td, identity.NewStoreTokens(st), func() time.Time { return created }),
		Persist: func(*ca.Material) error { return nil },
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, p := range []string{identity.TokensPath, identity.TokensPath + "/", identity.CertificatesPath, identity.CertificatesPath + "/", identity.BundlePath, identity.RotatePath} {
		mux.Handle(p, srv.Handler())
	}
	hs := httptest.NewServer(mux)
	t.Cleanup(func() {
		hs.Close()
		st.Close()
	})
	return hs.URL
}

var secretRE = regexp.MustCompile(`^vt1\.([0-9a-f]{16})\.[A-Za-z0-9_-]{43}\n$`)

// createToken runs `verge token create` and returns the token's ID.
func createToken(t *testing.T, url string, args ...string) (id, stderr string) {
	t.Helper()
	out, errOut, err := run(t, url, "", append([]string{"token", "create"}, args...)...)
	if err != nil {
		t.Fatalf("token create: %s", FormatError(err))
	}
	m := secretRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("token create printed %q, want only the secret", out)
	}
	return m[1], errOut
}

func TestTokenCommands(t *testing.T) {
	url := identityServer(t)
	web, errOut := createToken(t, url, "--service-account", "web")
	want := "Join token " + web + " for default/web, expires 2026-05-01T13:00:00Z (in 55m), single use.\n" +
		"A proxy presents it as \"Authorization: Bearer <token>\" with its CSR to POST /api/v1/certificates; it is not shown again.\n"
	if diff := cmp.Diff(want, errOut); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
	cart, errOut := createToken(t, url, "--service", "cart", "-n", "shop", "--ttl", "2h", "--uses", "0")
	if !strings.Contains(errOut, "for shop/cart, expires 2026-05-01T14:00:00Z (in 115m), unlimited uses.") {
		t.Errorf("stderr: %q", errOut)
	}
	db, _ := createToken(t, url, "--service-account", "db", "--uses", "3")

	if out := mustRun(t, url, "", "token", "revoke", db); out != "join token \""+db+"\" revoked, and 0 certificates issued with it\n" {
		t.Errorf("revoke: %q", out)
	}
	got := mustRun(t, url, "", "token", "list")
	got = strings.NewReplacer(web, "WEB-ID__________", cart, "CART-ID_________", db, "DB-ID___________").Replace(got)
	// Oldest first; these were all created at the same instant, so sort.
	lines := strings.SplitAfter(got, "\n")
	slices.Sort(lines[1:])
	got = strings.Join(lines, "")
	wantList := "" +
		"ID                 NAMESPACE   SERVICEACCOUNT   USES          EXPIRES\n" +
		"CART-ID_________   shop        cart             0/unlimited   in 115m\n" +
		"DB-ID___________   default     db               0/3           revoked\n" +
		"WEB-ID__________   default     web              0/1           in 55m\n"
	if diff := cmp.Diff(wantList, got); diff != "" {
		t.Errorf("token list (-want +got):\n%s", diff)
	}

	_, _, err := run(t, url, "", "token", "revoke", "0000000000000000")
	if ExitCode(err) != 1 || !strings.Contains(FormatError(err), "not found") {
		t.Errorf("revoke unknown: exit %d %q", ExitCode(err), FormatError(err))
	}
	_, _, err = run(t, url, "", "token", "create", "--service-account", "Web!", "--ttl", "800h")
	wantErr := "error: join token is invalid:\n" +
		"  serviceAccount: Invalid value: \"Web!\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')\n" +
		"  ttl: Invalid value: \"800h0m0s\": must be at most 720h0m0s (30 days)\n"
	if diff := cmp.Diff(wantErr, FormatError(err)); diff != "" || ExitCode(err) != 1 {
		t.Errorf("invalid token (exit %d, -want +got):\n%s", ExitCode(err), diff)
	}
	for _, args := range [][]string{
		{"token", "create"},
		{"token", "create", "--service-account", "web", "--ttl", "soon"},
		{"token", "revoke"},
		{"token", "list", "extra"},
		{"ca", "rotate", "--overlap", "tomorrow"},
	} {
		if _, _, err := run(t, url, "", args...); ExitCode(err) != 2 {
			t.Errorf("verge %s: exit %d (%v), want 2", strings.Join(args, " "), ExitCode(err), err)
		}
	}
}

func TestTokenListEmpty(t *testing.T) {
	url := identityServer(t)
	out, errOut, err := run(t, url, "", "token", "list")
	if err != nil || out != "" || errOut != "No join tokens.\n" {
		t.Errorf("token list: %q %q %v", out, errOut, err)
	}
}

func TestCACommands(t *testing.T) {
	url := identityServer(t)
	bundle := mustRun(t, url, "", "ca", "bundle")
	if strings.Count(bundle, "-----BEGIN CERTIFICATE-----") != 1 {
		t.Fatalf("ca bundle:\n%s", bundle)
	}
	if out := mustRun(t, url, "", "ca", "rotate", "--overlap", "1h"); out != "ca rotated: 2 roots trusted; the previous root until 2026-05-01T13:05:00Z\n" {
		t.Errorf("ca rotate: %q", out)
	}
	after := mustRun(t, url, "", "ca", "bundle")
	if strings.Count(after, "-----BEGIN CERTIFICATE-----") != 2 || !strings.HasSuffix(after, bundle) {
		t.Errorf("bundle after rotation does not end with the old root:\n%s", after)
	}
	_, _, err := run(t, url, "", "ca", "rotate", "--overlap", "30s")
	if got := FormatError(err); got != "error: rotation is invalid:\n  overlap: Invalid value: \"30s\": must be at least 1m0s\n" {
		t.Errorf("rotate 30s: %q", got)
	}
}
