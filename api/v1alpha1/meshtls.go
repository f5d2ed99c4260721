package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// MeshNamespace is the namespace of the mesh's own objects (the control
// plane's identity lives there); a MeshTLS there without a service applies to
// the whole mesh.
const MeshNamespace = "verge-system"

// MeshTLS sets whether the proxies of some workloads accept plaintext on
// their inbound ports. Its scope follows from where it sits and what it names:
//
//   - in namespace verge-system without spec.service: every workload of the mesh;
//   - in any other namespace without spec.service: the workloads of that namespace;
//   - with spec.service: the workloads that Service (in the same namespace) selects.
//
// The most specific MeshTLS applying to a workload wins (service, then
// namespace, then mesh); among equally specific ones the oldest
// (creationTimestamp, then name). A workload no MeshTLS applies to is
// PERMISSIVE. Traffic between Verge proxies is mutual TLS in both modes: a
// caller's proxy uses TLS to every endpoint that has a proxy in front of it.
type MeshTLS struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              MeshTLSSpec `json:"spec"`
}

// MeshTLSSpec is the desired state of a MeshTLS.
type MeshTLSSpec struct {
	// Mode is STRICT or PERMISSIVE; required, so that nobody gets a mode
	// they did not write.
	Mode MeshTLSMode `json:"mode"`
	// Service, when set, names a Service in the MeshTLS's namespace and
	// limits it to the workloads that service selects.
	Service string `json:"service,omitempty"`
}

// MeshTLSMode says what a proxied workload's inbound listeners accept.
type MeshTLSMode string

const (
	// MeshTLSStrict accepts mutual TLS only; plaintext connections are closed.
	MeshTLSStrict MeshTLSMode = "STRICT"
	// MeshTLSPermissive accepts mutual TLS and plaintext on the same port,
	// for callers not yet in the mesh (migration).
	MeshTLSPermissive MeshTLSMode = "PERMISSIVE"
)

func validateMeshTLSSpec(s *MeshTLSSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch s.Mode {
	case MeshTLSStrict, MeshTLSPermissive:
	case "":
		errs = append(errs, field.Required(p.Child("mode"), "STRICT or PERMISSIVE"))
	default:
		errs = append(errs, field.NotSupported(p.Child("mode"), s.Mode, []MeshTLSMode{MeshTLSStrict, MeshTLSPermissive}))
	}
	if s.Service != "" {
		errs = append(errs, dnsLabel(p.Child("service"), s.Service)...)
	}
	return errs
}
