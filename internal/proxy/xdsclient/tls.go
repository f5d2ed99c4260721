package xdsclient

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"verge.dev/verge/internal/proxy/config"
)

// The TLS subset the proxy accepts is exactly what internal/xds/translate
// sends (see docs/xds.md): anything else is refused with the field named,
// because a TLS setting the proxy cannot honour must never degrade to a
// weaker connection silently.
const (
	transportProtocolTLS       = "tls"
	transportProtocolPlaintext = "raw_buffer"
	// transportSocketMatchKey and tlsModeKey/tlsModeVerge are the endpoint
	// metadata that select a cluster's TLS transport socket match.
	transportSocketMatchKey = "envoy.transport_socket_match"
	tlsModeKey              = "tlsMode"
	tlsModeVerge            = "verge"
)

// onlyFields refuses every populated field of m whose name is not in
// allowed, naming it under path (which ends in "." or is empty).
func onlyFields(m proto.Message, path string, allowed ...string) error {
	var bad []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			bad = append(bad, string(fd.Name()))
		}
		return true
	})
	slices.Sort(bad)
	errs := make([]error, len(bad))
	for i, f := range bad {
		errs[i] = fmt.Errorf("%s%s: unsupported", path, f)
	}
	return errors.Join(errs...)
}

// convertFilterChains picks the filter chain whose filters the listener
// runs and its mutual TLS (nil for plaintext). Accepted shapes: one chain
// without match or transport socket (plaintext); one chain matching
// transport_protocol "tls" with a DownstreamTlsContext (STRICT); that chain
// plus one matching "raw_buffer" without transport socket and with the same
// filters (PERMISSIVE). Errors start with a field path.
func convertFilterChains(chains []*listenerv3.FilterChain) (int, *config.DownstreamTLS, error) {
	if len(chains) == 1 && chains[0].GetTransportSocket() == nil && chains[0].GetFilterChainMatch().GetTransportProtocol() == "" {
		if m := chains[0].GetFilterChainMatch(); m != nil && !isEmptyFilterChainMatch(m) {
			return 0, nil, errors.New("filter_chains[0].filter_chain_match: unsupported")
		}
		return 0, nil, nil
	}
	if n := len(chains); n < 1 || n > 2 {
		return 0, nil, fmt.Errorf("filter_chains: want 1 plaintext chain, 1 TLS chain or a TLS and a raw_buffer chain, got %d", n)
	}
	tlsAt, plainAt := -1, -1
	var errs []error
	for i, fc := range chains {
		path := fmt.Sprintf("filter_chains[%d]", i)
		if err := onlyFields(fc, path+".", "filter_chain_match", "filters", "transport_socket", "name"); err != nil {
			errs = append(errs, err)
			continue
		}
		tp := fc.GetFilterChainMatch().GetTransportProtocol()
		if m := fc.GetFilterChainMatch(); m != nil {
			rest := proto.Clone(m).(*listenerv3.FilterChainMatch)
			rest.TransportProtocol = ""
			if !isEmptyFilterChainMatch(rest) {
				errs = append(errs, fmt.Errorf("%s.filter_chain_match: only transport_protocol is supported", path))
				continue
			}
		}
		switch {
		case tp == transportProtocolTLS && tlsAt < 0:
			tlsAt = i
		case tp == transportProtocolPlaintext && plainAt < 0:
			plainAt = i
			if fc.GetTransportSocket() != nil {
				errs = append(errs, fmt.Errorf("%s.transport_socket: unsupported on a raw_buffer chain", path))
			}
		default:
			errs = append(errs, fmt.Errorf("%s.filter_chain_match.transport_protocol: want one %q chain and at most one %q chain, got %q",
				path, transportProtocolTLS, transportProtocolPlaintext, tp))
		}
	}
	if len(errs) > 0 {
		return 0, nil, errors.Join(errs...)
	}
	if tlsAt < 0 {
		return 0, nil, fmt.Errorf("filter_chains: a %q chain is required with a %q one", transportProtocolTLS, transportProtocolPlaintext)
	}
	path := fmt.Sprintf("filter_chains[%d].transport_socket", tlsAt)
	ts := chains[tlsAt].GetTransportSocket()
	if ts == nil {
		return 0, nil, fmt.Errorf("%s: required on a %q chain", path, transportProtocolTLS)
	}
	dt := &tlsv3.DownstreamTlsContext{}
	if err := unpackTransportSocket(ts, dt, path); err != nil {
		return 0, nil, err
	}
	out, err := convertDownstreamTLS(dt, path+".typed_config.")
	if err != nil {
		return 0, nil, err
	}
	out.Mode = config.TLSStrict
	if plainAt >= 0 {
		out.Mode = config.TLSPermissive
		if !filtersEqual(chains[tlsAt].GetFilters(), chains[plainAt].GetFilters()) {
			return 0, nil, fmt.Errorf("filter_chains[%d].filters: must equal filter_chains[%d].filters", plainAt, tlsAt)
		}
	}
	return tlsAt, out, nil
}

