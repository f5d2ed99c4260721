package translate

import (
	"cmp"
	"encoding/pem"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"verge.dev/verge/api/v1alpha1"
)

// Mutual TLS between Verge proxies (Mesh.MTLS), in Envoy's own terms so that
// an Envoy sidecar under an Istio-style agent reads the same resources:
//
//   - Inbound listeners of proxied workloads get a tls_inspector and a filter
//     chain matching transport_protocol "tls" whose DownstreamTlsContext
//     requires a client certificate (TLS 1.3 only, ALPN "h2" for HTTP-ish
//     ports and "verge-tcp" for TCP). PERMISSIVE adds a "raw_buffer" chain
//     with the same filters; STRICT has none, so plaintext matches no chain
//     and is closed.
//   - Service clusters get auto mTLS: endpoints of proxied workloads carry
//     the metadata envoy.transport_socket_match {tlsMode: verge}, which
//     selects the cluster's TLS transport socket match (peer SPIFFE IDs are
//     the service accounts of those workloads); other endpoints are
//     plaintext. HTTP/1.1 clusters then use HttpProtocolOptions auto_config,
//     so TLS endpoints speak h2 (ALPN) and plaintext ones HTTP/1.1.
//
// The workload's certificate (SecretIdentity) is served by the local agent
// over SDS (cluster SDSCluster, Istio style); the trust bundle
// (SecretTrustBundle) comes over ADS. The proxyless view never carries TLS:
// grpc-go refuses transport sockets unless its xDS security is turned on.

const (
	// DefaultTrustDomain is the trust domain when Mesh.TrustDomain is empty.
	DefaultTrustDomain = "verge.local"
	// SecretIdentity names the workload's own certificate and key, served by
	// the local agent.
	SecretIdentity = "default"
	// SecretTrustBundle names the trust bundle secret sent over ADS.
	SecretTrustBundle = "ROOTCA"
	// SDSCluster is the bootstrap cluster of the local SDS agent.
	SDSCluster = "sds-grpc"
	// ALPNHTTP is offered for HTTP, HTTP2 and GRPC ports: HTTP/1.1 from an
	// application is carried as HTTP/2 between proxies.
	ALPNHTTP = "h2"
	// ALPNTCP marks a mesh TCP connection.
	ALPNTCP = "verge-tcp"
	// TransportSocketMatchKey and TLSModeKey/TLSModeVerge are the endpoint
	// metadata that select the TLS transport socket match.
	TransportSocketMatchKey = "envoy.transport_socket_match"
	TLSModeKey              = "tlsMode"
	TLSModeVerge            = "verge"
	// Filter chain and transport socket match names.
	chainMTLS      = "mtls"
	chainPlaintext = "plaintext"
	matchPlaintext = "tlsMode-disabled"
	matchVerge     = "tlsMode-verge"
)

// SPIFFEID is the identity of service account sa in namespace ns.
func SPIFFEID(trustDomain, ns, sa string) string {
	return "spiffe://" + cmp.Or(trustDomain, DefaultTrustDomain) + "/ns/" + ns + "/sa/" + sa
}

// TrustBundleSecret is the SDS secret SecretTrustBundle: a validation
// context whose trusted_ca is the PEM of every root (DER, in the given
// order) and, when crlPEM is not empty, whose crl is crlPEM inline: the
// PEM "X509 CRL" block(s) of the certificates the control plane revoked.
// With a CRL, only_verify_leaf_cert_crl is set: the CA signs a CRL for the
// leaves it issues, none for the intermediates of an operator's chain. The
// xDS server adds it to every Verge proxy's resources.
func TrustBundleSecret(rootsDER [][]byte, crlPEM []byte) *tlsv3.Secret {
	var b strings.Builder
	for _, der := range rootsDER {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	vc := &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(b.String())}},
	}
	if len(crlPEM) > 0 {
		vc.Crl = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: crlPEM}}
		vc.OnlyVerifyLeafCertCrl = true
	}
	return &tlsv3.Secret{
		Name: SecretTrustBundle,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc},
	}
}

// tlsIndex is what NewIndex prepares for mutual TLS.
type tlsIndex struct {
	on          bool
	trustDomain string
	// modes are the MeshTLSes by scope.
	modes scoped[*v1alpha1.MeshTLS]
	// Shared messages.
	downstreamHTTP, downstreamTCP *corev3.TransportSocket
	autoOptions                   map[string]*anypb.Any
}

func newTLSIndex(m Mesh) tlsIndex {
	t := tlsIndex{
		on:          m.MTLS,
		trustDomain: cmp.Or(m.TrustDomain, DefaultTrustDomain),
	}
	if !t.on {
		return t
	}
	t.modes = newScoped(m.MeshTLSes, func(mt *v1alpha1.MeshTLS) string { return mt.Spec.Service })
	t.downstreamHTTP = downstreamTLS(ALPNHTTP)
	t.downstreamTCP = downstreamTLS(ALPNTCP)
	t.autoOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_AutoConfig{AutoConfig: &httpv3.HttpProtocolOptions_AutoHttpConfig{
			HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
		}},
	})}
	return t
}

// tlsMode is the mode of wl's inbound listeners: that of the MeshTLS
// applying to wl (scoped.resolve), else PERMISSIVE.
func (ix *Index) tlsMode(wl *v1alpha1.Workload, selecting []*serviceInfo) v1alpha1.MeshTLSMode {
	if mt, ok := ix.tls.modes.resolve(wl.Namespace, selecting); ok {
		return mt.Spec.Mode
	}
	return v1alpha1.MeshTLSPermissive
}

