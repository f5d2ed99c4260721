package v1alpha1

import "strings"

// Kind describes one resource kind the API serves and the store keeps.
type Kind struct {
	Group   string
	Version string
	Kind    string
	// Plural is the lower-case name in API paths and the CLI (`verge get services`).
	Plural string
	// Short are the CLI's aliases (`svc`).
	Short []string
	// New returns an empty object of the kind with its TypeMeta set.
	New func() Object
}

// APIVersion is Group/Version.
func (k Kind) APIVersion() string { return k.Group + "/" + k.Version }

// Kinds is every kind Verge serves, in the order `verge get all` lists them.
var Kinds = []Kind{
	{Group: Group, Version: Version, Kind: "Service", Plural: "services", Short: []string{"svc"},
		New: func() Object { o := &Service{}; o.APIVersion, o.Kind = Group+"/"+Version, "Service"; return o }},
	{Group: Group, Version: Version, Kind: "Workload", Plural: "workloads", Short: []string{"wl"},
		New: func() Object { o := &Workload{}; o.APIVersion, o.Kind = Group+"/"+Version, "Workload"; return o }},
	{Group: GatewayGroup, Version: GatewayVersion, Kind: "HTTPRoute", Plural: "httproutes", Short: []string{"hr"},
		New: func() Object {
			o := &HTTPRoute{}
			o.APIVersion, o.Kind = GatewayGroup+"/"+GatewayVersion, "HTTPRoute"
			return o
		}},
	{Group: GatewayGroup, Version: GatewayVersion, Kind: "GRPCRoute", Plural: "grpcroutes", Short: []string{"gr"},
		New: func() Object {
			o := &GRPCRoute{}
			o.APIVersion, o.Kind = GatewayGroup+"/"+GatewayVersion, "GRPCRoute"
			return o
		}},
	{Group: Group, Version: Version, Kind: "DestinationPolicy", Plural: "destinationpolicies", Short: []string{"dp"},
		New: func() Object {
			o := &DestinationPolicy{}
			o.APIVersion, o.Kind = Group+"/"+Version, "DestinationPolicy"
			return o
		}},
	{Group: Group, Version: Version, Kind: "FaultInjection", Plural: "faultinjections", Short: []string{"fi"},
		New: func() Object {
			o := &FaultInjection{}
			o.APIVersion, o.Kind = Group+"/"+Version, "FaultInjection"
			return o
		}},
	{Group: Group, Version: Version, Kind: "MeshTLS", Plural: "meshtlses", Short: []string{"mtls"},
		New: func() Object { o := &MeshTLS{}; o.APIVersion, o.Kind = Group+"/"+Version, "MeshTLS"; return o }},
	{Group: Group, Version: Version, Kind: "AuthorizationPolicy", Plural: "authorizationpolicies", Short: []string{"ap"},
		New: func() Object {
			o := &AuthorizationPolicy{}
			o.APIVersion, o.Kind = Group+"/"+Version, "AuthorizationPolicy"
			return o
		}},
	{Group: Group, Version: Version, Kind: "Telemetry", Plural: "telemetries", Short: []string{"tel"},
		New: func() Object { o := &Telemetry{}; o.APIVersion, o.Kind = Group+"/"+Version, "Telemetry"; return o }},
}

// KindByName finds a kind by its Kind, plural or short name (case-insensitive
// on the plural and short names, as the CLI accepts them).
func KindByName(name string) (Kind, bool) {
	for _, k := range Kinds {
		if name == k.Kind || strings.EqualFold(name, k.Plural) || strings.EqualFold(name, k.Kind) {
			return k, true
		}
		for _, s := range k.Short {
			if strings.EqualFold(name, s) {
				return k, true
			}
		}
	}
	return Kind{}, false
}

// KindFor finds a kind by apiVersion and kind, as a decoded document names it.
func KindFor(apiVersion, kind string) (Kind, bool) {
	for _, k := range Kinds {
		if k.APIVersion() == apiVersion && k.Kind == kind {
			return k, true
		}
	}
	return Kind{}, false
}
