package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/apimachinery/pkg/util/duration"

	"verge.dev/verge/internal/apiclient"
	"verge.dev/verge/internal/atomicfile"
	"verge.dev/verge/internal/identity"
)

func newCertCommand(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Obtain, list and revoke X.509 SVIDs (the mesh's certificates)",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newCertRequestCommand(e), newCertListCommand(e), newCertRevokeCommand(e))
	return cmd
}

func newCertRequestCommand(e *env) *cobra.Command {
	var joinToken, joinTokenFile, out string
	cmd := &cobra.Command{
		Use:   "request --token-file FILE|--token TOKEN --out PREFIX",
		Short: "Make a key and obtain a certificate for it with a join token; writes PREFIX.crt, PREFIX.key and PREFIX-bundle.pem",
		Long: "Generate an ECDSA P-256 key here, send a CSR for it with a join token to\n" +
			"the control plane, and write the certificate chain to PREFIX.crt, the\n" +
			"key to PREFIX.key (PKCS#8, mode 0600) and the trust bundle to\n" +
			"PREFIX-bundle.pem. The identity is the one the token grants; the key\n" +
			"never leaves this machine.\n\n" +
			"Here --token and --token-file are the join token (what `verge token\n" +
			"create` printed), not the admin token.",
		Example: `  verge token create --service-account admin -n verge-system > admin.token
  verge cert request --token-file admin.token --out admin
  verge --server https://cp:7700 --ca-file admin-bundle.pem --cert admin.crt --key admin.key get services`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := readJoinToken(joinToken, joinTokenFile)
			if err != nil {
				return err
			}
			if out == "" {
				return usageError("--out is required: the path prefix of the files to write")
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return fmt.Errorf("generate key: %w", err)
			}
			// The CSR names no identity: the control plane signs the one the
			// token grants, so the CLI need not know the trust domain.
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				return fmt.Errorf("create csr: %w", err)
			}
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var resp identity.CertificateResponse
			if err := e.callAs(ctx, tok, http.MethodPost, identity.CertificatesPath, identity.CertificateRequest{CSR: csr}, &resp); err != nil {
				if apiclient.IsUnauthorized(err) {
					// Not wrapped: the generic 401 advice is about the
					// admin token, and the identity API's 401 says no more
					// on purpose.
					return fmt.Errorf("the control plane refused the join token (unknown, expired, revoked or used up; its log says which): %v", err)
				}
				return err
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return fmt.Errorf("encode key: %w", err)
			}
			keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
			chainPEM := []byte(strings.Join(resp.CertificateChain, ""))
			bundlePEM := []byte(strings.Join(resp.TrustBundle, ""))
			// Check the answer the way --cert/--key will read it, so a
			// wrong answer never leaves files that fail later.
			svid, err := x509svid.Parse(chainPEM, keyPEM)
			if err != nil {
				return fmt.Errorf("POST %s: certificate in the answer: %w", identity.CertificatesPath, err)
			}
			if len(bundlePEM) == 0 {
				return fmt.Errorf("POST %s: the answer has no trust bundle", identity.CertificatesPath)
			}
			files := certFiles(out)
			// The bundle and the chain are public, the key is not. Each file
			// is replaced whole, one after the other; a failure between two
			// leaves a key and chain that --cert/--key refuse as not
			// matching, never a pair that silently fails later.
			for _, f := range []struct {
				path string
				data []byte
				mode os.FileMode
			}{
				{files.bundle, bundlePEM, 0o644},
				{files.key, keyPEM, 0o600},
				{files.chain, chainPEM, 0o644},
			} {
				if err := atomicfile.Write(f.path, f.data, f.mode, 0o755); err != nil {
					return err
				}
			}
			leaf := svid.Certificates[0]
			fmt.Fprintf(e.out, "Certificate for %s, serial %s, expires %s (in %s).\n",
				svid.ID, leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339),
				duration.HumanDuration(leaf.NotAfter.Sub(e.now())))
			fmt.Fprintf(e.out, "Wrote %s (chain), %s (private key) and %s (trust bundle).\n", files.chain, files.key, files.bundle)
			fmt.Fprintf(e.errOut, "Use it with: --cert %s --key %s --ca-file %s (or VERGE_CERT_FILE, VERGE_KEY_FILE, VERGE_CA_FILE).\n",
				files.chain, files.key, files.bundle)
			return nil
		},
	}
	f := cmd.Flags()
	// These shadow the root's --token and --token-file on purpose: here
	// the bearer is a join token, and VERGE_TOKEN (the admin token) must
	// not stand in for it, so they have no environment default.
	f.StringVar(&joinToken, "token", "", "join token secret (vt1.…)")
	f.StringVar(&joinTokenFile, "token-file", "", "file holding the join token secret")
	f.StringVar(&out, "out", "", "path prefix of the files to write: PREFIX.crt, PREFIX.key, PREFIX-bundle.pem (required)")
	return cmd
}

