package translate

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"verge.dev/verge/api/v1alpha1"
)

// Index is a Mesh prepared for translation: services, the workloads each one
// selects, and every service port's cluster, endpoints and routes, built once
// and shared by every node. NewIndex does all the work that does not depend on
// the node asking, so ForWorkload and ForProxyless only assemble.
//
// An Index is immutable once built and safe for concurrent use. The Resources
// it returns share their messages with the Index and with each other: callers
// must treat them as read-only (go-control-plane's snapshot cache does).
type Index struct {
	services map[string]*serviceInfo // by "ns/name"
	ordered  []*serviceInfo          // by namespace, then name
	byNS     map[string][]*serviceInfo
	// selecting maps each indexed workload to the services selecting it,
	// sorted by ns/name; ForWorkload uses it when handed the same pointer.
	selecting map[*v1alpha1.Workload][]*serviceInfo
	// ports holds every service port by its cluster name, plus placeholders
	// for ports that routes send to but that do not exist (see portInfo.missing).
	ports map[string]*portInfo
	// sorted is every real service port ordered by cluster name.
	sorted []*portInfo
	health map[string]Health

	h2Options map[string]*anypb.Any // shared by every HTTP/2 cluster
	tls       tlsIndex
	authz     authzIndex
	faults    faultIndex
	telemetry telemetryIndex
}

type serviceInfo struct {
	key       string // "ns/name"
	ns, name  string
	svc       *v1alpha1.Service
	workloads []*v1alpha1.Workload // selected, sorted by ns/name
	ports     []*portInfo
	// attached routes, in Mesh order; ports filter them by parentRef port.
	httpRoutes []attachment[*v1alpha1.HTTPRoute]
	grpcRoutes []attachment[*v1alpha1.GRPCRoute]
	// policies targeting the service, oldest first (see comparePolicyAge).
	policies []*v1alpha1.DestinationPolicy
}

// attachment is a route attached to a service, with the port its parentRef
// names (nil for every port) and the port name its sectionName names.
type attachment[R any] struct {
	route   R
	port    *int32
	section string
}

// mesh returns the port's cluster and endpoints as Verge proxies get them.
func (pi *portInfo) mesh() (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	if pi.meshCluster == nil {
		return pi.cluster, pi.cla
	}
	return pi.meshCluster, pi.meshCLA
}

func (a attachment[R]) appliesTo(p v1alpha1.ServicePort) bool {
	return (a.port == nil || *a.port == p.Port) && (a.section == "" || a.section == p.Name)
}

// portInfo is one service port and everything translated from it.
type portInfo struct {
	name    string // "NAME.NS.mesh:PORT": cluster, EDS and route config name
	svc     *serviceInfo
	port    v1alpha1.ServicePort
	missing bool // a backendRef names it but no such service port exists
	cluster *clusterv3.Cluster
	cla     *endpointv3.ClusterLoadAssignment
	// proxylessCluster is cluster as grpc-go can read it (see setLB).
	proxylessCluster *clusterv3.Cluster
	// meshCluster and meshCLA are what Verge proxies get: with auto mTLS
	// when Mesh.MTLS is set and some endpoint is a proxy; nil means the
	// same as cluster and cla (see mesh).
	meshCluster *clusterv3.Cluster
	meshCLA     *endpointv3.ClusterLoadAssignment
	routes      []*routev3.Route // HTTP-ish ports only
	// ruleNames holds the name of the rule each of routes comes from ("" for
	// unnamed rules and the default route).
	ruleNames []string
	// faults is set when a route carries a fault, so that HCMs using the
	// route config list the fault filter.
	faults   bool
	backends []*portInfo // clusters routes send to, sorted by name, unique
	// outbound is the route config Verge proxies and Envoy use (any Host);
	// proxyless is the one gRPC clients use (Host must be the service).
	outbound, proxyless *routev3.RouteConfiguration
}

// ClusterName is the name of a service port's cluster, EDS resource and route
// configuration: "NAME.NS.mesh:PORT".
func ClusterName(name, namespace string, port int32) string {
	return v1alpha1.MeshName(name, namespace) + ":" + strconv.Itoa(int(port))
}

