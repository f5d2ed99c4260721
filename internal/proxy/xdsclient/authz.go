package xdsclient

import (
	"errors"
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"verge.dev/verge/internal/proxy/authz"
)

// Authorization filters: an inbound HTTP listener may carry one jwt_authn
// filter and any RBAC filters before the router, a TCP listener network
// RBAC filters before tcp_proxy. The subset inside them is package authz's
// (see authz.Builder); anything else is NACKed with its field.

// isAuthzHTTPFilter reports whether hf is an authorization HTTP filter (JWT
// authentication or RBAC) that compileAuthz understands.
func isAuthzHTTPFilter(hf *hcmv3.HttpFilter) bool {
	tc := hf.GetTypedConfig()
	return tc != nil && (tc.MessageIs(&rbachttpv3.RBAC{}) || tc.MessageIs(&jwtv3.JwtAuthentication{}))
}

// isAuthzNetworkFilter reports whether f is a network RBAC filter.
func isAuthzNetworkFilter(f *listenerv3.Filter) bool {
	tc := f.GetTypedConfig()
	return tc != nil && tc.MessageIs(&rbacnetv3.RBAC{})
}

// compileAuthz compiles a listener's authorization filters, in order, into
// its engine; nil when there are none. Errors start with a field path
// relative to the filter list given.
func compileAuthz(httpFilters []*hcmv3.HttpFilter, networkFilters []*listenerv3.Filter) (*authz.Engine, error) {
	if len(httpFilters) > 0 && len(networkFilters) > 0 {
		return nil, errors.New(": HTTP and network authorization filters on one listener")
	}
	b := authz.NewBuilder(len(httpFilters) > 0)
	for i, hf := range httpFilters {
		if err := addHTTPFilter(b, hf); err != nil {
			return nil, fmt.Errorf("[%d].typed_config%w", i, err)
		}
	}
	for i, f := range networkFilters {
		if err := addNetworkFilter(b, f); err != nil {
			return nil, fmt.Errorf("[%d].typed_config%w", i, err)
		}
	}
	return b.Engine(), nil
}

func addHTTPFilter(b *authz.Builder, hf *hcmv3.HttpFilter) error {
	tc := hf.GetTypedConfig()
	if tc.MessageIs(&jwtv3.JwtAuthentication{}) {
		cfg := &jwtv3.JwtAuthentication{}
		if err := tc.UnmarshalTo(cfg); err != nil {
			return fmt.Errorf(": decode: %w", err)
		}
		if err := cfg.ValidateAll(); err != nil {
			return fmt.Errorf(": %w", err)
		}
		return b.AddJWT(cfg)
	}
	cfg := &rbachttpv3.RBAC{}
	if err := tc.UnmarshalTo(cfg); err != nil {
		return fmt.Errorf(": decode: %w", err)
	}
	if err := cfg.ValidateAll(); err != nil {
		return fmt.Errorf(": %w", err)
	}
	switch {
	case cfg.GetShadowRules() != nil:
		return errors.New(".shadow_rules: unsupported (use action LOG)")
	case cfg.GetMatcher() != nil || cfg.GetShadowMatcher() != nil:
		return errors.New(".matcher: unsupported (use rules)")
	case cfg.GetRules() == nil:
		return errors.New(".rules: required")
	}
	if err := b.AddRBAC(cfg.GetRules()); err != nil {
		return fmt.Errorf(".rules%w", err)
	}
	return nil
}

func addNetworkFilter(b *authz.Builder, f *listenerv3.Filter) error {
	cfg := &rbacnetv3.RBAC{}
	if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		return fmt.Errorf(": decode: %w", err)
	}
	if err := cfg.ValidateAll(); err != nil {
		return fmt.Errorf(": %w", err)
	}
	switch {
	case cfg.GetShadowRules() != nil:
		return errors.New(".shadow_rules: unsupported (use action LOG)")
	case cfg.GetMatcher() != nil || cfg.GetShadowMatcher() != nil:
		return errors.New(".matcher: unsupported (use rules)")
	case cfg.GetEnforcementType() != rbacnetv3.RBAC_ONE_TIME_ON_FIRST_BYTE:
		return errors.New(".enforcement_type: only ONE_TIME_ON_FIRST_BYTE is supported")
	case cfg.GetDelayDeny() != nil:
		return errors.New(".delay_deny: unsupported")
	case cfg.GetRules() == nil:
		return errors.New(".rules: required")
	}
	if err := b.AddRBAC(cfg.GetRules()); err != nil {
		return fmt.Errorf(".rules%w", err)
	}
	return nil
}