// certPaths are the files `verge cert request --out PREFIX` writes.
type certPaths struct{ chain, key, bundle string }

func certFiles(prefix string) certPaths {
	return certPaths{chain: prefix + ".crt", key: prefix + ".key", bundle: prefix + "-bundle.pem"}
}

func readJoinToken(token, file string) (string, error) {
	switch {
	case token != "" && file != "":
		return "", usageError("--token and --token-file both given: pass one join token")
	case token != "":
		return token, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", usageError("--token-file: %v", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", usageError("--token-file %q: file is empty", file)
		}
		return tok, nil
	}
	return "", usageError("a join token is required: pass --token or --token-file (verge token create prints one)")
}

func newCertListCommand(e *env) *cobra.Command {
	var spiffeID, tokenID, output string
	cmd := &cobra.Command{
		Use:   "list [--spiffe-id ID] [--token-id ID] [-o table|json|yaml]",
		Short: "List the certificates the control plane issued that have not expired",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "table", "yaml", "json":
			default:
				return usageError("unknown output format %q: want table, yaml or json", output)
			}
			q := url.Values{}
			if spiffeID != "" {
				q.Set("spiffeID", spiffeID)
			}
			if tokenID != "" {
				q.Set("tokenID", tokenID)
			}
			p := identity.CertificatesPath
			if len(q) > 0 {
				p += "?" + q.Encode()
			}
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var list identity.CertificateList
			if err := e.call(ctx, http.MethodGet, p, nil, &list); err != nil {
				return err
			}
			if output != "table" {
				if list.Items == nil {
					list.Items = []identity.CertificateInfo{}
				}
				return printObject(e.out, output, list)
			}
			if len(list.Items) == 0 {
				fmt.Fprintln(e.errOut, "No certificates.")
				return nil
			}
			return printCertTable(e, list.Items)
		},
	}
	f := cmd.Flags()
	f.StringVar(&spiffeID, "spiffe-id", "", "only certificates of this SPIFFE ID (spiffe://TD/ns/NS/sa/SA)")
	f.StringVar(&tokenID, "token-id", "", "only certificates descending from this join token")
	f.StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
}

func printCertTable(e *env, certs []identity.CertificateInfo) error {
	now := e.now()
	tw := tabwriter.NewWriter(e.out, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tSPIFFE ID\tTOKEN\tISSUED\tEXPIRES\tREVOKED")
	for _, c := range certs {
		token := c.TokenID
		if token == "" {
			token = "-"
		}
		revoked := "-"
		if c.RevokedAt != nil {
			revoked = ago(now, *c.RevokedAt)
			if c.Reason != "" {
				revoked += ": " + c.Reason
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Serial, c.SPIFFEID, token, ago(now, c.IssuedAt), until(now, c.ExpiresAt), revoked)
	}
	return tw.Flush()
}

// ago and until say when t is relative to now, as the token list does.
func ago(now, t time.Time) string {
	if t.After(now) {
		return "in " + duration.HumanDuration(t.Sub(now))
	}
	return duration.HumanDuration(now.Sub(t)) + " ago"
}

func until(now, t time.Time) string {
	if !now.Before(t) {
		return "expired " + duration.HumanDuration(now.Sub(t)) + " ago"
	}
	return "in " + duration.HumanDuration(t.Sub(now))
}

func newCertRevokeCommand(e *env) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke SERIAL [--reason TEXT]",
		Short: "Revoke a certificate: the control plane refuses it from then on",
		Long: "Revoke a certificate by serial number, as `verge cert list` shows it\n" +
			"(hexadecimal; the colon-separated form openssl prints works too).\n" +
			"Revoking a revoked certificate again is not an error.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			serial, err := normalizeSerial(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var info identity.CertificateInfo
			p := identity.CertificatesPath + "/" + serial + "/revoke"
			if err := e.call(ctx, http.MethodPost, p, identity.RevokeRequest{Reason: reason}, &info); err != nil {
				return err
			}
			if info.Serial == "" {
				info.Serial = serial
			}
			who := ""
			if info.SPIFFEID != "" {
				who = " of " + info.SPIFFEID
			}
			fmt.Fprintf(e.out, "certificate %s%s revoked\n", info.Serial, who)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, kept with the revocation and shown by cert list (at most 256 bytes)")
	return cmd
}

// normalizeSerial turns a serial as a user may paste it ("0A:1B:…",
// "0x0a1b", upper case, leading zeros) into the API's form: lower-case hex
// without leading zeros.
func normalizeSerial(s string) (string, error) {
	h := strings.ReplaceAll(strings.TrimSpace(s), ":", "")
	h = strings.TrimPrefix(strings.TrimPrefix(h, "0x"), "0X")
	n, ok := new(big.Int).SetString(h, 16)
	if h == "" || !ok || n.Sign() <= 0 {
		return "", usageError("SERIAL %q: not a positive hexadecimal serial number (as verge cert list shows it)", s)
	}
	return n.Text(16), nil
}
