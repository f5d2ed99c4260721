// Package svid is the proxy's own identity: it makes the proxy's private key
// (ECDSA P-256, generated in the process and never sent anywhere), obtains an
// X.509 SVID for it from the control plane's identity API, renews it at half
// its lifetime, keeps it and the trust bundle on disk so a proxy restarted
// during a control-plane outage serves at once, and serves both to the data
// path as go-spiffe sources.
//
// It owns the key, the certificate and the bundle the proxy trusts; it does
// not own the TLS listeners and clients that use them (package proxy), the
// SDS resource the bundle comes from (proxy/xdsclient) or the Workload API
// (proxy/workloadapi).
//
// Data flow:
//
//	join token ──POST /api/v1/certificates (bearer)──► control plane ─┐
//	current SVID ─POST /api/v1/certificates (mTLS)──►                 │ chain, bundle
//	                                                                  ▼
//	SDS "ROOTCA" ──SetTrustBundle──► Source ──► svid.json (0600, atomic)
//	                                   │
//	      GetX509SVID / GetX509BundleForTrustDomain (every handshake), Changed()
//
// The package does not import internal/identity (it would pull the store into
// the small proxy build); the two request and response types are mirrored in
// api.go.
package svid

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ControlPlanePath is the path of the control plane's SPIFFE ID in every
// trust domain: spiffe://<td>/ns/verge-system/sa/control-plane.
const ControlPlanePath = "/ns/verge-system/sa/control-plane"

// Defaults of the renewal loop.
const (
	// DefaultRetryBase and DefaultRetryMax bound the delay between failed
	// attempts: an outage of the control plane costs it one request per
	// DefaultRetryMax per proxy at most.
	DefaultRetryBase = time.Second
	DefaultRetryMax  = 30 * time.Second
	// DefaultRotationJitter bounds the random delay before the renewal a
	// changed trust bundle triggers: after `verge ca rotate` every proxy
	// renews, and the jitter spreads them.
	DefaultRotationJitter = 5 * time.Second
	// requestTimeout bounds one certificate request.
	requestTimeout = 15 * time.Second
)

// ErrNoCredential is returned by New when the proxy has neither a join token
// nor a persisted SVID that is still valid: it cannot obtain an identity.
var ErrNoCredential = errors.New("svid: no join token and no valid persisted svid")

// ErrTokenRefused is returned by Run (and Wait) when the control plane
// refused the join token (401 or 403) and the proxy has no SVID: retrying
// with the same token cannot succeed.
var ErrTokenRefused = errors.New("svid: join token refused by the control plane")

// Config configures New. The caller must not modify it after the call.
type Config struct {
	// Server is the control plane's REST API base URL, http:// or https://.
	// First issuance uses it as given; renewals and HTTPClient use the same
	// host with scheme https (the API port accepts both).
	Server string
	// JoinToken is the secret that proves the proxy's identity at first
	// issuance. It may be empty when Dir holds a valid SVID.
	JoinToken string
	// CAFile optionally names PEM roots that verify the control plane at
	// first issuance over https. Without it the persisted bundle is used,
	// and without that the system roots with host name verification.
	CAFile string
	// Dir holds svid.json (key, chain, bundles; mode 0600); required.
	Dir string
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Clock returns the current time; time.Now when nil. Tests set it.
	Clock func() time.Time

	// Retry bounds and rotation jitter; the defaults above when zero.
	// Unexported: only tests shorten them.
	retryBase, retryMax, rotationJitter time.Duration
}

