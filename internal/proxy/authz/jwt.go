package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	defaultClockSkew     = 60 * time.Second // Envoy's clock_skew_seconds default
	defaultCacheDuration = 5 * time.Minute  // Envoy's remote_jwks cache_duration default
	// jwksFetchTimeout bounds one key set download; it is also how long the
	// first requests wait for a key set that was never fetched.
	jwksFetchTimeout = 5 * time.Second
	// jwksRetry is how soon a failed download is tried again.
	jwksRetry = 5 * time.Second
	// maxJWKSBytes bounds a key set file or download.
	maxJWKSBytes = 1 << 20
	// maxTokenBytes bounds the token a request may present.
	maxTokenBytes = 16 << 10
	// tokenCacheSize bounds the verified-token cache; when full it is
	// emptied (simple, and a burst of distinct tokens costs only a
	// re-verification each).
	tokenCacheSize = 4096
	// tokenCacheTTL bounds how long a verified token is trusted without
	// checking its signature again, so a key removed from the key set stops
	// working within it.
	tokenCacheTTL = 5 * time.Minute
)

// signatureAlgorithms are the ones tokens may use; "none" and HMAC are not
// among them (a key set publishes public keys).
var signatureAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// jwtAuth is a compiled jwt_authn filter in the shape the translator writes:
// one rule for every path requiring any provider, with allow_missing (a
// request without a token passes on to RBAC) or not.
type jwtAuth struct {
	byIssuer     map[string]*jwtProvider
	sources      []tokenSource // where tokens are looked for, in provider order
	allowMissing bool
	allowFailed  bool
	cache        tokenCache
	now          func() time.Time
}

type tokenSource struct{ header, prefix string }

type jwtProvider struct {
	issuer    string
	audiences []string
	skew      time.Duration
	keys      func() (*jose.JSONWebKeySet, error)
}

// AddJWT adds a jwt_authn filter; it must come before the RBAC filters that
// read its claims. A local key set is read now (its file must exist); a
// remote one is fetched in the background and shared by every engine naming
// the same URI. The remote's http_uri.cluster is not used: the proxy fetches
// the URI directly. Errors start with a field path relative to the
// JwtAuthentication message.
func (b *Builder) AddJWT(cfg *jwtv3.JwtAuthentication) error {
	if !b.http {
		return errors.New(": JWT authentication needs an HTTP listener")
	}
	if b.eng.jwt != nil {
		return errors.New(": only one JWT authentication filter is supported")
	}
	if b.rbac {
		return errors.New(": JWT authentication must come before the RBAC filters")
	}
	switch {
	case cfg.GetFilterStateRules() != nil:
		return errors.New(".filter_state_rules: unsupported")
	case len(cfg.GetRequirementMap()) > 0:
		return errors.New(".requirement_map: unsupported")
	}
	a := &jwtAuth{byIssuer: map[string]*jwtProvider{}, now: time.Now}
	names := make([]string, 0, len(cfg.GetProviders()))
	for name := range cfg.GetProviders() {
		names = append(names, name)
	}
	slices.Sort(names)
	providers := map[string]bool{}
	for _, name := range names {
		pr, err := compileProvider(cfg.GetProviders()[name], a)
		if err != nil {
			return fmt.Errorf(".providers[%q]%w", name, err)
		}
		if _, dup := a.byIssuer[pr.issuer]; dup {
			return fmt.Errorf(".providers[%q].issuer: %q also used by another provider", name, pr.issuer)
		}
		a.byIssuer[pr.issuer] = pr
		providers[name] = true
	}
	if len(cfg.GetRules()) != 1 {
		return fmt.Errorf(".rules: want exactly one rule (prefix \"/\"), got %d", len(cfg.GetRules()))
	}
	rule := cfg.GetRules()[0]
	if m := rule.GetMatch(); m.GetPrefix() != "/" || len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetGrpc() != nil {
		return errors.New(".rules[0].match: only prefix \"/\" is supported")
	}
	if err := a.requirement(rule.GetRequires(), providers); err != nil {
		return fmt.Errorf(".rules[0].requires%w", err)
	}
	b.eng.jwt = a
	b.eng.needsHTTP = true
	b.seen = true
	return nil
}

