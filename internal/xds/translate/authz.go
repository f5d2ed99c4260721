package translate

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"verge.dev/verge/api/v1alpha1"
)

// CONTRACT STUB (AuthorizationPolicy): the hooks the inbound listener
// builder calls. Bodies are being written.

// authzHTTPFilters returns the HTTP filters (JWT authentication, RBAC) that go
// before the router on wl's inbound listener for appPort, nil when no policy
// applies to it.
func (ix *Index) authzHTTPFilters(wl *v1alpha1.Workload, appPort int32) []*hcmv3.HttpFilter {
	return nil
}

// authzNetworkFilters returns the network filters (RBAC) that go before
// tcp_proxy on wl's TCP inbound listener for appPort, nil when no policy
// applies to it.
func (ix *Index) authzNetworkFilters(wl *v1alpha1.Workload, appPort int32) []*listenerv3.Filter {
	return nil
}