// Source is the proxy's identity. It implements x509svid.Source and
// x509bundle.Source; both read an immutable snapshot through an atomic
// pointer and never block, so the data path may call them on every
// handshake. All methods are safe for concurrent use. Run must be running
// for the SVID to be obtained and renewed.
type Source struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	server    *url.URL
	bootRoots []*x509.Certificate // from CAFile

	// cur is the published state; nil until an SVID is available.
	cur atomic.Pointer[state]

	// mu serializes writers of cur and guards changed, rotateAt, rotateGen
	// and runErr.
	mu sync.Mutex
	// changed is closed and replaced on every change of cur.
	changed chan struct{}
	// rotateAt, when set, is an earlier renewal time asked for by a trust
	// bundle change; rotateGen counts such requests so that a renewal that
	// started before one does not clear it.
	rotateAt  time.Time
	rotateGen uint64
	// failed is closed when Run gave up (runErr says why).
	failed chan struct{}
	runErr error
	// kick wakes Run to recompute its wait; it holds at most one token.
	kick chan struct{}

	// persistMu serializes writes of svid.json; each writes the newest
	// state, so the last write wins with the last state.
	persistMu sync.Mutex

	expiry   prometheus.GaugeFunc
	renewals *prometheus.CounterVec
}

// state is one immutable view of the identity.
type state struct {
	svid *x509svid.SVID
	// obtained is when the proxy received svid (local clock).
	obtained time.Time
	// issued is the bundle of the last certificate response; sds the one
	// received over SDS, nil until then. The served bundle is sds when set.
	issued, sds *x509bundle.Bundle
}

func (st *state) bundle() *x509bundle.Bundle {
	if st.sds != nil {
		return st.sds
	}
	return st.issued
}

func (st *state) notAfter() time.Time { return st.svid.Certificates[0].NotAfter }

// renewAt is half-way through the certificate's lifetime. The lifetime is
// counted from when the proxy obtained it if that is later than NotBefore:
// the CA backdates NotBefore to absorb clock skew between peers, and with a
// short TTL half of the backdated lifetime could already be over on arrival.
func (st *state) renewAt() time.Time {
	start := st.svid.Certificates[0].NotBefore
	if st.obtained.After(start) {
		start = st.obtained
	}
	return start.Add(st.notAfter().Sub(start) / 2)
}

// New checks cfg and loads the persisted SVID and bundle from cfg.Dir, so
// that the source serves at once if the SVID is still valid. It returns an
// error wrapping ErrNoCredential when there is neither a valid persisted SVID
// nor a join token. New does no network I/O.
func New(cfg Config) (*Source, error) {
	if cfg.Dir == "" {
		return nil, errors.New("new svid source: Dir: required")
	}
	u, err := url.Parse(cfg.Server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("new svid source: Server %q: want an http:// or https:// URL", cfg.Server)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.retryBase <= 0 {
		cfg.retryBase = DefaultRetryBase
	}
	if cfg.retryMax <= 0 {
		cfg.retryMax = DefaultRetryMax
	}
	if cfg.rotationJitter <= 0 {
		cfg.rotationJitter = DefaultRotationJitter
	}
	s := &Source{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "svid"),
		now:     cfg.Clock,
		server:  u,
		changed: make(chan struct{}),
		failed:  make(chan struct{}),
		kick:    make(chan struct{}, 1),
	}
	if cfg.CAFile != "" {
		data, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("new svid source: CAFile: %w", err)
		}
		if s.bootRoots, err = parsePEMCerts(data); err != nil || len(s.bootRoots) == 0 {
			return nil, fmt.Errorf("new svid source: CAFile %q: no PEM certificates (%v)", cfg.CAFile, err)
		}
	}
	s.initMetrics()

	st, err := load(cfg.Dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		// A corrupt file must not stop a proxy that has a token.
		s.log.Warn("persisted svid unusable", "error", err)
	case !s.now().Before(st.notAfter()):
		s.log.Warn("persisted svid expired", "spiffe_id", st.svid.ID.String(), "expires_at", st.notAfter())
		// Keep the bundle: it verifies the control plane at re-issuance.
		s.bootBundle(st.bundle())
	default:
		s.cur.Store(st)
		s.log.Info("persisted svid loaded", "spiffe_id", st.svid.ID.String(), "expires_at", st.notAfter())
	}
	if s.cur.Load() == nil && cfg.JoinToken == "" {
		return nil, fmt.Errorf("new svid source: %w", ErrNoCredential)
	}
	return s, nil
}

