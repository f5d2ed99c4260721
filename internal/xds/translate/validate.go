package translate

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Validate checks r before it is offered to a client: every resource passes
// its proto's ValidateAll(), including the messages packed in Anys (which
// pgv itself does not open), and r is closed under references: each route
// configuration a listener names (in a filter chain or an api_listener),
// each cluster a route, TCP proxy or tracer names and each EDS resource a
// cluster names is present, each SDS secret a TLS context fetches over ADS is
// present, and no route configuration or EDS resource is unreferenced.
//
// It exists beside go-control-plane's Snapshot.Consistent() because that
// one does not follow api_listener, so it refuses every proxyless snapshot.
func (r Resources) Validate() error {
	var errs []error
	for _, m := range r.Listeners {
		errs = append(errs, validateDeep(m))
	}
	for _, m := range r.Routes {
		errs = append(errs, validateDeep(m))
	}
	for _, m := range r.Clusters {
		errs = append(errs, validateDeep(m))
	}
	for _, m := range r.Endpoints {
		errs = append(errs, validateDeep(m))
	}
	for _, m := range r.Secrets {
		errs = append(errs, validateDeep(m))
	}
	errs = append(errs, r.consistent())
	return errors.Join(errs...)
}

func (r Resources) consistent() error {
	wantRoutes, wantClusters, wantEDS := map[string]bool{}, map[string]bool{}, map[string]bool{}
	wantSecrets := map[string]bool{}
	for _, l := range r.Listeners {
		for _, fc := range l.GetFilterChains() {
			if err := adsSecrets(fc.GetTransportSocket(), wantSecrets); err != nil {
				return fmt.Errorf("listener %q: %w", l.GetName(), err)
			}
		}
		var configs []*anypb.Any
		if a := l.GetApiListener().GetApiListener(); a != nil {
			configs = append(configs, a)
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				configs = append(configs, f.GetTypedConfig())
			}
		}
		for _, a := range configs {
			m, err := a.UnmarshalNew()
			if err != nil {
				return fmt.Errorf("listener %q: unpack %s: %w", l.GetName(), a.GetTypeUrl(), err)
			}
			switch m := m.(type) {
			case *hcmv3.HttpConnectionManager:
				if n := m.GetRds().GetRouteConfigName(); n != "" {
					wantRoutes[n] = true
				}
				if n := tracingCluster(m); n != "" {
					wantClusters[n] = true
				}
			case *tcpv3.TcpProxy:
				if n := m.GetCluster(); n != "" {
					wantClusters[n] = true
				}
			}
		}
	}
	for _, rc := range r.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if n := rt.GetRoute().GetCluster(); n != "" {
					wantClusters[n] = true
				}
				for _, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
					wantClusters[wc.GetName()] = true
				}
				for _, mp := range rt.GetRoute().GetRequestMirrorPolicies() {
					wantClusters[mp.GetCluster()] = true
				}
			}
		}
	}
	for _, c := range r.Clusters {
		if err := adsSecrets(c.GetTransportSocket(), wantSecrets); err != nil {
			return fmt.Errorf("cluster %q: %w", c.GetName(), err)
		}
		for _, m := range c.GetTransportSocketMatches() {
			if err := adsSecrets(m.GetTransportSocket(), wantSecrets); err != nil {
				return fmt.Errorf("cluster %q: %w", c.GetName(), err)
			}
		}
		if c.GetType() == clusterv3.Cluster_EDS {
			wantEDS[cmp.Or(c.GetEdsClusterConfig().GetServiceName(), c.GetName())] = true
		}
	}

	var errs []error
	check := func(kind string, want map[string]bool, have []string, exact bool) {
		for _, h := range have {
			if exact && !want[h] {
				errs = append(errs, fmt.Errorf("%s %q is not referenced", kind, h))
			}
			delete(want, h)
		}
		missing := make([]string, 0, len(want))
		for n := range want {
			missing = append(missing, n)
		}
		slices.Sort(missing)
		for _, n := range missing {
			errs = append(errs, fmt.Errorf("%s %q is referenced but missing", kind, n))
		}
	}
	var routes, clusters, eds, secrets []string
	for _, m := range r.Secrets {
		secrets = append(secrets, m.GetName())
	}
	for _, m := range r.Routes {
		routes = append(routes, m.GetName())
	}
	for _, m := range r.Clusters {
		clusters = append(clusters, m.GetName())
	}
	for _, m := range r.Endpoints {
		eds = append(eds, m.GetClusterName())
	}
	check("route configuration", wantRoutes, routes, true)
	// Unreferenced clusters are allowed (CDS is a wildcard subscription).
	check("cluster", wantClusters, clusters, false)
	check("cluster load assignment", wantEDS, eds, true)
	// The trust bundle goes to every Verge proxy, TLS or not.
	check("secret", wantSecrets, secrets, false)
	return errors.Join(errs...)
}

type validator interface{ ValidateAll() error }

// validateDeep validates m (pgv validates its fields too) and then every
// message packed in an Any below it.
func validateDeep(m proto.Message) error {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("validate %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	return validateAnys(m)
}

func validateAnys(m proto.Message) error {
	if a, ok := m.(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
		}
		return validateDeep(inner)
	}
	var errs []error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			for i := range v.List().Len() {
				errs = append(errs, validateAnys(v.List().Get(i).Message().Interface()))
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					errs = append(errs, validateAnys(mv.Message().Interface()))
					return true
				})
			}
		default:
			errs = append(errs, validateAnys(v.Message().Interface()))
		}
		return true
	})
	return errors.Join(errs...)
}

// adsSecrets adds to want the names of the SDS secrets ts's TLS context
// fetches over ADS (the trust bundle); the local agent's are not sent.
func adsSecrets(ts *corev3.TransportSocket, want map[string]bool) error {
	a := ts.GetTypedConfig()
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
	}
	var ctx *tlsv3.CommonTlsContext
	switch m := m.(type) {
	case *tlsv3.DownstreamTlsContext:
		ctx = m.GetCommonTlsContext()
	case *tlsv3.UpstreamTlsContext:
		ctx = m.GetCommonTlsContext()
	default:
		return nil
	}
	refs := slices.Clone(ctx.GetTlsCertificateSdsSecretConfigs())
	refs = append(refs, ctx.GetValidationContextSdsSecretConfig(),
		ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig())
	for _, ref := range refs {
		if ref.GetSdsConfig().GetAds() != nil {
			want[ref.GetName()] = true
		}
	}
	return nil
}
