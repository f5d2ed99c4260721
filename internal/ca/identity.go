package ca

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrNotWorkloadID is wrapped by ParseWorkloadID for an ID that is not of the
// form spiffe://<td>/ns/<namespace>/sa/<service-account>.
var ErrNotWorkloadID = errors.New("ca: not a workload identity")

// WorkloadID returns spiffe://<td>/ns/<ns>/sa/<sa>. The namespace must be a
// DNS-1123 label and the service account a DNS-1123 subdomain, as in
// Kubernetes, so the same names work in both modes.
func WorkloadID(td spiffeid.TrustDomain, ns, sa string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("workload id: %w: trust domain is empty", ErrNotWorkloadID)
	}
	if err := checkNames(ns, sa); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: %w", err)
	}
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload id: %w: %w", ErrNotWorkloadID, err)
	}
	return id, nil
}

// SVIDFor returns the identity a redeemed join token entitles its bearer to:
// spiffe://<tok.TrustDomain>/ns/<tok.Namespace>/sa/<tok.ServiceAccount>. It
// fails only for a token not made by Tokens.Create (bad names or trust domain).
func SVIDFor(tok Token) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(tok.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("svid for token %s: %w: trust domain %q: %w", tok.ID, ErrNotWorkloadID, tok.TrustDomain, err)
	}
	id, err := WorkloadID(td, tok.Namespace, tok.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("svid for token %s: %w", tok.ID, err)
	}
	return id, nil
}

// ParseWorkloadID returns the namespace and service account of an ID of the
// form spiffe://<td>/ns/<ns>/sa/<sa>, and an error wrapping ErrNotWorkloadID
// for any other path.
func ParseWorkloadID(id spiffeid.ID) (ns, sa string, err error) {
	seg := strings.Split(id.Path(), "/")
	if len(seg) != 5 || seg[0] != "" || seg[1] != "ns" || seg[3] != "sa" {
		return "", "", fmt.Errorf("parse workload id %q: %w: want path /ns/<namespace>/sa/<service-account>", id.String(), ErrNotWorkloadID)
	}
	if err := checkNames(seg[2], seg[4]); err != nil {
		return "", "", fmt.Errorf("parse workload id %q: %w", id.String(), err)
	}
	return seg[2], seg[4], nil
}

func checkNames(ns, sa string) error {
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("%w: namespace %q: %s", ErrNotWorkloadID, ns, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(sa); len(errs) > 0 {
		return fmt.Errorf("%w: service account %q: %s", ErrNotWorkloadID, sa, strings.Join(errs, "; "))
	}
	return nil
}
