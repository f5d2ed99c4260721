package apiserver

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/ca"
	"verge.dev/verge/internal/store"
)

// Reasons of verge_api_auth_refusals_total. The set is fixed so the metric
// stays bounded.
const (
	RefusedAnonymous          = "anonymous"
	RefusedInvalidToken       = "invalid_token"
	RefusedInvalidCertificate = "invalid_certificate"
	RefusedNotAdmin           = "not_admin"
	RefusedWorkloadMismatch   = "workload_mismatch"
)

var refusalReasons = []string{RefusedAnonymous, RefusedInvalidToken, RefusedInvalidCertificate, RefusedNotAdmin, RefusedWorkloadMismatch}

// Paths the guard treats specially. HealthPath is registry.HealthPath (this
// package cannot import the registry, which imports it); the control plane's
// tests check they agree.
const (
	CertificatesPath = "/api/v1/certificates"
	TokensPath       = "/api/v1/tokens"
	HealthPath       = "/api/v1/health/"
)

// AuthConfig configures NewGuard.
type AuthConfig struct {
	// TrustDomain is the mesh's; required.
	TrustDomain spiffeid.TrustDomain
	// Bundle verifies client certificates; required. The listener verified
	// them already; the guard checks again so that its decisions never rest
	// on how the listener was configured.
	Bundle x509bundle.Source
	// AdminToken is the bearer secret of administrators; empty disables
	// token authentication (client certificates still work).
	AdminToken string
	// AdminID is the SPIFFE ID whose client certificate makes an
	// administrator: spiffe://<td>/ns/verge-system/sa/admin.
	AdminID spiffeid.ID
	// AllowAnonymous restores the open API of before issue 4 for callers
	// without credentials: they may do anything. Credentials that are
	// presented are still checked, and a workload identity still only
	// writes its own Workload, so proxies that have identities are held to
	// them. For tests and migrations only.
	AllowAnonymous bool
	// Registerer receives verge_api_auth_refusals_total; none when nil.
	Registerer prometheus.Registerer
}

// Guard authenticates API callers and decides what they may do. Reads
// (GET, HEAD) are open, except the join-token and certificate lists; every
// other request needs a principal:
//
//   - an administrator (Authorization: Bearer <admin token>, or a client
//     SVID equal to AdminID) may do anything;
//   - POST /api/v1/certificates passes to the identity API, which checks the
//     join token or renews the client's own SVID;
//   - a workload SVID spiffe://<td>/ns/<ns>/sa/<sa> may PUT or DELETE a
//     Workload in namespace ns whose spec.serviceAccount is sa (for an
//     existing one, the stored object's too) and PUT that workload's health.
//
// No credentials is 401, credentials that are not allowed 403, each with a
// Kubernetes-style Status naming why, counted and logged. Safe for
// concurrent use.
type Guard struct {
	cfg      AuthConfig
	st       store.Store
	logger   *slog.Logger
	refusals *prometheus.CounterVec
	workload v1alpha1.Kind
}

// NewGuard returns a Guard that reads stored Workloads from st.
func NewGuard(st store.Store, cfg AuthConfig, logger *slog.Logger) (*Guard, error) {
	if cfg.TrustDomain.IsZero() || cfg.Bundle == nil {
		return nil, errors.New("new api guard: TrustDomain and Bundle are required")
	}
	wk, ok := v1alpha1.KindByName("Workload")
	if !ok {
		return nil, errors.New("new api guard: kind Workload is not served")
	}
	g := &Guard{
		cfg:      cfg,
		st:       st,
		logger:   logger.With("component", "api-auth"),
		workload: wk,
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_api_auth_refusals_total",
			Help: "API requests refused for missing, invalid or insufficient credentials, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range refusalReasons {
		g.refusals.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(g.refusals); err != nil {
			return nil, fmt.Errorf("new api guard: register metrics: %w", err)
		}
	}
	return g, nil
}

// principal is who a request comes from.
type principal struct {
	admin bool
	// id is the verified client SVID's ID, zero without one.
	id spiffeid.ID
	// bearer is true when a bearer token that is not the admin token came
	// with the request (a join token, for the identity API).
	bearer bool
}