func filtersEqual(a, b []*listenerv3.Filter) bool {
	return slices.EqualFunc(a, b, func(x, y *listenerv3.Filter) bool { return proto.Equal(x, y) })
}

// unpackTransportSocket decodes ts's typed_config into m, refusing any other
// type. Errors start with path.
func unpackTransportSocket(ts *corev3.TransportSocket, m proto.Message, path string) error {
	if err := onlyFields(ts, path+".", "name", "typed_config"); err != nil {
		return err
	}
	tc := ts.GetTypedConfig()
	if tc == nil {
		return fmt.Errorf("%s.typed_config: required", path)
	}
	if !tc.MessageIs(m) {
		return fmt.Errorf("%s.typed_config: unsupported type %q, want %s", path, tc.GetTypeUrl(), m.ProtoReflect().Descriptor().FullName())
	}
	if err := tc.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s.typed_config: decode: %w", path, err)
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s.typed_config: %w", path, err)
		}
	}
	return nil
}

func convertDownstreamTLS(dt *tlsv3.DownstreamTlsContext, path string) (*config.DownstreamTLS, error) {
	if err := onlyFields(dt, path, "common_tls_context", "require_client_certificate"); err != nil {
		return nil, err
	}
	if !dt.GetRequireClientCertificate().GetValue() {
		return nil, fmt.Errorf("%srequire_client_certificate: must be true (mutual TLS only)", path)
	}
	ctx := dt.GetCommonTlsContext()
	cp := path + "common_tls_context."
	if err := onlyFields(ctx, cp, "tls_params", "alpn_protocols", "tls_certificate_sds_secret_configs", "validation_context_sds_secret_config"); err != nil {
		return nil, err
	}
	cert, alpn, err := convertCommonTLS(ctx, cp)
	if err != nil {
		return nil, err
	}
	ca, err := trustBundleRef(ctx.GetValidationContextSdsSecretConfig(), cp+"validation_context_sds_secret_config")
	if err != nil {
		return nil, err
	}
	return &config.DownstreamTLS{CertSecret: cert, CASecret: ca, ALPN: alpn}, nil
}

