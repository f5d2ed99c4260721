package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	"verge.dev/verge/internal/apiclient"
	"verge.dev/verge/internal/identity"
)

func newTokenCommand(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke the join tokens proxies use to obtain their identity",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newTokenCreateCommand(e), newTokenListCommand(e), newTokenRevokeCommand(e))
	return cmd
}

func newTokenCreateCommand(e *env) *cobra.Command {
	var (
		req identity.TokenRequest
		ttl time.Duration
		use int
	)
	cmd := &cobra.Command{
		Use:   "create --service-account SA [-n NAMESPACE] [--ttl 1h] [--uses 1]",
		Short: "Create a join token for one service account; prints the secret, shown only this once",
		Long: "Create a join token that lets a proxy obtain a certificate for\n" +
			"spiffe://<trust-domain>/ns/NAMESPACE/sa/SA. The secret goes to stdout\n" +
			"alone (TOKEN=$(verge token create ...)); the details go to stderr.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.ServiceAccount == "" {
				return usageError("--service-account is required")
			}
			req.TTL, req.Uses = ttl.String(), &use
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var tc identity.TokenCreated
			if err := e.call(ctx, http.MethodPost, identity.TokensPath, req, &tc); err != nil {
				return err
			}
			fmt.Fprintln(e.out, tc.Token)
			fmt.Fprintf(e.errOut, "Join token %s for %s/%s, expires %s (in %s), %s.\n",
				tc.ID, tc.Namespace, tc.ServiceAccount, tc.ExpiresAt.UTC().Format(time.RFC3339),
				duration.HumanDuration(tc.ExpiresAt.Sub(e.now())), usesText(tc.Uses))
			fmt.Fprintln(e.errOut, "A proxy presents it as \"Authorization: Bearer <token>\" with its CSR to POST "+
				identity.CertificatesPath+"; it is not shown again.")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.ServiceAccount, "service-account", "", "service account the token grants (required; alias --service)")
	f.StringVarP(&req.Namespace, "namespace", "n", identity.DefaultNS, "namespace of the service account")
	f.DurationVar(&ttl, "ttl", identity.DefaultTokenTTL, "how long the token can be used (at most 720h)")
	f.IntVar(&use, "uses", identity.DefaultUses, "how many certificates it can obtain; 0 is unlimited")
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "service" {
			name = "service-account"
		}
		return pflag.NormalizedName(name)
	})
	return cmd
}

func usesText(n int) string {
	switch n {
	case 0:
		return "unlimited uses"
	case 1:
		return "single use"
	default:
		return strconv.Itoa(n) + " uses"
	}
}

func newTokenListCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List join tokens (never their secrets)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var list identity.TokenList
			if err := e.call(ctx, http.MethodGet, identity.TokensPath, nil, &list); err != nil {
				return err
			}
			if len(list.Items) == 0 {
				fmt.Fprintln(e.errOut, "No join tokens.")
				return nil
			}
			now := e.now()
			tw := tabwriter.NewWriter(e.out, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAMESPACE\tSERVICEACCOUNT\tUSES\tEXPIRES")
			for _, t := range list.Items {
				limit := "unlimited"
				if t.Uses > 0 {
					limit = strconv.Itoa(t.Uses)
				}
				expires := "in " + duration.HumanDuration(t.ExpiresAt.Sub(now))
				if !now.Before(t.ExpiresAt) {
					expires = "expired " + duration.HumanDuration(now.Sub(t.ExpiresAt)) + " ago"
				}
				if t.Revoked {
					expires = "revoked"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%s\t%s\n", t.ID, t.Namespace, t.ServiceAccount, t.Used, limit, expires)
			}
			return tw.Flush()
		},
	}
}

func newTokenRevokeCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token: it obtains no more certificates, and those it obtained are revoked",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			// A control plane with the certificate inventory answers 200
			// with a TokenRevoked; an older one 204 without a body, and
			// tr stays zero.
			var tr identity.TokenRevoked
			if err := e.call(ctx, http.MethodDelete, identity.TokensPath+"/"+url.PathEscape(args[0]), nil, &tr); err != nil {
				return err
			}
			if tr.ID == "" {
				fmt.Fprintf(e.out, "join token %q revoked\n", args[0])
				return nil
			}
			fmt.Fprintf(e.out, "join token %q revoked, and %s issued with it\n", tr.ID, certificatesText(tr.RevokedCertificates))
			return nil
		},
	}
}

func certificatesText(n int) string {
	if n == 1 {
		return "1 certificate"
	}
	return strconv.Itoa(n) + " certificates"
}

func newCACommand(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Show the trust bundle or rotate the mesh's root certificate",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var overlap time.Duration
	rotate := &cobra.Command{
		Use:   "rotate [--overlap 48h]",
		Short: "Replace the root; the old one stays trusted for --overlap (make it at least the certificate lifetime)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var resp identity.RotateResponse
			if err := e.call(ctx, http.MethodPost, identity.RotatePath, identity.RotateRequest{Overlap: overlap.String()}, &resp); err != nil {
				return err
			}
			fmt.Fprintf(e.out, "ca rotated: %d roots trusted; the previous root until %s\n",
				len(resp.TrustBundle), e.now().Add(overlap).UTC().Format(time.RFC3339))
			return nil
		},
	}
	rotate.Flags().DurationVar(&overlap, "overlap", identity.DefaultOverlap, "how long the previous root stays trusted (at least 1m)")
	bundle := &cobra.Command{
		Use:   "bundle",
		Short: "Print the trust bundle: the PEM of every root proxies trust",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			var pem bytes.Buffer
			if err := e.call(ctx, http.MethodGet, identity.BundlePath, nil, &pem); err != nil {
				return err
			}
			_, err := e.out.Write(pem.Bytes())
			return err
		},
	}
	cmd.AddCommand(rotate, bundle)
	return cmd
}

// call sends in (JSON, when not nil) to the identity API and decodes a 2xx
// answer into out: JSON, or the raw body when out is a *bytes.Buffer; an
// empty body (204) leaves out untouched. Any other answer becomes an
// *apiclient.StatusError, as apiclient's calls give, so errors render the
// same (apiclient has no calls for these endpoints).
func (e *env) call(ctx context.Context, method, path string, in, out any) error {
	return e.callAs(ctx, e.bearer, method, path, in, out)
}

// callAs is call with bearer sent instead of the admin token: a join token,
// for `verge cert request`.
func (e *env) callAs(ctx context.Context, bearer, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(e.server, "/")+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := e.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return statusError(resp.StatusCode, b)
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *bytes.Buffer:
		o.Write(b)
		return nil
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// statusError turns a refused request's body, a Status when the control
// plane wrote it, into the error apiclient would give.
func statusError(code int, body []byte) *apiclient.StatusError {
	var st metav1.Status
	if err := json.Unmarshal(body, &st); err != nil || st.Kind != "Status" {
		msg := strings.TrimSpace(string(body))
		if msg == "" {
			msg = http.StatusText(code)
		}
		return &apiclient.StatusError{Code: code, Message: fmt.Sprintf("server answered %d: %.512s", code, msg)}
	}
	se := &apiclient.StatusError{Code: code, Reason: string(st.Reason), Message: st.Message}
	if st.Details != nil {
		for _, c := range st.Details.Causes {
			se.Causes = append(se.Causes, apiclient.Cause{Field: c.Field, Reason: string(c.Type), Message: c.Message})
		}
	}
	return se
}