// authRefusal is a request the guard refuses.
type authRefusal struct {
	code   int
	reason string
	msg    string
}

func (e *authRefusal) Error() string { return e.msg }

// Wrap returns next behind the guard.
func (g *Guard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := g.authenticate(r)
		if err == nil {
			err = g.authorize(w, r, p)
		}
		if err != nil {
			g.refuse(w, r, p, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authenticate finds the request's principal. Credentials that are
// presented and wrong are refused even where none would be needed, so a
// client learns at once that its token or certificate is bad.
func (g *Guard) authenticate(r *http.Request) (principal, error) {
	var p principal
	if tok, ok := bearerToken(r); ok {
		if g.cfg.AdminToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(g.cfg.AdminToken)) == 1 {
			p.admin = true
			return p, nil
		}
		if !isCertificateRequest(r) {
			return p, &authRefusal{http.StatusUnauthorized, RefusedInvalidToken,
				"the bearer token is not a valid admin token"}
		}
		p.bearer = true // a join token: the identity API checks it
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		id, _, err := x509svid.Verify(r.TLS.PeerCertificates, g.cfg.Bundle)
		if err != nil {
			return p, &authRefusal{http.StatusUnauthorized, RefusedInvalidCertificate,
				"the client certificate is not a valid SVID of trust domain " + g.cfg.TrustDomain.Name()}
		}
		p.id = id
		if !g.cfg.AdminID.IsZero() && id == g.cfg.AdminID {
			p.admin = true
		}
	}
	return p, nil
}

func (g *Guard) authorize(w http.ResponseWriter, r *http.Request, p principal) error {
	if p.admin || (g.cfg.AllowAnonymous && p.id.IsZero()) {
		return nil
	}
	clean := path.Clean(r.URL.Path)
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	tokens := clean == TokensPath || strings.HasPrefix(clean, TokensPath+"/")
	// The certificate list tells which identities exist and how to revoke
	// them: administrators only, like the join tokens.
	certs := clean == CertificatesPath || strings.HasPrefix(clean, CertificatesPath+"/")
	switch {
	case read && !tokens && !certs:
		return nil
	case r.Method == http.MethodPost && clean == CertificatesPath:
		return nil
	case p.id.IsZero():
		what := "writes"
		switch {
		case tokens:
			what = "join tokens"
		case certs:
			what = "certificate listings and revocations"
		}
		return &authRefusal{http.StatusUnauthorized, RefusedAnonymous,
			"authentication required: " + what + " need an admin token (Authorization: Bearer <token>) or an admin client certificate"}
	}
	if ns, name, ok := g.workloadTarget(r); ok {
		return g.authorizeWorkload(w, r, p.id, ns, name)
	}
	return &authRefusal{http.StatusForbidden, RefusedNotAdmin,
		fmt.Sprintf("%s is not an administrator: a workload identity may only register its own Workload and report its health", p.id)}
}

// workloadTarget recognizes the requests a workload identity may make:
// PUT or DELETE of a Workload, PUT of a health report.
func (g *Guard) workloadTarget(r *http.Request) (ns, name string, ok bool) {
	seg := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if r.URL.Path != path.Clean(r.URL.Path) {
		return "", "", false
	}
	k := g.workload
	// apis/{group}/{version}/namespaces/{ns}/workloads/{name}
	if (r.Method == http.MethodPut || r.Method == http.MethodDelete) && len(seg) == 7 &&
		seg[0] == "apis" && seg[1] == k.Group && seg[2] == k.Version && seg[3] == "namespaces" && seg[5] == k.Plural {
		return seg[4], seg[6], seg[4] != "" && seg[6] != ""
	}
	// api/v1/health/{ns}/{name}
	if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, HealthPath) && len(seg) == 5 {
		return seg[3], seg[4], seg[3] != "" && seg[4] != ""
	}
	return "", "", false
}

// authorizeWorkload allows id to write workload ns/name when id's namespace
// is ns and its service account is the workload's: the one in the body
// (PUT of a Workload) and the stored one, when it exists.
func (g *Guard) authorizeWorkload(w http.ResponseWriter, r *http.Request, id spiffeid.ID, ns, name string) error {
	idNS, idSA, err := ca.ParseWorkloadID(id)
	if err != nil || !id.MemberOf(g.cfg.TrustDomain) {
		return &authRefusal{http.StatusForbidden, RefusedNotAdmin,
			fmt.Sprintf("%s is neither an administrator nor a workload identity of trust domain %s", id, g.cfg.TrustDomain.Name())}
	}
	if idNS != ns {
		return &authRefusal{http.StatusForbidden, RefusedWorkloadMismatch,
			fmt.Sprintf("%s may not act for workload %s/%s: its namespace is %q", id, ns, name, idNS)}
	}
	if r.Method == http.MethodPut && !strings.HasPrefix(r.URL.Path, HealthPath) {
		sa, ok, err := g.bodyServiceAccount(w, r, ns, name)
		if err != nil {
			return err
		}
		if ok && sa != idSA {
			return &authRefusal{http.StatusForbidden, RefusedWorkloadMismatch,
				fmt.Sprintf("%s may not register workload %s/%s: spec.serviceAccount is %q, the identity's is %q", id, ns, name, sa, idSA)}
		}
	}
	kv, err := g.st.Get(r.Context(), Key(g.workload, ns, name))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil // a new workload, or a 404 from the handler
	case err != nil:
		return fmt.Errorf("authorize %s for workload %s/%s: %w", id, ns, name, err)
	}
	obj, err := DecodeStored(g.workload, kv)
	if err != nil {
		return fmt.Errorf("authorize %s for workload %s/%s: %w", id, ns, name, err)
	}
	if wl, ok := obj.(*v1alpha1.Workload); ok {
		v1alpha1.Default(wl)
		if wl.Spec.ServiceAccount != idSA {
			return &authRefusal{http.StatusForbidden, RefusedWorkloadMismatch,
				fmt.Sprintf("%s may not act for workload %s/%s: the stored workload runs as service account %q", id, ns, name, wl.Spec.ServiceAccount)}
		}
	}
	return nil
}

