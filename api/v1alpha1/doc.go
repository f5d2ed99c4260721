// Package v1alpha1 owns Verge's resource kinds: their Go types, decoding from
// YAML or JSON, defaulting and validation. It also names the Gateway API kinds
// (HTTPRoute, GRPCRoute) Verge accepts, so that every caller finds the whole
// resource vocabulary in one place, and the mesh names services are reached
// by (MeshName, ParseMeshName), and reads the values whose syntax it defines
// for those that translate them (ParsePercent, GRPCStatusCode). Storing,
// printing and translating resources belong to other packages.
//
// Validation covers what the Gateway API's CRDs check (patterns and CEL
// rules, route filters included) because Verge also runs without a
// Kubernetes API server, plus Verge's own limits: DestinationPolicy and
// FaultInjection ranges and contradictions, Telemetry paths, rates and
// collector addresses, and what Envoy would refuse in the resources they
// become (docs/xds-traffic.md, docs/xds-telemetry.md).
//
// The package is pure: no I/O, no clock, no logging. Every input takes the same
// path: Decode (strict: unknown fields are errors) → Default (idempotent) →
// Validate (reports every bad field by its path) → store → use.
package v1alpha1