// requirement accepts provider_name, or requires_any over provider names
// plus at most one of allow_missing and allow_missing_or_failed.
func (a *jwtAuth) requirement(r *jwtv3.JwtRequirement, providers map[string]bool) error {
	checkName := func(path, n string) error {
		if !providers[n] {
			return fmt.Errorf("%s: unknown provider %q", path, n)
		}
		return nil
	}
	switch t := r.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		return checkName(".provider_name", t.ProviderName)
	case *jwtv3.JwtRequirement_RequiresAny:
		for i, sub := range t.RequiresAny.GetRequirements() {
			path := fmt.Sprintf(".requires_any.requirements[%d]", i)
			switch st := sub.GetRequiresType().(type) {
			case *jwtv3.JwtRequirement_ProviderName:
				if err := checkName(path+".provider_name", st.ProviderName); err != nil {
					return err
				}
			case *jwtv3.JwtRequirement_AllowMissing:
				a.allowMissing = true
			case *jwtv3.JwtRequirement_AllowMissingOrFailed:
				a.allowMissing, a.allowFailed = true, true
			default:
				return fmt.Errorf("%s: unsupported requirement %T", path, st)
			}
		}
		return nil
	case *jwtv3.JwtRequirement_AllowMissing:
		a.allowMissing = true
		return nil
	case *jwtv3.JwtRequirement_AllowMissingOrFailed:
		a.allowMissing, a.allowFailed = true, true
		return nil
	default:
		return fmt.Errorf(": unsupported requirement %T", t)
	}
}

func compileProvider(p *jwtv3.JwtProvider, a *jwtAuth) (*jwtProvider, error) {
	switch {
	case p.GetIssuer() == "":
		return nil, errors.New(".issuer: required")
	case len(p.GetFromParams()) > 0:
		return nil, errors.New(".from_params: unsupported")
	case len(p.GetFromCookies()) > 0:
		return nil, errors.New(".from_cookies: unsupported")
	case len(p.GetClaimToHeaders()) > 0:
		return nil, errors.New(".claim_to_headers: unsupported")
	case p.GetForwardPayloadHeader() != "":
		return nil, errors.New(".forward_payload_header: unsupported")
	case p.GetSubjects() != nil:
		return nil, errors.New(".subjects: unsupported")
	case p.GetMaxLifetime() != nil:
		return nil, errors.New(".max_lifetime: unsupported")
	case p.GetNormalizePayloadInMetadata() != nil:
		return nil, errors.New(".normalize_payload_in_metadata: unsupported")
	}
	pr := &jwtProvider{issuer: p.GetIssuer(), audiences: p.GetAudiences(), skew: defaultClockSkew}
	if s := p.GetClockSkewSeconds(); s > 0 {
		pr.skew = time.Duration(s) * time.Second
	}
	hs := p.GetFromHeaders()
	if len(hs) == 0 {
		a.addSource(tokenSource{"authorization", "Bearer "})
	}
	for i, h := range hs {
		if h.GetName() == "" {
			return nil, fmt.Errorf(".from_headers[%d].name: required", i)
		}
		a.addSource(tokenSource{strings.ToLower(h.GetName()), h.GetValuePrefix()})
	}
	switch src := p.GetJwksSourceSpecifier().(type) {
	case *jwtv3.JwtProvider_LocalJwks:
		set, err := localKeys(src.LocalJwks.GetFilename(), src.LocalJwks.GetInlineString())
		if err != nil {
			return nil, fmt.Errorf(".local_jwks%w", err)
		}
		pr.keys = func() (*jose.JSONWebKeySet, error) { return set, nil }
	case *jwtv3.JwtProvider_RemoteJwks:
		uri := src.RemoteJwks.GetHttpUri().GetUri()
		if !strings.HasPrefix(uri, "http://") && !strings.HasPrefix(uri, "https://") {
			return nil, fmt.Errorf(".remote_jwks.http_uri.uri: %q is not an http or https URL", uri)
		}
		refresh := defaultCacheDuration
		if d := src.RemoteJwks.GetCacheDuration(); d != nil && d.AsDuration() > 0 {
			refresh = d.AsDuration()
		}
		rk := remoteKeySet(uri, refresh)
		pr.keys = rk.get
	default:
		return nil, errors.New(".jwks_source_specifier: local_jwks or remote_jwks required")
	}
	return pr, nil
}

func (a *jwtAuth) addSource(s tokenSource) {
	if !slices.Contains(a.sources, s) {
		a.sources = append(a.sources, s)
	}
}