// bodyServiceAccount reads a Workload PUT's body, puts it back for the
// handler, and returns its defaulted spec.serviceAccount. A body the
// handler will refuse anyway (too large, not a Workload) gives ok false and
// passes through to be refused there with the usual error.
func (g *Guard) bodyServiceAccount(w http.ResponseWriter, r *http.Request, ns, name string) (string, bool, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return "", false, err
		}
		return "", false, badRequest("read body: %v", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	doc, err := reconcile(data, r.Header.Get("Content-Type"), g.workload, ns, name)
	if err != nil {
		return "", false, nil
	}
	obj, err := v1alpha1.DecodeOne(doc)
	if err != nil {
		return "", false, nil
	}
	wl, ok := obj.(*v1alpha1.Workload)
	if !ok {
		return "", false, nil
	}
	v1alpha1.Default(wl)
	return wl.Spec.ServiceAccount, true, nil
}

func (g *Guard) refuse(w http.ResponseWriter, r *http.Request, p principal, err error) {
	ar, ok := errors.AsType[*authRefusal](err)
	if !ok {
		st := toStatus(target{}, err)
		if st.Code == http.StatusInternalServerError {
			g.logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		}
		writeJSON(w, int(st.Code), st)
		return
	}
	g.refusals.WithLabelValues(ar.reason).Inc()
	attrs := []any{"reason", ar.reason, "method", r.Method, "path", r.URL.Path, "remote_addr", r.RemoteAddr}
	if !p.id.IsZero() {
		attrs = append(attrs, "spiffe_id", p.id.String())
	}
	g.logger.Warn("api request refused", attrs...)
	reason := metav1.StatusReasonForbidden
	if ar.code == http.StatusUnauthorized {
		reason = metav1.StatusReasonUnauthorized
		w.Header().Set("WWW-Authenticate", `Bearer realm="verge"`)
	}
	writeJSON(w, ar.code, metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Code:     int32(ar.code),
		Reason:   reason,
		Message:  ar.msg,
	})
}

func isCertificateRequest(r *http.Request) bool {
	return r.Method == http.MethodPost && path.Clean(r.URL.Path) == CertificatesPath
}

// bearerToken returns the token of an "Authorization: Bearer <token>" header.
func bearerToken(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	return tok, ok && strings.EqualFold(scheme, "Bearer") && tok != ""
}
