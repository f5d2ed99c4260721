// Package cli owns the `verge` command line for resources: the root command
// with its --server and credential flags (admin token, client certificate,
// trust bundle), and the apply, get, delete, describe, proxy-status, top,
// tap, profile, token, cert, ca and version subcommands, which talk to the
// control plane through internal/apiclient (token, cert and ca through the
// identity API's types in internal/identity; top, tap and profile through
// the telemetry API's types in internal/telemetry, profile then to the
// proxy's admin listener). `verge cert request` makes a key and obtains an
// SVID for it with a join token, writing the key, chain and bundle files
// the credential flags read. It also owns how errors are shown to a user
// and which exit code they map to.
//
// It does not own the roles that run servers (control-plane, proxy, demo):
// cmd/verge adds those commands to the root this package builds.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiclient"
)

// DefaultServer is the control plane's API address when neither --server nor
// VERGE_SERVER says otherwise.
const DefaultServer = "http://127.0.0.1:7700"

// DefaultTokenFile is where a control plane started with its default data
// dir writes its admin token; the CLI reads it when it talks to
// DefaultServer without --token or --token-file.
const DefaultTokenFile = "./verge-data/admin-token"

// requestTimeout bounds each command's calls to the API.
const requestTimeout = 30 * time.Second

// ExitError carries the exit code a command's failure maps to: 2 for usage
// errors, 1 for everything else.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

func usageError(format string, args ...any) error {
	return &ExitError{Code: 2, Err: fmt.Errorf(format, args...)}
}

// ExitCode is the process exit code for an error returned by Execute.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := errors.AsType[*ExitError](err); ok {
		return ee.Code
	}
	return 1
}