func (s *Source) bootBundle(b *x509bundle.Bundle) {
	if len(s.bootRoots) == 0 && b != nil {
		s.bootRoots = b.X509Authorities()
	}
}

// GetX509SVID returns the current SVID. It implements x509svid.Source. The
// SVID is shared and must not be modified; before the first one is
// available it returns an error.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	st := s.cur.Load()
	if st == nil {
		return nil, errors.New("svid: no svid yet")
	}
	return st.svid, nil
}

// GetX509BundleForTrustDomain returns the trust bundle of the proxy's own
// trust domain: the SDS one once received, else the one that came with the
// SVID. It implements x509bundle.Source; other trust domains are an error
// (federation is not built). The bundle is shared and must not be modified.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	st := s.cur.Load()
	if st == nil {
		return nil, errors.New("svid: no trust bundle yet")
	}
	b := st.bundle()
	if b.TrustDomain() != td {
		return nil, fmt.Errorf("svid: no trust bundle for trust domain %q", td)
	}
	return b, nil
}

// ID is the SPIFFE ID of the current SVID; zero before the first.
func (s *Source) ID() spiffeid.ID {
	if st := s.cur.Load(); st != nil {
		return st.svid.ID
	}
	return spiffeid.ID{}
}

// NotAfter is the expiry of the current SVID; zero before the first.
func (s *Source) NotAfter() time.Time {
	if st := s.cur.Load(); st != nil {
		return st.notAfter()
	}
	return time.Time{}
}

// Changed returns a channel closed at the next change of the SVID or the
// trust bundle. Read the new values after it is closed, then call Changed
// again; a change between two calls is never missed if Changed is called
// before reading.
func (s *Source) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Wait blocks until an SVID is available (at once for a valid persisted
// one), ctx ends (its error), or Run gave up (Run's error, for example one
// wrapping ErrTokenRefused).
func (s *Source) Wait(ctx context.Context) error {
	for {
		ch := s.Changed()
		if s.cur.Load() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.failed:
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.runErr
		case <-ch:
		}
	}
}