// NewIndex prepares m for translation. It does not modify m and keeps
// pointers into it, so m must not change while the Index is in use. Input is
// assumed defaulted and valid; what is still inconsistent (a route to a
// missing service, an upstream that does not exist) is translated to a
// well-defined failure (404, 503) rather than refused.
func NewIndex(m Mesh) *Index {
	ix := &Index{
		services:  make(map[string]*serviceInfo, len(m.Services)),
		byNS:      make(map[string][]*serviceInfo),
		selecting: make(map[*v1alpha1.Workload][]*serviceInfo, len(m.Workloads)),
		ports:     make(map[string]*portInfo, len(m.Services)),
		health:    m.Health,
		h2Options: http2Options(),
		tls:       newTLSIndex(m),
		authz:     newAuthzIndex(m),
		faults:    newFaultIndex(m.FaultInjections),
		telemetry: newTelemetryIndex(m.Telemetries),
	}

	svcs := slices.Clone(m.Services)
	slices.SortFunc(svcs, func(a, b *v1alpha1.Service) int { return compareMeta(a, b) })
	for _, s := range svcs {
		key := s.Namespace + "/" + s.Name
		if _, dup := ix.services[key]; dup {
			continue
		}
		si := &serviceInfo{key: key, ns: s.Namespace, name: s.Name, svc: s}
		ix.services[key] = si
		ix.ordered = append(ix.ordered, si)
		ix.byNS[s.Namespace] = append(ix.byNS[s.Namespace], si)
	}

	ix.selectWorkloads(m.Workloads)
	ix.attachRoutes(m.HTTPRoutes, m.GRPCRoutes)
	ix.attachPolicies(m.DestinationPolicies)

	for _, si := range ix.ordered {
		for _, p := range si.svc.Spec.Ports {
			pi := &portInfo{name: ClusterName(si.name, si.ns, p.Port), svc: si, port: p}
			if _, dup := ix.ports[pi.name]; dup {
				continue
			}
			pi.cluster, pi.proxylessCluster = ix.edsCluster(pi.name, p.Protocol, si, p.Port)
			pi.cla = ix.loadAssignment(pi.name, si.workloads, p.TargetPort, false)
			if ids := ix.peerIDs(si.workloads, p.TargetPort); len(ids) > 0 {
				pi.meshCluster = ix.meshCluster(pi.cluster, p.Protocol, ids)
				pi.meshCLA = ix.loadAssignment(pi.name, si.workloads, p.TargetPort, true)
			}
			si.ports = append(si.ports, pi)
			ix.ports[pi.name] = pi
			ix.sorted = append(ix.sorted, pi)
		}
	}
	// Routes last: they refer to other ports' clusters, and may create
	// placeholders for ports that do not exist.
	for _, pi := range slices.Clone(ix.sorted) {
		if pi.port.Protocol.IsHTTP() {
			ix.buildRoutes(pi)
		}
	}
	slices.SortFunc(ix.sorted, func(a, b *portInfo) int { return strings.Compare(a.name, b.name) })
	return ix
}

// selectWorkloads fills each service's workloads and the reverse map. A label
// index keeps it linear: each service scans only the workloads carrying the
// rarest of its selector's labels.
func (ix *Index) selectWorkloads(all []*v1alpha1.Workload) {
	wls := slices.Clone(all)
	slices.SortFunc(wls, func(a, b *v1alpha1.Workload) int { return compareMeta(a, b) })
	byLabel := make(map[labelKey][]*v1alpha1.Workload)
	for _, w := range wls {
		for k, v := range w.Labels {
			lk := labelKey{w.Namespace, k, v}
			byLabel[lk] = append(byLabel[lk], w)
		}
	}
	for _, si := range ix.ordered {
		sel := si.svc.Spec.Selector
		if len(sel) == 0 {
			// As in Kubernetes: no selector, no workloads selected.
			continue
		}
		var cands []*v1alpha1.Workload
		first := true
		for k, v := range sel {
			l := byLabel[labelKey{si.ns, k, v}]
			if first || len(l) < len(cands) {
				cands, first = l, false
			}
		}
		for _, w := range cands {
			if selects(sel, w.Labels) && admits(si.svc, w) {
				si.workloads = append(si.workloads, w)
				ix.selecting[w] = append(ix.selecting[w], si)
			}
		}
	}
}

type labelKey struct{ ns, k, v string }

// admits applies a service's spec.serviceAccounts to a workload its selector
// picked: with the list set, only workloads running as one of them belong.
func admits(svc *v1alpha1.Service, w *v1alpha1.Workload) bool {
	if len(svc.Spec.ServiceAccounts) == 0 {
		return true
	}
	return slices.Contains(svc.Spec.ServiceAccounts, cmp.Or(w.Spec.ServiceAccount, "default"))
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// servicesSelecting lists the services selecting wl, sorted by ns/name.
func (ix *Index) servicesSelecting(wl *v1alpha1.Workload) []*serviceInfo {
	if s, ok := ix.selecting[wl]; ok {
		return s
	}
	// A workload that is not in the Mesh (or a changed copy of one): scan its
	// namespace, which is already sorted.
	var out []*serviceInfo
	for _, si := range ix.byNS[wl.Namespace] {
		if selects(si.svc.Spec.Selector, wl.Labels) && admits(si.svc, wl) {
			out = append(out, si)
		}
	}
	return out
}

// attachRoutes records which routes attach to which services (GAMMA: a
// parentRef of kind Service).
func (ix *Index) attachRoutes(hrs []*v1alpha1.HTTPRoute, grs []*v1alpha1.GRPCRoute) {
	for _, r := range hrs {
		for _, pr := range r.Spec.ParentRefs {
			if si, port, section := ix.parent(r.Namespace, pr); si != nil {
				si.httpRoutes = append(si.httpRoutes, attachment[*v1alpha1.HTTPRoute]{route: r, port: port, section: section})
			}
		}
	}
	for _, r := range grs {
		for _, pr := range r.Spec.ParentRefs {
			if si, port, section := ix.parent(r.Namespace, pr); si != nil {
				si.grpcRoutes = append(si.grpcRoutes, attachment[*v1alpha1.GRPCRoute]{route: r, port: port, section: section})
			}
		}
	}
}

// parent resolves a parentRef to a service it attaches to, or nil.
func (ix *Index) parent(routeNS string, pr gatewayv1.ParentReference) (*serviceInfo, *int32, string) {
	if g := deref(pr.Group); g != "" && g != v1alpha1.Group {
		return nil, nil, ""
	}
	if k := deref(pr.Kind); k != "" && k != "Service" {
		return nil, nil, ""
	}
	ns := deref(pr.Namespace)
	if ns == "" {
		ns = routeNS
	}
	return ix.services[ns+"/"+string(pr.Name)], pr.Port, deref(pr.SectionName)
}

// deref reads the Gateway API's optional string-typed fields.
func deref[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}

// compareMeta orders objects by namespace, then name.
func compareMeta[T interface {
	GetNamespace() string
	GetName() string
}](a, b T) int {
	return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
}