// convertCommonTLS checks what both sides share: TLS 1.3 and the
// workload's certificate from the local agent. Errors start with path.
func convertCommonTLS(ctx *tlsv3.CommonTlsContext, path string) (cert string, alpn []string, err error) {
	if ctx == nil {
		return "", nil, fmt.Errorf("%s: required", strings.TrimSuffix(path, "."))
	}
	tp := ctx.GetTlsParams()
	if err := onlyFields(tp, path+"tls_params.", "tls_minimum_protocol_version", "tls_maximum_protocol_version"); err != nil {
		return "", nil, err
	}
	if tp.GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 {
		return "", nil, fmt.Errorf("%stls_params.tls_minimum_protocol_version: must be TLSv1_3, got %s", path, tp.GetTlsMinimumProtocolVersion())
	}
	if v := tp.GetTlsMaximumProtocolVersion(); v != tlsv3.TlsParameters_TLSv1_3 && v != tlsv3.TlsParameters_TLS_AUTO {
		return "", nil, fmt.Errorf("%stls_params.tls_maximum_protocol_version: must be TLSv1_3, got %s", path, v)
	}
	certs := ctx.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 {
		return "", nil, fmt.Errorf("%stls_certificate_sds_secret_configs: want exactly 1, got %d", path, len(certs))
	}
	cp := path + "tls_certificate_sds_secret_configs[0]."
	if err := onlyFields(certs[0], cp, "name", "sds_config"); err != nil {
		return "", nil, err
	}
	if n := certs[0].GetName(); n != config.SecretIdentity {
		// Only the workload's own SVID exists on the proxy.
		return "", nil, fmt.Errorf("%sname: want %q, got %q", cp, config.SecretIdentity, n)
	}
	for i, p := range ctx.GetAlpnProtocols() {
		if p == "" {
			return "", nil, fmt.Errorf("%salpn_protocols[%d]: empty", path, i)
		}
	}
	return config.SecretIdentity, slices.Clone(ctx.GetAlpnProtocols()), nil
}

// trustBundleRef checks a reference to the trust bundle secret, which comes
// over ADS. Errors start with path.
func trustBundleRef(ref *tlsv3.SdsSecretConfig, path string) (string, error) {
	if ref == nil {
		return "", fmt.Errorf("%s: required", path)
	}
	if err := onlyFields(ref, path+".", "name", "sds_config"); err != nil {
		return "", err
	}
	if ref.GetName() != config.SecretTrustBundle {
		return "", fmt.Errorf("%s.name: want %q, got %q", path, config.SecretTrustBundle, ref.GetName())
	}
	if cs := ref.GetSdsConfig(); cs.GetAds() == nil {
		return "", fmt.Errorf("%s.sds_config: only ads is supported", path)
	}
	return config.SecretTrustBundle, nil
}

// convertClusterTLS converts a cluster's transport_socket_matches: a match
// {tlsMode: verge} with an UpstreamTlsContext, optionally followed by a
// match-all plaintext one. Errors start with a field path.
func convertClusterTLS(c *clusterv3.Cluster) (*config.UpstreamTLS, error) {
	if c.GetTransportSocket() != nil {
		return nil, errors.New("transport_socket: unsupported (use transport_socket_matches)")
	}
	if c.GetTransportSocketMatcher() != nil {
		return nil, errors.New("transport_socket_matcher: unsupported")
	}
	matches := c.GetTransportSocketMatches()
	if len(matches) == 0 {
		return nil, nil
	}
	if len(matches) > 2 {
		return nil, fmt.Errorf("transport_socket_matches: want at most 2, got %d", len(matches))
	}
	var out *config.UpstreamTLS
	for i, m := range matches {
		path := fmt.Sprintf("transport_socket_matches[%d]", i)
		if err := onlyFields(m, path+".", "name", "match", "transport_socket"); err != nil {
			return nil, err
		}
		fields := m.GetMatch().GetFields()
		switch {
		case i == 0 && len(fields) == 1 && fields[tlsModeKey].GetStringValue() == tlsModeVerge:
			ut := &tlsv3.UpstreamTlsContext{}
			if m.GetTransportSocket() == nil {
				return nil, fmt.Errorf("%s.transport_socket: required", path)
			}
			if err := unpackTransportSocket(m.GetTransportSocket(), ut, path+".transport_socket"); err != nil {
				return nil, err
			}
			var err error
			if out, err = convertUpstreamTLS(ut, path+".transport_socket.typed_config."); err != nil {
				return nil, err
			}
		case len(fields) == 0 && i == len(matches)-1:
			if ts := m.GetTransportSocket(); ts != nil {
				if err := unpackTransportSocket(ts, &rawbufferv3.RawBuffer{}, path+".transport_socket"); err != nil {
					return nil, err
				}
			}
		default:
			return nil, fmt.Errorf("%s.match: want {%s: %s} first and an empty match last", path, tlsModeKey, tlsModeVerge)
		}
	}
	return out, nil
}