// localKeys reads a key set from a file or an inline string. Errors start
// with the field.
func localKeys(file, inline string) (*jose.JSONWebKeySet, error) {
	data := []byte(inline)
	field := ".inline_string"
	if file != "" {
		field = ".filename"
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		defer f.Close()
		data, err = io.ReadAll(io.LimitReader(f, maxJWKSBytes+1))
		if err != nil {
			return nil, fmt.Errorf("%s: read %s: %w", field, file, err)
		}
	} else if inline == "" {
		return nil, errors.New(": filename or inline_string required")
	}
	set, err := parseKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return set, nil
}

func parseKeySet(data []byte) (*jose.JSONWebKeySet, error) {
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", maxJWKSBytes)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("key set: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("key set: no keys")
	}
	for i, k := range set.Keys {
		if !k.IsPublic() {
			return nil, fmt.Errorf("key set: keys[%d] (kid %q) is not a public key", i, k.KeyID)
		}
	}
	return &set, nil
}

// Reasons a token is refused; they end up in Decision.Reason.
var (
	errTokenMalformed   = errors.New("token malformed")
	errTokenIssuer      = errors.New("issuer not trusted")
	errTokenSignature   = errors.New("signature invalid")
	errTokenExpired     = errors.New("token expired")
	errTokenNotYetValid = errors.New("token not yet valid")
	errTokenAudience    = errors.New("audience not allowed")
	errTokenMissing     = errors.New("token missing")
)

// verify returns the claims of the request's verified token, nil without a
// token (when allowed), or why the token is refused.
func (a *jwtAuth) verify(r *Request) (map[string]any, error) {
	token := ""
	for _, s := range a.sources {
		v := r.header(s.header)
		if v == "" {
			continue
		}
		if s.prefix != "" {
			if len(v) < len(s.prefix) || !strings.EqualFold(v[:len(s.prefix)], s.prefix) {
				continue
			}
			v = v[len(s.prefix):]
		}
		token = strings.TrimSpace(v)
		break
	}
	if token == "" {
		if a.allowMissing {
			return nil, nil
		}
		return nil, errTokenMissing
	}
	now := a.now()
	if claims, ok := a.cache.get(token, now); ok {
		return claims, nil
	}
	claims, exp, err := a.verifyToken(token, now)
	if err != nil {
		if a.allowFailed {
			return nil, nil
		}
		return nil, err
	}
	until := now.Add(tokenCacheTTL)
	if exp.Before(until) {
		until = exp
	}
	a.cache.put(token, claims, until)
	return claims, nil
}

func (a *jwtAuth) verifyToken(token string, now time.Time) (map[string]any, time.Time, error) {
	if len(token) > maxTokenBytes {
		return nil, time.Time{}, errTokenMalformed
	}
	tok, err := jwt.ParseSigned(token, signatureAlgorithms)
	if err != nil || len(tok.Headers) != 1 {
		return nil, time.Time{}, errTokenMalformed
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, time.Time{}, errTokenMalformed
	}
	pr := a.byIssuer[unverified.Issuer]
	if pr == nil {
		return nil, time.Time{}, errTokenIssuer
	}
	set, err := pr.keys()
	if err != nil {
		return nil, time.Time{}, err
	}
	candidates := set.Keys
	if kid := tok.Headers[0].KeyID; kid != "" {
		candidates = set.Key(kid)
	}
	var std jwt.Claims
	var all map[string]any
	verified := false
	for _, k := range candidates {
		if tok.Claims(k.Key, &std, &all) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, time.Time{}, errTokenSignature
	}
	exp := now.Add(tokenCacheTTL)
	if std.Expiry != nil {
		exp = std.Expiry.Time().Add(pr.skew)
	}
	err = std.ValidateWithLeeway(jwt.Expected{Issuer: pr.issuer, AnyAudience: pr.audiences, Time: now}, pr.skew)
	switch {
	case err == nil:
		return all, exp, nil
	case errors.Is(err, jwt.ErrExpired):
		return nil, time.Time{}, errTokenExpired
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return nil, time.Time{}, errTokenNotYetValid
	case errors.Is(err, jwt.ErrInvalidAudience):
		return nil, time.Time{}, errTokenAudience
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return nil, time.Time{}, errTokenIssuer
	default:
		return nil, time.Time{}, errTokenMalformed
	}
}

