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
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"verge.dev/verge/internal/proxy/config"
)

// typeResourceWrapper is the SotW wrapper a server uses for TTLs.
const typeResourceWrapper = "type.googleapis.com/envoy.service.discovery.v3.Resource"

// resource is one accepted xDS resource in the form the proxy uses. It is
// never modified once converted, so Snapshots built from it may share its
// parts.
//
// The decoded proto is not kept: Envoy's messages cost several times their
// wire size in memory, and the converted form is all that assembling a
// Snapshot needs. raw stays for the on-disk cache, which must hold what the
// control plane sent.
type resource struct {
	name string
	// raw is the resource's encoding as received, kept for the on-disk
	// cache; the type URL is the response's, so it is not kept per resource.
	raw []byte
	// Exactly the fields of the resource's type are set: a Listener's
	// listener (nil for one that is not a socket, such as an api_listener)
	// and inline route table in route; a RouteConfiguration's table in
	// route; a Cluster's cluster (Endpoints set only for STATIC); a
	// ClusterLoadAssignment's endpoints; a Secret's secret.
	listener  *config.Listener
	route     *config.RouteTable
	cluster   *config.Cluster
	endpoints []config.Endpoint
	secret    *config.Secret
	// dependency is the RDS name a listener or the EDS name a cluster
	// waits for; empty when it waits for nothing.
	dependency string
}

// decodeResources unmarshals, validates and converts the resources of one
// response. When only is non-nil, resources whose name is not in it are
// dropped before validation (a server may send more than was asked for).
// Every problem is reported, joined.
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
		name, msg, err := decodeResource(typeURL, a)
		if err != nil {
			errs = append(errs, fmt.Errorf("resources[%d]: %w", i, err))
			continue
		}
		if only != nil && !only[name] {
			continue
		}
		r, err := convertResource(msg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := out[name]; dup {
			errs = append(errs, fmt.Errorf("resources[%d]: duplicate resource name %q", i, name))
			continue
		}
		r.raw = a.GetValue()
		out[name] = r
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// decodeResource unmarshals a into the message of typeURL and returns the
// resource's name with it.
func decodeResource(typeURL string, a *anypb.Any) (string, proto.Message, error) {
	switch typeURL {
	case TypeListener:
		m := &listenerv3.Listener{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode listener: %w", err)
		}
		return m.GetName(), m, nil
	case TypeRoute:
		m := &routev3.RouteConfiguration{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode route configuration: %w", err)
		}
		return m.GetName(), m, nil
	case TypeCluster:
		m := &clusterv3.Cluster{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode cluster: %w", err)
		}
		return m.GetName(), m, nil
	case TypeEndpoint:
		m := &endpointv3.ClusterLoadAssignment{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode cluster load assignment: %w", err)
		}
		return m.GetClusterName(), m, nil
	case TypeSecret:
		m := &tlsv3.Secret{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode secret: %w", err)
		}
		return m.GetName(), m, nil
	default:
		return "", nil, fmt.Errorf("unsupported type %q", typeURL)
	}
}

// convertResource validates m and converts it to a resource without raw,
// recording what it waits for.
func convertResource(m proto.Message) (*resource, error) {
	r := &resource{}
	var err error
	switch m := m.(type) {
	case *listenerv3.Listener:
		r.name = m.GetName()
		r.listener, r.route, err = convertListener(m)
		if l := r.listener; l != nil && r.route == nil && l.Kind == config.ListenerHTTP {
			r.dependency = l.RouteName
		}
	case *routev3.RouteConfiguration:
		r.name = m.GetName()
		r.route, err = convertRouteConfiguration(m)
	case *clusterv3.Cluster:
		r.name = m.GetName()
		r.cluster, r.dependency, err = convertCluster(m)
	case *endpointv3.ClusterLoadAssignment:
		r.name = m.GetClusterName()
		r.endpoints, err = convertClusterLoadAssignment(m)
	case *tlsv3.Secret:
		r.name = m.GetName()
		r.secret, err = convertSecret(m)
	default:
		err = fmt.Errorf("unsupported message %T", m)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

func sortedResources(m map[string]*resource) []*resource {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *resource) int { return strings.Compare(a.name, b.name) })
	return out
}
