package xdsclient

import (
	"errors"
	"fmt"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"verge.dev/verge/internal/proxy/config"
)

// What the HTTP_PROXY listener (docs/xds-traffic.md) needs beyond ordinary
// HTTP listeners: CONNECT allowed on the connection manager, and routes
// that take CONNECT requests (connect_matcher) and terminate them
// (upgrade_configs with connect_config), tunnelling the bytes to a cluster.
//
// config has no CONNECT match of its own: a connect_matcher route becomes a
// route whose first header match is ":method" exactly "CONNECT", which is
// what it matches in Envoy too (a CONNECT request has no path, so no other
// route matches it). The proxy's CONNECT handler looks for that route.

const connectMethod = "CONNECT"

// connectMatch is the config form of a connect_matcher.
func connectMatch() config.RouteMatch {
	return config.RouteMatch{Headers: []config.HeaderMatch{{Name: ":method", Exact: connectMethod}}}
}

// isConnectMatch reports whether m came from a connect_matcher.
func isConnectMatch(m config.RouteMatch) bool {
	if len(m.Headers) == 0 {
		return false
	}
	h := m.Headers[0]
	return h.Name == ":method" && h.Exact == connectMethod && h.Regex == nil && !h.Present && !h.Invert
}

// checkHCMUpgrades accepts upgrade_configs that allow CONNECT and nothing
// else: the Verge proxy implements no other upgrade through the route table
// (h2c is always on and WebSocket passes as HTTP/1.1). Errors start with
// ".upgrade_configs" so that they read well after "typed_config".
func checkHCMUpgrades(hcm *hcmv3.HttpConnectionManager) error {
	for i, u := range hcm.GetUpgradeConfigs() {
		path := fmt.Sprintf(".upgrade_configs[%d].", i)
		if !strings.EqualFold(u.GetUpgradeType(), connectMethod) {
			return fmt.Errorf("%supgrade_type: unsupported upgrade %q (only CONNECT)", path, u.GetUpgradeType())
		}
		if len(u.GetFilters()) > 0 {
			return fmt.Errorf("%sfilters: unsupported", path)
		}
	}
	return nil
}

// checkRouteUpgrades accepts a RouteAction's upgrade_configs only on a
// connect_matcher route, and requires such a route to terminate CONNECT
// (one CONNECT entry with connect_config, without PROXY protocol or POST):
// the proxy never forwards a CONNECT request itself. Errors start with a
// field path relative to the action.
func checkRouteUpgrades(a *routev3.RouteAction, m config.RouteMatch) error {
	ups := a.GetUpgradeConfigs()
	if !isConnectMatch(m) {
		if len(ups) > 0 {
			return errors.New("upgrade_configs: unsupported outside a connect_matcher route")
		}
		return nil
	}
	if len(ups) != 1 {
		return errors.New("upgrade_configs: a connect_matcher route needs exactly one, CONNECT with connect_config")
	}
	u := ups[0]
	switch {
	case !strings.EqualFold(u.GetUpgradeType(), connectMethod):
		return fmt.Errorf("upgrade_configs[0].upgrade_type: unsupported upgrade %q (only CONNECT)", u.GetUpgradeType())
	case u.GetEnabled() != nil && !u.GetEnabled().GetValue():
		return errors.New("upgrade_configs[0].enabled: false is unsupported")
	case u.GetConnectConfig() == nil:
		return errors.New("upgrade_configs[0].connect_config: required (forwarding CONNECT upstream is unsupported)")
	case u.GetConnectConfig().GetProxyProtocolConfig() != nil:
		return errors.New("upgrade_configs[0].connect_config.proxy_protocol_config: unsupported")
	case u.GetConnectConfig().GetAllowPost():
		return errors.New("upgrade_configs[0].connect_config.allow_post: unsupported")
	}
	return nil
}
