package translate

import (
	"cmp"
	"slices"
	"strings"

	"verge.dev/verge/api/v1alpha1"
)

// scoped indexes mesh-wide settings that apply by where they sit and which
// service they name, as MeshTLS and Telemetry do:
//
//   - in namespace verge-system without a service: every workload;
//   - in another namespace without a service: that namespace's workloads;
//   - naming a service: the workloads that service (same namespace) selects.
//
// Each list is oldest first (creationTimestamp, then name).
type scoped[T v1alpha1.Object] struct {
	mesh      []T
	namespace map[string][]T
	service   map[string][]T // by "ns/name" of the service
}

// newScoped indexes objs; service returns the service an object names, ""
// for none.
func newScoped[T v1alpha1.Object](objs []T, service func(T) string) scoped[T] {
	s := scoped[T]{namespace: map[string][]T{}, service: map[string][]T{}}
	for _, o := range objs {
		switch svc := service(o); {
		case svc != "":
			k := o.GetNamespace() + "/" + svc
			s.service[k] = append(s.service[k], o)
		case o.GetNamespace() == v1alpha1.MeshNamespace:
			s.mesh = append(s.mesh, o)
		default:
			s.namespace[o.GetNamespace()] = append(s.namespace[o.GetNamespace()], o)
		}
	}
	slices.SortFunc(s.mesh, compareAge)
	for _, l := range s.namespace {
		slices.SortFunc(l, compareAge)
	}
	for _, l := range s.service {
		slices.SortFunc(l, compareAge)
	}
	return s
}

// compareAge orders oldest first (creationTimestamp, then name), as
// DestinationPolicies are ordered: the oldest of equally specific wins.
func compareAge[T v1alpha1.Object](a, b T) int {
	at, bt := a.GetCreationTimestamp(), b.GetCreationTimestamp()
	return cmp.Or(at.Compare(bt.Time), strings.Compare(a.GetName(), b.GetName()))
}

// resolve returns what applies to a workload of namespace ns selected by
// selecting: the oldest object naming one of those services, else the
// oldest of ns, else the oldest mesh-wide one; false when none applies.
func (s scoped[T]) resolve(ns string, selecting []*serviceInfo) (T, bool) {
	var best T
	found := false
	for _, si := range selecting {
		if l := s.service[si.key]; len(l) > 0 && (!found || compareAge(l[0], best) < 0) {
			best, found = l[0], true
		}
	}
	if found {
		return best, true
	}
	if l := s.namespace[ns]; len(l) > 0 {
		return l[0], true
	}
	if len(s.mesh) > 0 {
		return s.mesh[0], true
	}
	return best, false
}
