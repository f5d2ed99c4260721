package xdsclient

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	// The golden files' listener filters name it; the client ignores
	// listener filters, so only protojson needs the type.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/internal/proxy/config"
)

// goldenDir holds the translator's golden output: what the control plane
// really sends. The client must accept every file of it.
const goldenDir = "../../xds/translate/testdata"

type goldenResources struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterv3.Cluster
	endpoints []*endpointv3.ClusterLoadAssignment
	secrets   []*tlsv3.Secret
}

func loadGolden(t *testing.T, path string) goldenResources {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env map[string][]json.RawMessage
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	var r goldenResources
	add := func(key string, newMsg func() proto.Message, keep func(proto.Message)) {
		for _, b := range env[key] {
			m := newMsg()
			if err := protojson.Unmarshal(b, m); err != nil {
				t.Fatalf("%s: %s: %v", path, key, err)
			}
			keep(m)
		}
	}
	add("listeners", func() proto.Message { return &listenerv3.Listener{} }, func(m proto.Message) { r.listeners = append(r.listeners, m.(*listenerv3.Listener)) })
	add("routes", func() proto.Message { return &routev3.RouteConfiguration{} }, func(m proto.Message) { r.routes = append(r.routes, m.(*routev3.RouteConfiguration)) })
	add("clusters", func() proto.Message { return &clusterv3.Cluster{} }, func(m proto.Message) { r.clusters = append(r.clusters, m.(*clusterv3.Cluster)) })
	add("endpoints", func() proto.Message { return &endpointv3.ClusterLoadAssignment{} }, func(m proto.Message) {
		r.endpoints = append(r.endpoints, m.(*endpointv3.ClusterLoadAssignment))
	})
	add("secrets", func() proto.Message { return &tlsv3.Secret{} }, func(m proto.Message) { r.secrets = append(r.secrets, m.(*tlsv3.Secret)) })
	return r
}

func buildGolden(t *testing.T, path string) *config.Snapshot {
	t.Helper()
	r := loadGolden(t, path)
	snap, err := Build(r.listeners, r.routes, r.clusters, r.endpoints, r.secrets)
	if err != nil {
		t.Fatalf("Build(%s): %v", path, err)
	}
	return snap
}

// TestBuildTranslatorGoldens builds every golden file of the translator, so
// the control plane never sends what the proxy refuses.
func TestBuildTranslatorGoldens(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found %d golden files, want at least 10", len(files))
	}
	for _, f := range files {
		// The authz case names a JWKS file of the host the proxy runs
		// on (/etc/verge/jwks.json), which the client opens; its own
		// tests cover it.
		if filepath.Base(filepath.Dir(f)) == "authz" {
			continue
		}
		t.Run(strings.TrimPrefix(f, goldenDir+"/"), func(t *testing.T) { buildGolden(t, f) })
	}
}