// secureInbound replaces l's single plaintext filter chain by the mTLS
// chain and, for PERMISSIVE, a plaintext chain with the same filters.
func (ix *Index) secureInbound(l *listenerv3.Listener, mode v1alpha1.MeshTLSMode, p v1alpha1.Protocol) {
	filters := l.FilterChains[0].Filters
	ts := ix.tls.downstreamTCP
	if p.IsHTTP() {
		ts = ix.tls.downstreamHTTP
	}
	l.ListenerFilters = []*listenerv3.ListenerFilter{{
		Name:       wellknown.TlsInspector,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})},
	}}
	l.FilterChains = []*listenerv3.FilterChain{{
		Name:             chainMTLS,
		FilterChainMatch: &listenerv3.FilterChainMatch{TransportProtocol: "tls"},
		TransportSocket:  ts,
		Filters:          filters,
	}}
	if mode != v1alpha1.MeshTLSStrict {
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{
			Name:             chainPlaintext,
			FilterChainMatch: &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer"},
			Filters:          filters,
		})
	}
}

// meshCluster returns the cluster Verge proxies get for a service port:
// plain when none of its endpoints has a proxy in front (or MTLS is off),
// else a copy of plain with auto mTLS towards peerIDs.
func (ix *Index) meshCluster(plain *clusterv3.Cluster, p v1alpha1.Protocol, peerIDs []string) *clusterv3.Cluster {
	if !ix.tls.on || len(peerIDs) == 0 {
		return plain
	}
	c := proto.Clone(plain).(*clusterv3.Cluster)
	alpn := ALPNTCP
	if p.IsHTTP() {
		alpn = ALPNHTTP
	}
	c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{
		{
			Name: matchVerge,
			Match: &structpb.Struct{Fields: map[string]*structpb.Value{
				TLSModeKey: structpb.NewStringValue(TLSModeVerge),
			}},
			TransportSocket: upstreamTLS(plain.Name, alpn, peerIDs),
		},
		{
			Name: matchPlaintext,
			TransportSocket: &corev3.TransportSocket{
				Name:       wellknown.TransportSocketRawBuffer,
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbufferv3.RawBuffer{})},
			},
		},
	}
	if p == v1alpha1.ProtocolHTTP {
		c.TypedExtensionProtocolOptions = ix.tls.autoOptions
	}
	return c
}

// peerIDs lists the SPIFFE IDs of the proxied workloads serving targetPort
// (those whose endpoints are TLS), sorted and unique.
func (ix *Index) peerIDs(wls []*v1alpha1.Workload, targetPort int32) []string {
	if !ix.tls.on {
		return nil
	}
	var ids []string
	for _, w := range wls {
		if tlsEndpoint(w, targetPort) {
			ids = append(ids, SPIFFEID(ix.tls.trustDomain, w.Namespace, w.Spec.ServiceAccount))
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// tlsEndpoint reports whether w's endpoint for targetPort is its proxy's
// inbound listener, which speaks mutual TLS.
func tlsEndpoint(w *v1alpha1.Workload, targetPort int32) bool {
	if w.Spec.Proxy == nil {
		return false
	}
	for _, wp := range w.Spec.Ports {
		if wp.Port == targetPort {
			return wp.InboundPort > 0
		}
	}
	return false
}

// tlsEndpointMetadata selects the TLS transport socket match.
func tlsEndpointMetadata() *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		TransportSocketMatchKey: {Fields: map[string]*structpb.Value{TLSModeKey: structpb.NewStringValue(TLSModeVerge)}},
	}}
}

// commonTLS is what both sides share: TLS 1.3 only, the ALPN protocol, the
// workload's certificate from the local agent and the given validation.
func commonTLS(alpn string) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		AlpnProtocols: []string{alpn},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
			Name:      SecretIdentity,
			SdsConfig: sdsAgent(),
		}},
	}
}

func trustBundleRef() *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: SecretTrustBundle, SdsConfig: ads()}
}

// sdsAgent is the config source of the workload's certificate: the local
// agent's SDS server, reached through the bootstrap cluster SDSCluster.
func sdsAgent() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{
				TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: SDSCluster}},
			}},
		}},
	}
}

// downstreamTLS is an inbound listener's transport socket: any certificate
// chaining to the trust bundle is accepted (authorization policy decides
// which identities may call).
func downstreamTLS(alpn string) *corev3.TransportSocket {
	ctx := commonTLS(alpn)
	ctx.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
		ValidationContextSdsSecretConfig: trustBundleRef(),
	}
	return &corev3.TransportSocket{
		Name: wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         ctx,
			RequireClientCertificate: wrapperspb.Bool(true),
		})},
	}
}

// upstreamTLS is a cluster's TLS transport socket: the peer must chain to
// the trust bundle and carry one of peerIDs as URI SAN.
func upstreamTLS(sni, alpn string, peerIDs []string) *corev3.TransportSocket {
	ctx := commonTLS(alpn)
	sans := make([]*tlsv3.SubjectAltNameMatcher, len(peerIDs))
	for i, id := range peerIDs {
		sans[i] = &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}},
		}
	}
	ctx.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: trustBundleRef(),
		},
	}
	return &corev3.TransportSocket{
		Name: wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: ctx,
			Sni:              sni,
		})},
	}
}
