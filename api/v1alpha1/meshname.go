package v1alpha1

import (
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// MeshName is the name a service is reached by inside the mesh:
// NAME.NAMESPACE.mesh. An empty namespace is DefaultNamespace.
func MeshName(name, namespace string) string {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return name + "." + namespace + "." + MeshDomain
}

// ParseMeshName splits a mesh name, as a client sends it in a Host header or
// an xds:/// target, into the service's name and namespace. It accepts
// NAME.NAMESPACE.mesh with an optional trailing dot and an optional ":PORT",
// in any letter case (DNS names are case-insensitive), and returns the parts
// in lower case. ok is false for anything else, including a bad port.
func ParseMeshName(host string) (name, namespace string, ok bool) {
	if h, port, found := strings.Cut(host, ":"); found {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return "", "", false
		}
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	rest, found := strings.CutSuffix(host, "."+MeshDomain)
	if !found {
		return "", "", false
	}
	name, namespace, found = strings.Cut(rest, ".")
	if !found || len(validation.IsDNS1123Label(name)) > 0 || len(validation.IsDNS1123Label(namespace)) > 0 {
		return "", "", false
	}
	return name, namespace, true
}
