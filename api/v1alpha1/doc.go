// Package v1alpha1 owns Verge's resource kinds: their Go types, decoding from
// YAML or JSON, defaulting and validation. It also names the Gateway API kinds
// (HTTPRoute, GRPCRoute) Verge accepts, so that every caller finds the whole
// resource vocabulary in one place, and the mesh names services are reached
// by (MeshName, ParseMeshName). Storing, printing and translating resources
// belong to other packages.
//
// The package is pure: no I/O, no clock, no logging. Every input takes the same
// path: Decode (strict: unknown fields are errors) → Default (idempotent) →
// Validate (reports every bad field by its path) → store → use.
package v1alpha1