// TestBuildMutualTLS checks the conversion of the translator's mutual TLS
// output (testdata/mtls: STRICT for billing-1, PERMISSIVE for old-1).
func TestBuildMutualTLS(t *testing.T) {
	old := buildGolden(t, filepath.Join(goldenDir, "mtls", "old-1.json"))
	wantDown := func(mode config.TLSMode) *config.DownstreamTLS {
		return &config.DownstreamTLS{Mode: mode, CertSecret: config.SecretIdentity, CASecret: config.SecretTrustBundle, ALPN: []string{"h2"}}
	}
	var inbound *config.Listener
	for _, l := range old.Listeners {
		if l.Name == "inbound:8080" {
			inbound = l
		} else if l.TLS != nil {
			t.Errorf("outbound listener %s has TLS", l.Name)
		}
	}
	if inbound == nil {
		t.Fatal("old-1: no inbound:8080")
	}
	if diff := cmp.Diff(wantDown(config.TLSPermissive), inbound.TLS); diff != "" {
		t.Errorf("old-1 inbound TLS (-want +got):\n%s", diff)
	}
	if inbound.Kind != config.ListenerHTTP || inbound.RouteName != "inbound:8080" {
		t.Errorf("old-1 inbound: kind %v route %q", inbound.Kind, inbound.RouteName)
	}

	web := old.Clusters["web.default.mesh:80"]
	wantUp := &config.UpstreamTLS{
		CertSecret: config.SecretIdentity, CASecret: config.SecretTrustBundle,
		PeerIDs: []string{"spiffe://example.org/ns/default/sa/web"}, ALPN: []string{"h2"}, SNI: "web.default.mesh:80",
	}
	if diff := cmp.Diff(wantUp, web.TLS); diff != "" {
		t.Errorf("web cluster TLS (-want +got):\n%s", diff)
	}
	if web.Protocol != config.UpstreamHTTP1 {
		t.Errorf("web cluster protocol = %v, want HTTP/1 for plaintext endpoints", web.Protocol)
	}
	wantEps := []config.Endpoint{{Address: "10.2.0.1:15006", Weight: 1, TLS: true}, {Address: "10.2.0.2:8080", Weight: 1}}
	if diff := cmp.Diff(wantEps, web.Endpoints); diff != "" {
		t.Errorf("web endpoints (-want +got):\n%s", diff)
	}
	if db := old.Clusters["db.default.mesh:5432"]; db.TLS == nil || !cmp.Equal(db.TLS.ALPN, []string{"verge-tcp"}) {
		t.Errorf("db cluster TLS = %+v, want ALPN verge-tcp", db.TLS)
	}
	if in := old.Clusters["inbound:8080"]; in.TLS != nil {
		t.Errorf("inbound cluster has TLS")
	}
	sec := old.Secrets[config.SecretTrustBundle]
	if sec == nil || sec.TrustDomain != "example.org" || len(sec.Roots) != 1 {
		t.Errorf("secret = %+v, want trust domain example.org and 1 root", sec)
	}

	billing := buildGolden(t, filepath.Join(goldenDir, "mtls", "billing-1.json"))
	if diff := cmp.Diff(wantDown(config.TLSStrict), billing.Listeners[0].TLS); diff != "" {
		t.Errorf("billing-1 inbound TLS (-want +got):\n%s", diff)
	}
	db := buildGolden(t, filepath.Join(goldenDir, "mtls", "db-1.json"))
	if l := db.Listeners[0]; l.Kind != config.ListenerTCP || l.TLS == nil || !cmp.Equal(l.TLS.ALPN, []string{"verge-tcp"}) {
		t.Errorf("db-1 inbound = %+v, want TCP with ALPN verge-tcp", l)
	}
}