// FormatError renders an error returned by Execute for a user: one
// "error: " line per failure, and an invalid resource's causes each on its
// own indented line.
func FormatError(err error) string {
	var b strings.Builder
	for _, e := range flatten(err) {
		b.WriteString("error: ")
		b.WriteString(render(e))
		b.WriteString("\n")
	}
	return b.String()
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if ee, ok := err.(*ExitError); ok {
		return flatten(ee.Err)
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func render(err error) string {
	msg := err.Error()
	if apiclient.IsUnauthorized(err) {
		return "not authenticated: pass --token or set VERGE_TOKEN (the control plane wrote one to DATA-DIR/admin-token), or an admin certificate with --cert and --key: " + msg
	}
	se, ok := errors.AsType[*apiclient.StatusError](err)
	if !ok || len(se.Causes) == 0 {
		return msg
	}
	head := se.Message
	if i := strings.Index(head, " is invalid: "); i >= 0 {
		head = head[:i+len(" is invalid:")]
	} else {
		head += ":"
	}
	var b strings.Builder
	b.WriteString(head)
	for _, c := range se.Causes {
		b.WriteString("\n  ")
		if c.Field != "" {
			b.WriteString(c.Field + ": ")
		}
		b.WriteString(c.Message)
	}
	return strings.Replace(msg, se.Error(), b.String(), 1)
}

// env is what every subcommand shares: the streams, the clock, the
// --server, --token, --token-file, --ca-file, --cert and --key flags'
// values, and what connect made of them.
type env struct {
	out, errOut io.Writer
	in          io.Reader
	server      string
	now         func() time.Time

	token, tokenFile, caFile string
	certFile, keyFile        string
	// hc is the HTTP client for the server (TLS when it is https);
	// bearer the token sent with every request. Set by connect.
	hc     *http.Client
	bearer string
}

func (e *env) client() *apiclient.Client {
	return apiclient.New(e.server, e.httpClient(), apiclient.WithToken(e.bearer))
}

func (e *env) httpClient() *http.Client {
	if e.hc == nil {
		return &http.Client{Timeout: requestTimeout}
	}
	return e.hc
}

// connect resolves the credentials and transport for the server: the token
// from --token, else --token-file, else (talking to the default local
// control plane) DefaultTokenFile when it exists; for an https server, TLS
// that trusts --ca-file's roots, accepts only the control plane's SVID and
// presents the --cert/--key SVID when given. A token and a certificate may
// both be given: both are sent and the server decides.
func (e *env) connect() error {
	https := strings.HasPrefix(e.server, "https://")
	if e.certFile != "" || e.keyFile != "" {
		switch {
		case e.certFile == "":
			return usageError("--key needs --cert (env VERGE_CERT_FILE): the certificate chain that goes with the key")
		case e.keyFile == "":
			return usageError("--cert needs --key (env VERGE_KEY_FILE): the private key of the certificate")
		case !https:
			// Over plaintext there is no handshake to present a
			// certificate in; sending the request anyway would make it
			// anonymous, which is never what the user meant.
			return usageError("--cert and --key need an https:// --server (a client certificate is presented in the TLS handshake); --server is %s", e.server)
		}
	}
	switch {
	case e.token != "":
		e.bearer = e.token
	case e.tokenFile != "":
		b, err := os.ReadFile(e.tokenFile)
		if err != nil {
			return usageError("--token-file: %v", err)
		}
		if e.bearer = strings.TrimSpace(string(b)); e.bearer == "" {
			return usageError("--token-file %q: file is empty", e.tokenFile)
		}
	case strings.TrimRight(e.server, "/") == DefaultServer:
		// The README's local flow: a control plane started in this
		// directory wrote its token next to its data.
		if b, err := os.ReadFile(DefaultTokenFile); err == nil {
			e.bearer = strings.TrimSpace(string(b))
		}
	}
	if !https {
		return nil
	}
	if e.caFile == "" {
		return usageError("--server %s is https: pass --ca-file with the mesh's trust bundle (verge ca bundle) or set VERGE_CA_FILE", e.server)
	}
	pemBytes, err := os.ReadFile(e.caFile)
	if err != nil {
		return usageError("--ca-file: %v", err)
	}
	var clientSVID x509svid.Source
	if e.certFile != "" {
		svid, err := e.loadSVID()
		if err != nil {
			return err
		}
		clientSVID = svid
	}
	tc, err := apiclient.ServerTLSConfig(pemBytes, clientSVID)
	if err != nil {
		return usageError("--ca-file %q: %v", e.caFile, err)
	}
	e.hc = &http.Client{Timeout: requestTimeout, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}}
	return nil
}

// loadSVID reads --cert and --key and checks with go-spiffe that they are
// one X.509 SVID (a SPIFFE ID in the leaf, the key matching it). It reads
// the files itself rather than through x509svid.Load so that an error names
// the flag whose file is missing. An expired certificate is refused here:
// the server's handshake failure would not say why.
func (e *env) loadSVID() (*x509svid.SVID, error) {
	certPEM, err := os.ReadFile(e.certFile)
	if err != nil {
		return nil, usageError("--cert: %v", err)
	}
	keyPEM, err := os.ReadFile(e.keyFile)
	if err != nil {
		return nil, usageError("--key: %v", err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return nil, usageError("--cert %q and --key %q: %v", e.certFile, e.keyFile, err)
	}
	if leaf := svid.Certificates[0]; !e.now().Before(leaf.NotAfter) {
		return nil, usageError("--cert %q: certificate of %s expired at %s: get a new one with verge cert request",
			e.certFile, svid.ID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return svid, nil
}

// NewRootCommand builds the `verge` command with the resource subcommands.
// version is the client's version. Errors are returned from Execute, not
// printed (SilenceErrors): print them with FormatError and exit with
// ExitCode. VERGE_SERVER, read here, is the --server flag's default.
func NewRootCommand(version string, out, errOut io.Writer, in io.Reader) *cobra.Command {
	return newRootCommand(version, out, errOut, in, time.Now)
}

func newRootCommand(version string, out, errOut io.Writer, in io.Reader, now func() time.Time) *cobra.Command {
	e := &env{out: out, errOut: errOut, in: in, now: now}
	server := os.Getenv("VERGE_SERVER")
	if server == "" {
		server = DefaultServer
	}
	root := &cobra.Command{
		Use:           "verge",
		Short:         "Verge, an edge service mesh",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetIn(in)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &ExitError{Code: 2, Err: err} })
	pf := root.PersistentFlags()
	pf.StringVar(&e.server, "server", server, "control plane API URL (env VERGE_SERVER)")
	pf.StringVar(&e.token, "token", os.Getenv("VERGE_TOKEN"), "admin bearer token (env VERGE_TOKEN)")
	pf.StringVar(&e.tokenFile, "token-file", os.Getenv("VERGE_TOKEN_FILE"), "file holding the admin bearer token (env VERGE_TOKEN_FILE; default "+DefaultTokenFile+" when --server is the default)")
	pf.StringVar(&e.caFile, "ca-file", os.Getenv("VERGE_CA_FILE"), "PEM trust bundle to verify an https control plane with (env VERGE_CA_FILE)")
	pf.StringVar(&e.certFile, "cert", os.Getenv("VERGE_CERT_FILE"), "PEM certificate chain (an SVID, leaf first) to present as client certificate to an https control plane; needs --key (env VERGE_CERT_FILE)")
	pf.StringVar(&e.keyFile, "key", os.Getenv("VERGE_KEY_FILE"), "PEM private key of --cert (env VERGE_KEY_FILE)")
	root.PersistentPreRunE = func(*cobra.Command, []string) error { return e.connect() }
	root.AddCommand(
		newApplyCommand(e),
		newGetCommand(e),
		newDeleteCommand(e),
		newDescribeCommand(e),
		newProxyStatusCommand(e),
		newTopCommand(e),
		newTapCommand(e),
		newProfileCommand(e),
		newTokenCommand(e),
		newCertCommand(e),
		newCACommand(e),
		newVersionCommand(e, version),
	)
	return root
}

// AddCommand adds role commands (control-plane, proxy, demo) to a root
// built by NewRootCommand. They do not call the API as a client, so the
// root's credential flags are not resolved for them.
func AddCommand(root *cobra.Command, cmds ...*cobra.Command) {
	for _, c := range cmds {
		if c.PersistentPreRunE == nil && c.PersistentPreRun == nil {
			c.PersistentPreRunE = func(*cobra.Command, []string) error { return nil }
		}
	}
	root.AddCommand(cmds...)
}

// usageArgs makes an argument check's failure a usage error (exit code 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &ExitError{Code: 2, Err: err}
		}
		return nil
	}
}

// kindArg resolves a KIND argument; "svc/web" also names the object.
func kindArg(arg string) (v1alpha1.Kind, string, error) {
	name := ""
	if k, n, ok := strings.Cut(arg, "/"); ok {
		arg, name = k, n
	}
	k, ok := v1alpha1.KindByName(arg)
	if !ok {
		var names []string
		for _, k := range v1alpha1.Kinds {
			names = append(names, k.Plural)
		}
		return v1alpha1.Kind{}, "", usageError("unknown resource kind %q: want one of %s", arg, strings.Join(names, ", "))
	}
	return k, name, nil
}

// kindLabel is how output names a kind: "service" in "service/web".
func kindLabel(k v1alpha1.Kind) string { return strings.ToLower(k.Kind) }

func withTimeout(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), requestTimeout)
}