// tokenCache remembers verified tokens until they expire (or for
// tokenCacheTTL), so that a client reusing its token costs a map lookup
// rather than a signature check.
type tokenCache struct {
	m sync.Map // token → *cachedToken
	n atomic.Int64
}

type cachedToken struct {
	claims map[string]any
	until  time.Time
}

func (c *tokenCache) get(token string, now time.Time) (map[string]any, bool) {
	v, ok := c.m.Load(token)
	if !ok {
		return nil, false
	}
	ct := v.(*cachedToken)
	if !now.Before(ct.until) {
		c.m.Delete(token)
		return nil, false
	}
	return ct.claims, true
}

func (c *tokenCache) put(token string, claims map[string]any, until time.Time) {
	if c.n.Add(1) > tokenCacheSize {
		c.m.Clear()
		c.n.Store(1)
	}
	c.m.Store(token, &cachedToken{claims: claims, until: until})
}

// remoteKeys is one key set URI, shared by every engine that names it, so
// that a new configuration does not fetch again. It is refreshed in the
// background when older than its cache duration; a failed fetch keeps the
// previous set.
type remoteKeys struct {
	uri       string
	refresh   atomic.Int64 // time.Duration
	set       atomic.Pointer[jose.JSONWebKeySet]
	attempted atomic.Int64 // unix nanoseconds of the last fetch's end
	fetching  atomic.Bool
	lastErr   atomic.Pointer[string]
	firstDone chan struct{} // closed when the first fetch ended
	firstOnce sync.Once
}

var remotes = struct {
	sync.Mutex
	m map[string]*remoteKeys
}{m: map[string]*remoteKeys{}}

// jwksClient fetches key sets. Without keep-alives no connection outlives
// a fetch, so nothing lingers after a key set stops being used.
var jwksClient = &http.Client{
	Timeout:   jwksFetchTimeout,
	Transport: &http.Transport{DisableKeepAlives: true, ResponseHeaderTimeout: jwksFetchTimeout},
}

func remoteKeySet(uri string, refresh time.Duration) *remoteKeys {
	remotes.Lock()
	defer remotes.Unlock()
	rk := remotes.m[uri]
	if rk == nil {
		rk = &remoteKeys{uri: uri, firstDone: make(chan struct{})}
		remotes.m[uri] = rk
	}
	rk.refresh.Store(int64(refresh))
	// A new configuration naming a fresh key set does not fetch it again.
	rk.startIfStale()
	return rk
}

// get returns the current key set. Before the first fetch ended it waits
// for it, at most jwksFetchTimeout.
func (rk *remoteKeys) get() (*jose.JSONWebKeySet, error) {
	set := rk.startIfStale()
	if set != nil {
		return set, nil
	}
	t := time.NewTimer(jwksFetchTimeout)
	defer t.Stop()
	select {
	case <-rk.firstDone:
	case <-t.C:
	}
	if set = rk.set.Load(); set != nil {
		return set, nil
	}
	msg := "not fetched yet"
	if e := rk.lastErr.Load(); e != nil {
		msg = *e
	}
	return nil, fmt.Errorf("key set %s unavailable: %s", rk.uri, msg)
}

// startIfStale starts a fetch when the set is older than its refresh
// period, or missing and not tried for jwksRetry (or never), and returns
// the current set.
func (rk *remoteKeys) startIfStale() *jose.JSONWebKeySet {
	set := rk.set.Load()
	age := time.Since(time.Unix(0, rk.attempted.Load()))
	if (set != nil && age > time.Duration(rk.refresh.Load())) || (set == nil && age > jwksRetry) {
		rk.start()
	}
	return set
}

// start fetches in the background unless a fetch is under way. The
// goroutine ends within jwksFetchTimeout.
func (rk *remoteKeys) start() {
	if !rk.fetching.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer rk.fetching.Store(false)
		set, err := fetchKeySet(rk.uri)
		if err != nil {
			msg := err.Error()
			rk.lastErr.Store(&msg)
		} else {
			rk.set.Store(set)
			rk.lastErr.Store(nil)
		}
		rk.attempted.Store(time.Now().UnixNano())
		rk.firstOnce.Do(func() { close(rk.firstDone) })
	}()
}

func fetchKeySet(uri string) (*jose.JSONWebKeySet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	resp, err := jwksClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	return parseKeySet(data)
}
