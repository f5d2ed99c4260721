package xdsclient

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"verge.dev/verge/internal/proxy/authz"
)

// CONTRACT STUB (authorization filters): how listener conversion recognises
// and compiles the authorization filters the translator places before the
// terminal filter. Bodies are being written.

// isAuthzHTTPFilter reports whether hf is an authorization HTTP filter (JWT
// authentication or RBAC) that compileAuthz understands.
func isAuthzHTTPFilter(hf *hcmv3.HttpFilter) bool { return false }

// isAuthzNetworkFilter reports whether f is a network RBAC filter.
func isAuthzNetworkFilter(f *listenerv3.Filter) bool { return false }

// compileAuthz compiles a listener's authorization filters, in order, into
// its engine; nil when there are none. Errors start with a field path
// relative to the filter list given.
func compileAuthz(httpFilters []*hcmv3.HttpFilter, networkFilters []*listenerv3.Filter) (*authz.Engine, error) {
	return nil, nil
}
