package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AuthorizationPolicy decides which requests and connections the proxies of
// some workloads accept. It is enforced at the destination's proxy, on its
// inbound listeners. The shape follows Istio's AuthorizationPolicy so that
// its users feel at home.
//
// Scope, from where the policy sits and what it names:
//
//   - in namespace verge-system without spec.service: every workload of the mesh;
//   - in any other namespace without spec.service: the workloads of that namespace;
//   - with spec.service: the workloads that Service (in the same namespace)
//     selects, on the application ports the Service targets.
//
// Evaluation, over every policy that applies to a listener: if any DENY
// policy matches, the request is refused; otherwise, if any ALLOW policy
// applies and none matches, it is refused; otherwise it is accepted. AUDIT
// policies never change the outcome; their matches are written to the audit
// log. A policy matches when one of its rules does; a rule matches when every
// part it sets does (one of its from entries, one of its to entries, all its
// headers and when conditions); a rule with nothing set matches everything,
// and a policy without rules matches nothing (so an ALLOW policy without
// rules refuses everything).
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AuthorizationPolicySpec `json:"spec"`
}

// AuthorizationPolicySpec is the desired state of an AuthorizationPolicy.
type AuthorizationPolicySpec struct {
	// Service, when set, names a Service in the policy's namespace and limits
	// the policy to the workloads it selects (see AuthorizationPolicy).
	Service string `json:"service,omitempty"`
	// Action is ALLOW, DENY or AUDIT; required.
	Action AuthorizationAction `json:"action"`
	// Rules are alternatives: the policy matches when any one does.
	Rules []AuthorizationRule `json:"rules,omitempty"`
	// JWT, when set, makes the proxy verify bearer tokens: a request without
	// a token passes on (rules decide), a request with a token that does not
	// verify against any provider is refused, and the claims of a verified
	// token feed the rules' when conditions.
	JWT *JWTAuthentication `json:"jwt,omitempty"`
}

// AuthorizationAction is what a matching policy does.
type AuthorizationAction string

const (
	AuthorizationAllow AuthorizationAction = "ALLOW"
	AuthorizationDeny  AuthorizationAction = "DENY"
	// AuthorizationAudit only records its matches in the audit log.
	AuthorizationAudit AuthorizationAction = "AUDIT"
)

// AuthorizationRule is one way a request can match its policy.
//
// Values below that take wildcards accept "*" alone (anything present), a
// "*" as the first character (suffix match) or as the last (prefix match),
// and nowhere else.
type AuthorizationRule struct {
	// Name appears in the audit log and metrics ("ns/policy/name"); a DNS
	// label, unique in the policy. Unnamed rules are called "rules[i]".
	Name string `json:"name,omitempty"`
	// From are alternative sources: one must match.
	From []AuthorizationSource `json:"from,omitempty"`
	// To are alternative operations: one must match.
	To []AuthorizationOperation `json:"to,omitempty"`
	// Headers must all match (HTTP only).
	Headers []HeaderCondition `json:"headers,omitempty"`
	// When conditions over verified JWT claims must all match (HTTP only).
	When []ClaimCondition `json:"when,omitempty"`
	// CEL is a boolean CEL expression over the source, destination and
	// request (variables in docs/resources.md and package celenv), at most
	// 4096 bytes, checked when the policy is written. It is evaluated only
	// when the rule's other parts matched; an evaluation error (say, a
	// missing header read with []) counts as no match, also in DENY
	// policies, as in Envoy.
	CEL string `json:"cel,omitempty"`
}

// AuthorizationSource describes the peer. Every field set must match; within
// a field one value must match; a Not field must match none of its values.
type AuthorizationSource struct {
	// Principals are SPIFFE IDs (spiffe://TRUST-DOMAIN/ns/NS/sa/SA), with
	// wildcards. "*" is any authenticated (mutual TLS) peer.
	Principals    []string `json:"principals,omitempty"`
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	// Namespaces are the peers' namespaces (from their SPIFFE ID); "*" is
	// any authenticated peer.
	Namespaces    []string `json:"namespaces,omitempty"`
	NotNamespaces []string `json:"notNamespaces,omitempty"`
	// ServiceAccounts are "NAMESPACE/SERVICEACCOUNT".
	ServiceAccounts    []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts []string `json:"notServiceAccounts,omitempty"`
}

// AuthorizationOperation describes what the request asks for. Every field
// set must match; within a field one value must match; a Not field must
// match none of its values. Paths, methods and hosts exist only for HTTP
// and gRPC (see docs/resources.md for what a TCP port does with them).
type AuthorizationOperation struct {
	// Ports are the workload's application ports (Workload spec.ports[].port).
	Ports    []int32 `json:"ports,omitempty"`
	NotPorts []int32 `json:"notPorts,omitempty"`
	// Paths are request paths without the query, with wildcards. A gRPC
	// method's path is "/package.Service/Method".
	Paths    []string `json:"paths,omitempty"`
	NotPaths []string `json:"notPaths,omitempty"`
	// Methods are HTTP methods, exact and case-sensitive (gRPC is POST).
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	// Hosts are the request's authority, with wildcards, case-insensitive.
	Hosts    []string `json:"hosts,omitempty"`
	NotHosts []string `json:"notHosts,omitempty"`
}

// HeaderCondition matches one request header (its first value) by name,
// case-insensitively. Values take wildcards; "*" means present. At least one
// of values and notValues is required.
type HeaderCondition struct {
	Name      string   `json:"name"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// ClaimCondition matches one top-level claim of the request's verified JWT.
// A string claim matches a value; a list claim matches when one of its
// string elements does. Values take wildcards. Without a verified token the
// condition does not match (and a notValues-only condition does not either).
type ClaimCondition struct {
	Claim     string   `json:"claim"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// JWTAuthentication lists the token issuers a policy trusts.
type JWTAuthentication struct {
	// Providers, at least one; issuers unique.
	Providers []JWTProvider `json:"providers"`
}

// JWTProvider is one token issuer and where its keys are.
type JWTProvider struct {
	// Issuer must equal the token's iss claim.
	Issuer string `json:"issuer"`
	// Audiences, when set, must include one of the token's aud values.
	Audiences []string `json:"audiences,omitempty"`
	// JWKSFile is an absolute path, on the proxy's host, of the issuer's
	// JSON Web Key Set, read when the proxy loads the policy. Exactly one of
	// jwksFile and jwksURI.
	JWKSFile string `json:"jwksFile,omitempty"`
	// JWKSURI is an http or https URL the proxy fetches the key set from and
	// refreshes every five minutes.
	JWKSURI string `json:"jwksURI,omitempty"`
	// FromHeader is where the token is; defaults to Authorization with the
	// prefix "Bearer ".
	FromHeader *JWTHeader `json:"fromHeader,omitempty"`
}

// JWTHeader names the header carrying a token and the prefix before it.
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
}

func defaultAuthorizationPolicy(a *AuthorizationPolicy) {
	if a.Spec.JWT == nil {
		return
	}
	for i := range a.Spec.JWT.Providers {
		if a.Spec.JWT.Providers[i].FromHeader == nil {
			a.Spec.JWT.Providers[i].FromHeader = &JWTHeader{Name: "Authorization", Prefix: "Bearer "}
		}
	}
}