func convertUpstreamTLS(ut *tlsv3.UpstreamTlsContext, path string) (*config.UpstreamTLS, error) {
	if err := onlyFields(ut, path, "common_tls_context", "sni"); err != nil {
		return nil, err
	}
	ctx := ut.GetCommonTlsContext()
	cp := path + "common_tls_context."
	if err := onlyFields(ctx, cp, "tls_params", "alpn_protocols", "tls_certificate_sds_secret_configs",
		"validation_context_sds_secret_config", "combined_validation_context"); err != nil {
		return nil, err
	}
	cert, alpn, err := convertCommonTLS(ctx, cp)
	if err != nil {
		return nil, err
	}
	out := &config.UpstreamTLS{CertSecret: cert, ALPN: alpn, SNI: ut.GetSni()}
	if ref := ctx.GetValidationContextSdsSecretConfig(); ref != nil {
		out.CASecret, err = trustBundleRef(ref, cp+"validation_context_sds_secret_config")
		return out, err
	}
	cvc := ctx.GetCombinedValidationContext()
	vp := cp + "combined_validation_context."
	if cvc == nil {
		return nil, fmt.Errorf("%scombined_validation_context: required (or validation_context_sds_secret_config)", cp)
	}
	if err := onlyFields(cvc, vp, "default_validation_context", "validation_context_sds_secret_config"); err != nil {
		return nil, err
	}
	if out.CASecret, err = trustBundleRef(cvc.GetValidationContextSdsSecretConfig(), vp+"validation_context_sds_secret_config"); err != nil {
		return nil, err
	}
	dv := cvc.GetDefaultValidationContext()
	dp := vp + "default_validation_context."
	if err := onlyFields(dv, dp, "match_typed_subject_alt_names"); err != nil {
		return nil, err
	}
	for i, san := range dv.GetMatchTypedSubjectAltNames() {
		sp := fmt.Sprintf("%smatch_typed_subject_alt_names[%d]", dp, i)
		if san.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			return nil, fmt.Errorf("%s.san_type: only URI is supported, got %s", sp, san.GetSanType())
		}
		if err := onlyFields(san, sp+".", "san_type", "matcher"); err != nil {
			return nil, err
		}
		exact, ok := san.GetMatcher().GetMatchPattern().(*matcherv3.StringMatcher_Exact)
		if !ok || san.GetMatcher().GetIgnoreCase() {
			return nil, fmt.Errorf("%s.matcher: only exact is supported", sp)
		}
		id, err := spiffeid.FromString(exact.Exact)
		if err != nil {
			return nil, fmt.Errorf("%s.matcher.exact: not a SPIFFE ID: %w", sp, err)
		}
		out.PeerIDs = append(out.PeerIDs, id.String())
	}
	return out, nil
}

// endpointTLS reports whether an endpoint's metadata selects the cluster's
// TLS transport socket match.
func endpointTLS(lb *endpointv3.LbEndpoint) bool {
	md := lb.GetMetadata().GetFilterMetadata()[transportSocketMatchKey]
	return md.GetFields()[tlsModeKey].GetStringValue() == tlsModeVerge
}

// withoutTLS returns eps with every TLS flag cleared (a copy when any was
// set): an endpoint asking for TLS in a cluster without a TLS match is
// plaintext, as in Envoy.
func withoutTLS(eps []config.Endpoint) []config.Endpoint {
	if !slices.ContainsFunc(eps, func(e config.Endpoint) bool { return e.TLS }) {
		return eps
	}
	out := slices.Clone(eps)
	for i := range out {
		out[i].TLS = false
	}
	return out
}