// TestRefuseTLSShapes checks that TLS settings outside the supported subset
// are refused with the field named.
func TestRefuseTLSShapes(t *testing.T) {
	g := loadGolden(t, filepath.Join(goldenDir, "mtls", "old-1.json"))
	var inbound *listenerv3.Listener
	for _, l := range g.listeners {
		if l.GetName() == "inbound:8080" {
			inbound = l
		}
	}
	var web *clusterv3.Cluster
	for _, c := range g.clusters {
		if c.GetName() == "web.default.mesh:80" {
			web = c
		}
	}
	downstream := func(l *listenerv3.Listener, edit func(*tlsv3.DownstreamTlsContext)) {
		ts := l.GetFilterChains()[0].GetTransportSocket()
		dt := &tlsv3.DownstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(dt); err != nil {
			t.Fatal(err)
		}
		edit(dt)
		ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(dt)}
	}
	upstream := func(c *clusterv3.Cluster, edit func(*tlsv3.UpstreamTlsContext)) {
		ts := c.GetTransportSocketMatches()[0].GetTransportSocket()
		ut := &tlsv3.UpstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(ut); err != nil {
			t.Fatal(err)
		}
		edit(ut)
		ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ut)}
	}
	listenerTests := []struct {
		name string
		edit func(l *listenerv3.Listener)
		want string
	}{
		{"client certificate optional", func(l *listenerv3.Listener) {
			downstream(l, func(dt *tlsv3.DownstreamTlsContext) { dt.RequireClientCertificate = wrapperspb.Bool(false) })
		}, "filter_chains[0].transport_socket.typed_config.require_client_certificate: must be true"},
		{"TLS 1.2", func(l *listenerv3.Listener) {
			downstream(l, func(dt *tlsv3.DownstreamTlsContext) {
				dt.CommonTlsContext.TlsParams.TlsMinimumProtocolVersion = tlsv3.TlsParameters_TLSv1_2
			})
		}, "common_tls_context.tls_params.tls_minimum_protocol_version: must be TLSv1_3, got TLSv1_2"},
		{"inline certificate", func(l *listenerv3.Listener) {
			downstream(l, func(dt *tlsv3.DownstreamTlsContext) {
				dt.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{}}
			})
		}, "common_tls_context.tls_certificates: unsupported"},
		{"other certificate secret", func(l *listenerv3.Listener) {
			downstream(l, func(dt *tlsv3.DownstreamTlsContext) {
				dt.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].Name = "spiffe"
			})
		}, `tls_certificate_sds_secret_configs[0].name: want "default", got "spiffe"`},
		{"trust bundle from elsewhere", func(l *listenerv3.Listener) {
			downstream(l, func(dt *tlsv3.DownstreamTlsContext) {
				dt.CommonTlsContext.GetValidationContextSdsSecretConfig().SdsConfig = &corev3.ConfigSource{
					ConfigSourceSpecifier: &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}},
				}
			})
		}, "validation_context_sds_secret_config.sds_config: only ads is supported"},
		{"permissive chains differ", func(l *listenerv3.Listener) {
			l.FilterChains[1].Filters = append(l.FilterChains[1].Filters, l.FilterChains[1].Filters[0])
		}, "filter_chains[1].filters: must equal filter_chains[0].filters"},
		{"sni match", func(l *listenerv3.Listener) {
			l.FilterChains[0].FilterChainMatch.ServerNames = []string{"x"}
		}, "filter_chains[0].filter_chain_match: only transport_protocol is supported"},
		{"two tls chains", func(l *listenerv3.Listener) {
			l.FilterChains[1] = proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain)
		}, `filter_chains[1].filter_chain_match.transport_protocol: want one "tls" chain and at most one "raw_buffer" chain, got "tls"`},
		{"tls chain without transport socket", func(l *listenerv3.Listener) {
			l.FilterChains[0].TransportSocket = nil
		}, `filter_chains[0].transport_socket: required on a "tls" chain`},
	}
	for _, tt := range listenerTests {
		t.Run(tt.name, func(t *testing.T) {
			l := proto.Clone(inbound).(*listenerv3.Listener)
			tt.edit(l)
			err := ValidateListener(l)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ValidateListener() = %v, want it to contain %q", err, tt.want)
			}
		})
	}

	clusterTests := []struct {
		name string
		edit func(c *clusterv3.Cluster)
		want string
	}{
		{"dns san", func(c *clusterv3.Cluster) {
			upstream(c, func(ut *tlsv3.UpstreamTlsContext) {
				ut.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames[0].SanType = tlsv3.SubjectAltNameMatcher_DNS
			})
		}, "match_typed_subject_alt_names[0].san_type: only URI is supported, got DNS"},
		{"prefix match", func(c *clusterv3.Cluster) {
			upstream(c, func(ut *tlsv3.UpstreamTlsContext) {
				ut.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames[0].GetMatcher().MatchPattern =
					&matcherv3.StringMatcher_Prefix{Prefix: "spiffe://"}
			})
		}, "match_typed_subject_alt_names[0].matcher: only exact is supported"},
		{"not a spiffe id", func(c *clusterv3.Cluster) {
			upstream(c, func(ut *tlsv3.UpstreamTlsContext) {
				ut.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames[0].GetMatcher().MatchPattern =
					&matcherv3.StringMatcher_Exact{Exact: "https://example.org/web"}
			})
		}, "match_typed_subject_alt_names[0].matcher.exact: not a SPIFFE ID"},
		{"skip verification", func(c *clusterv3.Cluster) {
			upstream(c, func(ut *tlsv3.UpstreamTlsContext) {
				ut.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.TrustChainVerification = tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED
			})
		}, "default_validation_context.trust_chain_verification: unsupported"},
		{"matches reversed", func(c *clusterv3.Cluster) {
			c.TransportSocketMatches[0], c.TransportSocketMatches[1] = c.TransportSocketMatches[1], c.TransportSocketMatches[0]
		}, "transport_socket_matches[0].match: want {tlsMode: verge} first and an empty match last"},
		{"other match key", func(c *clusterv3.Cluster) {
			c.TransportSocketMatches[0].Match.Fields["zone"] = structpb.NewStringValue("a")
		}, "transport_socket_matches[0].match"},
		{"cluster transport socket", func(c *clusterv3.Cluster) {
			c.TransportSocket = c.TransportSocketMatches[0].TransportSocket
		}, "transport_socket: unsupported (use transport_socket_matches)"},
	}
	for _, tt := range clusterTests {
		t.Run(tt.name, func(t *testing.T) {
			c := proto.Clone(web).(*clusterv3.Cluster)
			tt.edit(c)
			err := ValidateCluster(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `cluster "web.default.mesh:80"`) {
				t.Errorf("ValidateCluster() = %v, want it to contain %q", err, tt.want)
			}
		})
	}

	secretTests := []struct {
		name string
		s    *tlsv3.Secret
		want string
	}{
		{"certificate", &tlsv3.Secret{Name: config.SecretTrustBundle, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{}}},
			"validation_context: required"},
		{"other name", &tlsv3.Secret{Name: "x", Type: g.secrets[0].Type}, `secret "x": name: only "ROOTCA" is supported`},
		{"not pem", &tlsv3.Secret{Name: config.SecretTrustBundle, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "hello"}},
		}}}, "validation_context.trusted_ca: data after the last PEM block"},
		{"file", &tlsv3.Secret{Name: config.SecretTrustBundle, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/ca.pem"}},
		}}}, "validation_context.trusted_ca: only inline_bytes and inline_string are supported"},
		{"san matcher", &tlsv3.Secret{Name: config.SecretTrustBundle, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: g.secrets[0].GetValidationContext().GetTrustedCa(),
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://x/y"}},
			}},
		}}}, "validation_context.match_typed_subject_alt_names: unsupported"},
	}
	for _, tt := range secretTests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateSecret(tt.s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ValidateSecret() = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestClientTrustBundle runs the client against a real go-control-plane
// server sending the translator's mTLS resources: the secret is
// subscribed to, published and cached.
func TestClientTrustBundle(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	dir := t.TempDir()
	_, rec := startClient(t, cp.addr, dir, waitLimit)

	g := loadGolden(t, filepath.Join(goldenDir, "mtls", "old-1.json"))
	set := func(version string, secrets []types.Resource) {
		res := map[resourcev3.Type][]types.Resource{resourcev3.SecretType: secrets}
		for _, l := range g.listeners {
			res[resourcev3.ListenerType] = append(res[resourcev3.ListenerType], l)
		}
		for _, r := range g.routes {
			res[resourcev3.RouteType] = append(res[resourcev3.RouteType], r)
		}
		for _, c := range g.clusters {
			res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], c)
		}
		for _, e := range g.endpoints {
			res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], e)
		}
		snap, err := cache.NewSnapshot(version, res)
		if err != nil {
			t.Fatal(err)
		}
		if err := cp.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
			t.Fatal(err)
		}
	}
	set("1", []types.Resource{g.secrets[0]})
	got := rec.waitFor(t, "version 1 with the trust bundle", func(s *config.Snapshot) bool {
		return versionIs("1")(s) && s.Versions[TypeSecret] == "1"
	})
	if sec := got.Secrets[config.SecretTrustBundle]; sec == nil || sec.TrustDomain != "example.org" {
		t.Fatalf("published secret = %+v", sec)
	}
	cached, err := LoadCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, cached, regexpComparer); diff != "" {
		t.Errorf("LoadCache() mismatch (-want +got):\n%s", diff)
	}
}