// SetTrustBundle installs the trust bundle the proxy received over SDS (the
// ROOTCA secret): td is its trust domain (empty: the SVID's) and rootsDER
// its root certificates. From then on it is the bundle served. When the set
// of roots differs from the one served before, the SVID is renewed soon, so
// that after a CA rotation proxies move to the new root well within the
// overlap. Invalid input is an error and changes nothing.
func (s *Source) SetTrustBundle(td string, rootsDER [][]byte) error {
	roots := make([]*x509.Certificate, 0, len(rootsDER))
	for i, der := range rootsDER {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("set trust bundle: roots[%d]: %w", i, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return errors.New("set trust bundle: roots: empty")
	}
	s.mu.Lock()
	st := s.cur.Load()
	if st == nil {
		s.mu.Unlock()
		// Before the first SVID the trust domain is unknown; the bundle
		// arrives again with every SDS push and the issuance response
		// carries one too.
		return errors.New("set trust bundle: no svid yet")
	}
	own := st.svid.ID.TrustDomain()
	if td != "" {
		// "verge.local" and "spiffe://verge.local" both name it.
		if got, err := spiffeid.TrustDomainFromString(td); err != nil || got != own {
			s.mu.Unlock()
			return fmt.Errorf("set trust bundle: trust domain %q: want the svid's %q", td, own.Name())
		}
	}
	b := x509bundle.FromX509Authorities(own, roots)
	if st.sds != nil && st.sds.Equal(b) {
		s.mu.Unlock()
		return nil
	}
	rotated := !sameRoots(st.bundle(), b)
	next := *st
	next.sds = b
	if rotated {
		s.rotateGen++
		s.rotateAt = s.now().Add(jitter(s.cfg.rotationJitter))
	}
	s.publishLocked(&next)
	s.mu.Unlock()
	if rotated {
		s.log.Info("trust bundle changed; renewing soon", "roots", len(roots))
		s.wake()
	}
	s.persist()
	return nil
}

// APIBase is the control plane's REST API base URL with scheme https.
func (s *Source) APIBase() string {
	u := *s.server
	u.Scheme = "https"
	return u.String()
}

// HTTPClient returns a client for the control plane's API: mutual TLS 1.3
// with the current SVID as client certificate, the server required to be
// the control plane's SVID (spiffe://<td>/ns/verge-system/sa/control-plane)
// under the current bundle. New connections pick up renewed certificates.
// Use it with APIBase URLs; the caller closes its idle connections.
func (s *Source) HTTPClient() *http.Client {
	return &http.Client{Transport: &freshTransport{src: s, base: &http.Transport{
		TLSClientConfig:   s.mtlsConfig(),
		ForceAttemptHTTP2: true,
		Proxy:             nil,
		IdleConnTimeout:   90 * time.Second,
	}}}
}

// freshTransport drops kept-alive connections once the SVID or bundle has
// changed: the server reads the client's identity from the handshake, and a
// reused connection would go on presenting the old (perhaps expired)
// certificate.
type freshTransport struct {
	src  *Source
	base *http.Transport
	seen atomic.Pointer[state]
}

func (t *freshTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if st := t.src.cur.Load(); t.seen.Swap(st) != st {
		t.base.CloseIdleConnections()
	}
	return t.base.RoundTrip(r)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach base.
func (t *freshTransport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// GRPCDialOption returns transport credentials for the xDS connection, with
// the same verification as HTTPClient; each new connection reads the current
// SVID and bundle.
func (s *Source) GRPCDialOption() grpc.DialOption {
	return grpc.WithTransportCredentials(credentials.NewTLS(s.mtlsConfig()))
}

func (s *Source) mtlsConfig() *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(s, s, tlsconfig.AdaptMatcher(s.isControlPlane))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// isControlPlane authorizes the control plane's ID in the SVID's trust domain.
func (s *Source) isControlPlane(id spiffeid.ID) error {
	td := s.ID().TrustDomain()
	if td.IsZero() || id.TrustDomain() != td || id.Path() != ControlPlanePath {
		return fmt.Errorf("peer %q is not the control plane of trust domain %q", id, td)
	}
	return nil
}

// Metrics returns the source's collectors for the caller to register:
// verge_proxy_svid_expiry_timestamp_seconds and
// verge_proxy_svid_renewals_total{result}.
func (s *Source) Metrics() []prometheus.Collector {
	return []prometheus.Collector{s.expiry, s.renewals}
}

func (s *Source) initMetrics() {
	s.expiry = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "verge_proxy_svid_expiry_timestamp_seconds",
		Help: "Expiry of the proxy's current X.509 SVID, Unix seconds; 0 before the first.",
	}, func() float64 {
		if t := s.NotAfter(); !t.IsZero() {
			return float64(t.Unix())
		}
		return 0
	})
	s.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "verge_proxy_svid_renewals_total",
		Help: "Certificate requests to the control plane (first issuance and renewals) by result (success, failure).",
	}, []string{"result"})
	s.renewals.WithLabelValues("success")
	s.renewals.WithLabelValues("failure")
}

// publishLocked makes st current and wakes Changed watchers. s.mu is held.
func (s *Source) publishLocked(st *state) {
	s.cur.Store(st)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Source) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// persist writes the current state to Dir. A failure is logged, not
// returned: the proxy keeps serving, it only loses the restart shortcut.
func (s *Source) persist() {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	st := s.cur.Load()
	if st == nil {
		return
	}
	if err := save(s.cfg.Dir, st); err != nil {
		s.log.Warn("svid not persisted", "error", err)
	}
}

// sameRoots reports whether a and b hold the same roots in any order.
func sameRoots(a, b *x509bundle.Bundle) bool {
	if a == nil || b == nil {
		return a == b
	}
	ra, rb := a.X509Authorities(), b.X509Authorities()
	if len(ra) != len(rb) {
		return false
	}
	for _, c := range ra {
		if !slices.ContainsFunc(rb, c.Equal) {
			return false
		}
	}
	return true
}

func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			return certs, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}