// convertSecret accepts the trust bundle: a validation_context whose
// trusted_ca is inline PEM of one or more certificates and whose optional
// crl is inline PEM of one or more CRLs, with only_verify_leaf_cert_crl
// (what the data path checks: the leaf's serial). The trust domain is read
// from the roots' SPIFFE ID URI SAN (Verge's CA puts it there); it is empty
// when no root carries one.
func convertSecret(s *tlsv3.Secret) (*config.Secret, error) {
	if s == nil {
		return nil, errors.New("secret: nil")
	}
	wrap := func(err error) error { return fmt.Errorf("secret %q: %w", s.GetName(), err) }
	if err := s.ValidateAll(); err != nil {
		return nil, wrap(err)
	}
	if s.GetName() != config.SecretTrustBundle {
		return nil, wrap(fmt.Errorf("name: only %q is supported", config.SecretTrustBundle))
	}
	vc := s.GetValidationContext()
	if vc == nil {
		return nil, wrap(errors.New("validation_context: required (only a trust bundle is accepted)"))
	}
	if err := onlyFields(vc, "validation_context.", "trusted_ca", "crl", "only_verify_leaf_cert_crl"); err != nil {
		return nil, wrap(err)
	}
	var data []byte
	switch src := vc.GetTrustedCa().GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		data = src.InlineBytes
	case *corev3.DataSource_InlineString:
		data = []byte(src.InlineString)
	default:
		return nil, wrap(errors.New("validation_context.trusted_ca: only inline_bytes and inline_string are supported"))
	}
	out := &config.Secret{Name: s.GetName()}
	for i := 0; ; i++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, wrap(fmt.Errorf("validation_context.trusted_ca: PEM block %d: type %q, want CERTIFICATE", i, b.Type))
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, wrap(fmt.Errorf("validation_context.trusted_ca: PEM block %d: %w", i, err))
		}
		for _, u := range cert.URIs {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				continue
			}
			td := id.TrustDomain().Name()
			if out.TrustDomain != "" && out.TrustDomain != td {
				return nil, wrap(fmt.Errorf("validation_context.trusted_ca: roots name trust domains %q and %q", out.TrustDomain, td))
			}
			out.TrustDomain = td
		}
		out.Roots = append(out.Roots, b.Bytes)
	}
	if len(strings.TrimSpace(string(data))) > 0 {
		return nil, wrap(errors.New("validation_context.trusted_ca: data after the last PEM block"))
	}
	if len(out.Roots) == 0 {
		return nil, wrap(errors.New("validation_context.trusted_ca: no certificate"))
	}
	if crl := vc.GetCrl(); crl != nil {
		if !vc.GetOnlyVerifyLeafCertCrl() {
			// Envoy would then also require a CRL of each intermediate's
			// issuer; the proxy checks leaves only, and must not pass for
			// stricter than it is.
			return nil, wrap(errors.New("validation_context.only_verify_leaf_cert_crl: must be true with a crl (only leaf certificates are checked)"))
		}
		revoked, err := convertCRL(crl)
		if err != nil {
			return nil, wrap(err)
		}
		out.Revoked = revoked
	}
	return out, nil
}

// convertCRL reads the serial numbers of a validation context's crl: inline
// PEM of one or more "X509 CRL" blocks. Nothing else about the lists is
// checked (issuer, signature, dates): they come over the authenticated ADS
// stream, as the roots they would be checked against do, and a stale list
// is still the control plane's latest word. Errors start with the field.
func convertCRL(src *corev3.DataSource) (map[string]struct{}, error) {
	var data []byte
	switch s := src.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		data = s.InlineBytes
	case *corev3.DataSource_InlineString:
		data = []byte(s.InlineString)
	default:
		return nil, errors.New("validation_context.crl: only inline_bytes and inline_string are supported")
	}
	revoked := map[string]struct{}{}
	n := 0
	for ; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("validation_context.crl: PEM block %d: type %q, want X509 CRL", n, b.Type)
		}
		list, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("validation_context.crl: PEM block %d: %w", n, err)
		}
		for _, e := range list.RevokedCertificateEntries {
			if e.SerialNumber == nil {
				continue
			}
			// The data path compares with the leaf's serial in the same
			// form (big.Int.Text(16)).
			revoked[e.SerialNumber.Text(16)] = struct{}{}
		}
	}
	if len(strings.TrimSpace(string(data))) > 0 {
		return nil, errors.New("validation_context.crl: data after the last PEM block")
	}
	if n == 0 {
		return nil, errors.New("validation_context.crl: no CRL")
	}
	return revoked, nil
}
