package xdsclient

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"verge.dev/verge/internal/proxy/config"
)

// typeResourceWrapper is the SotW wrapper a server uses for TTLs.
const typeResourceWrapper = "type.googleapis.com/envoy.service.discovery.v3.Resource"

// resource is one accepted xDS resource. It is never modified once decoded.
type resource struct {
	name string
	// raw is the resource as received, kept for the on-disk cache.
	raw *anypb.Any
	msg proto.Message
	// dependency is the RDS name a listener or the EDS name a cluster
	// waits for; empty when it waits for nothing.
	dependency string
}

// decodeResources unmarshals and validates the resources of one response.
// When only is non-nil, resources whose name is not in it are dropped
// before validation (a server may send more than was asked for). Every
// problem is reported, joined.
func decodeResources(typeURL string, anys []*anypb.Any, only map[string]bool) (map[string]*resource, error) {
	out := make(map[string]*resource, len(anys))
	var errs []error
	for i, a := range anys {
		if a.GetTypeUrl() == typeResourceWrapper {
			w := &discoveryv3.Resource{}
			if err := a.UnmarshalTo(w); err != nil {
				errs = append(errs, fmt.Errorf("resources[%d]: decode Resource wrapper: %w", i, err))
				continue
			}
			if w.GetResource() == nil {
				errs = append(errs, fmt.Errorf("resources[%d]: Resource wrapper without resource (TTL heartbeat) is unsupported", i))
				continue
			}
			a = w.GetResource()
		}
		if a.GetTypeUrl() != typeURL {
			errs = append(errs, fmt.Errorf("resources[%d]: type %q in a %q response", i, a.GetTypeUrl(), typeURL))
			continue
		}
		r, err := decodeResource(typeURL, a)
		if err != nil {
			errs = append(errs, fmt.Errorf("resources[%d]: %w", i, err))
			continue
		}
		if only != nil && !only[r.name] {
			continue
		}
		if err := validateResource(r.msg); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := out[r.name]; dup {
			errs = append(errs, fmt.Errorf("resources[%d]: duplicate resource name %q", i, r.name))
			continue
		}
		r.setDependency()
		out[r.name] = r
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func decodeResource(typeURL string, a *anypb.Any) (*resource, error) {
	r := &resource{raw: a}
	switch typeURL {
	case TypeListener:
		m := &listenerv3.Listener{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return nil, fmt.Errorf("decode listener: %w", err)
		}
		r.msg, r.name = m, m.GetName()
	case TypeRoute:
		m := &routev3.RouteConfiguration{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return nil, fmt.Errorf("decode route configuration: %w", err)
		}
		r.msg, r.name = m, m.GetName()
	case TypeCluster:
		m := &clusterv3.Cluster{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return nil, fmt.Errorf("decode cluster: %w", err)
		}
		r.msg, r.name = m, m.GetName()
	case TypeEndpoint:
		m := &endpointv3.ClusterLoadAssignment{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return nil, fmt.Errorf("decode cluster load assignment: %w", err)
		}
		r.msg, r.name = m, m.GetClusterName()
	default:
		return nil, fmt.Errorf("unsupported type %q", typeURL)
	}
	return r, nil
}

// validateResource runs the validator of m's type.
func validateResource(m proto.Message) error {
	switch m := m.(type) {
	case *listenerv3.Listener:
		return ValidateListener(m)
	case *routev3.RouteConfiguration:
		return ValidateRouteConfiguration(m)
	case *clusterv3.Cluster:
		return ValidateCluster(m)
	case *endpointv3.ClusterLoadAssignment:
		return ValidateClusterLoadAssignment(m)
	}
	return fmt.Errorf("unsupported message %T", m)
}

// setDependency records what a valid resource waits for.
func (r *resource) setDependency() {
	switch m := r.msg.(type) {
	case *listenerv3.Listener:
		r.dependency = listenerRouteName(m)
	case *clusterv3.Cluster:
		r.dependency = clusterEDSName(m)
	}
}

func sortedResources(m map[string]*resource) []*resource {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *resource) int { return strings.Compare(a.name, b.name) })
	return out
}

// buildFrom runs Build on decoded resources grouped by type URL.
func buildFrom(raw map[string][]*resource) (*config.Snapshot, error) {
	var (
		ls  []*listenerv3.Listener
		rs  []*routev3.RouteConfiguration
		cs  []*clusterv3.Cluster
		eps []*endpointv3.ClusterLoadAssignment
	)
	for _, r := range raw[TypeListener] {
		ls = append(ls, r.msg.(*listenerv3.Listener))
	}
	for _, r := range raw[TypeRoute] {
		rs = append(rs, r.msg.(*routev3.RouteConfiguration))
	}
	for _, r := range raw[TypeCluster] {
		cs = append(cs, r.msg.(*clusterv3.Cluster))
	}
	for _, r := range raw[TypeEndpoint] {
		eps = append(eps, r.msg.(*endpointv3.ClusterLoadAssignment))
	}
	return Build(ls, rs, cs, eps)
}
