package web

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/telemetry"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
)

// Health classes of nodes and edges, by success rate. The thresholds are
// the usual SLO bands: two nines is fine, below 95% is an incident.
const (
	HealthGood = "good" // success rate >= GoodSuccess
	HealthWarn = "warn" // >= WarnSuccess
	HealthBad  = "bad"
	HealthIdle = "idle" // no requests in the window

	GoodSuccess = 0.99
	WarnSuccess = 0.95
)

// Bounds of the query parameters, so that no request makes the
// aggregator walk an unbounded history or the browser draw a huge chart.
const (
	defaultWindow       = time.Minute
	maxWindow           = 24 * time.Hour
	defaultSeriesWindow = 15 * time.Minute
	minStep             = time.Second
	maxPoints           = 720
	defaultPoints       = 90
	defaultErrors       = 50
	maxErrors           = 500
	// certTimeout bounds the certificate log read of one request.
	certTimeout = 2 * time.Second
)

// xdsTypes are the proxy table's xDS columns, in apply order.
var xdsTypes = []struct{ name, url string }{
	{"CDS", resource.ClusterType},
	{"EDS", resource.EndpointType},
	{"LDS", resource.ListenerType},
	{"RDS", resource.RouteType},
	{"SDS", resource.SecretType},
}

type api struct {
	src Source
	tel Telemetry
	now func() time.Time
}

func (a *api) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+APIPath+"topology", a.topology)
	mux.HandleFunc("GET "+APIPath+"services/{service}", a.service)
	mux.HandleFunc("GET "+APIPath+"workloads", a.workloads)
	mux.HandleFunc("GET "+APIPath+"policies", a.policies)
	mux.HandleFunc("GET "+APIPath+"errors", a.errors)
}

// Summary counts what the header shows on every page.
type Summary struct {
	Services  int `json:"services"`
	Workloads int `json:"workloads"`
	// Unhealthy counts workloads known to be unhealthy.
	Unhealthy int `json:"unhealthy"`
	Proxies   int `json:"proxies"`
	Connected int `json:"connected"`
	// NACKs counts proxies whose last answer to some type was a rejection.
	NACKs int `json:"nacks"`
}

// TopologyResponse is GET /dashboard/api/topology?window=60s.
type TopologyResponse struct {
	Generated time.Time `json:"generated"`
	// WindowSeconds is the window the rates are averaged over.
	WindowSeconds float64 `json:"windowSeconds"`
	Summary       Summary `json:"summary"`
	// Width and Height bound the node positions (pixels of the layout).
	Width  float64     `json:"width"`
	Height float64     `json:"height"`
	Nodes  []GraphNode `json:"nodes"`
	Edges  []GraphEdge `json:"edges"`
}

// GraphNode is a service in the graph: every service the registry knows,
// and any other name traffic mentions (an "unknown" caller, a service
// deleted while its traffic is still in the window).
type GraphNode struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Registered is false for names only traffic mentions.
	Registered bool `json:"registered"`
	// Endpoints and Healthy are the registry's workload counts.
	Endpoints int      `json:"endpoints"`
	Healthy   int      `json:"healthy"`
	Zones     []string `json:"zones,omitempty"`
	telemetry.Golden
	Health string `json:"health"`
	// X and Y place the node (see layout.go); Layer is its column.
	X     float64 `json:"x"`
	Y     float64 `json:"y"`
	Layer int     `json:"layer"`
}

// GraphEdge is caller → callee over every zone pair: the graph draws one
// line per pair of services.
type GraphEdge struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	// CrossZone is set when some of the traffic crossed zones;
	// CrossZoneRate is that part's request rate and Zones lists the zone
	// pairs ("a→b").
	CrossZone     bool     `json:"crossZone,omitempty"`
	CrossZoneRate float64  `json:"crossZoneRate,omitempty"`
	Zones         []string `json:"zones,omitempty"`
	// Golden sums the zone pairs; P50 and P99 are the largest of theirs.
	telemetry.Golden
	Health string `json:"health"`
}

// ServiceResponse is GET /dashboard/api/services/NAME.NS?window=15m&step=10s.
type ServiceResponse struct {
	Generated  time.Time `json:"generated"`
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Namespace  string    `json:"namespace"`
	Registered bool      `json:"registered"`
	Ports      []Port    `json:"ports"`
	Endpoints  int       `json:"endpoints"`
	Healthy    int       `json:"healthy"`
	// Golden and Health are over the topology's default window (1 min).
	telemetry.Golden
	Health      string               `json:"health"`
	Series      telemetry.Series     `json:"series"`
	StepSeconds float64              `json:"stepSeconds"`
	Inbound     []GraphEdge          `json:"inbound"`
	Outbound    []GraphEdge          `json:"outbound"`
	Workloads   []WorkloadRow        `json:"workloads"`
	Policies    []Policy             `json:"policies"`
	Errors      []telemetry.TapEvent `json:"errors"`
}

// Port is a service port.
type Port struct {
	Name       string `json:"name"`
	Port       int32  `json:"port"`
	TargetPort int32  `json:"targetPort"`
	Protocol   string `json:"protocol"`
}

// WorkloadsResponse is GET /dashboard/api/workloads.
type WorkloadsResponse struct {
	Generated time.Time     `json:"generated"`
	Summary   Summary       `json:"summary"`
	Workloads []WorkloadRow `json:"workloads"`
	// Proxyless are xDS clients that front no Workload (proxyless gRPC,
	// Envoy).
	Proxyless []ProxyState `json:"proxyless"`
	// CertificatesError says why certificate state is missing, if it is.
	CertificatesError string `json:"certificatesError,omitempty"`
}

// WorkloadRow is one workload with everything known about its proxy.
type WorkloadRow struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Address   string `json:"address"`
	// Health is "healthy", "unhealthy" or "unknown".
	Health   string   `json:"health"`
	Services []string `json:"services,omitempty"`
	Zone     string   `json:"zone,omitempty"`
	Proxied  bool     `json:"proxied"`
	// ServiceAccount and SPIFFEID are the workload's identity.
	ServiceAccount string      `json:"serviceAccount,omitempty"`
	Proxy          *ProxyState `json:"proxy,omitempty"`
	// Certificate is the newest unrevoked SVID of the workload's identity
	// (workloads sharing a service account share it); Certificates counts
	// that identity's unexpired ones.
	Certificate  *Certificate            `json:"certificate,omitempty"`
	Certificates int                     `json:"certificates,omitempty"`
	Process      *telemetry.ProxyProcess `json:"process,omitempty"`
}

// ProxyState is one xDS client's configuration state.
type ProxyState struct {
	ID          string      `json:"id"`
	Connected   bool        `json:"connected"`
	ConnectedAt time.Time   `json:"connectedAt"`
	Types       []TypeState `json:"types"`
	// NACK is set when any type's last response was rejected.
	NACK bool `json:"nack,omitempty"`
}

// TypeState is one xDS type of a proxy. InSync is true when the proxy
// accepted the last version sent.
type TypeState struct {
	Type      string    `json:"type"`
	Sent      string    `json:"sent"`
	Acked     string    `json:"acked"`
	InSync    bool      `json:"inSync"`
	NACK      string    `json:"nack,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// PoliciesResponse is GET /dashboard/api/policies.
type PoliciesResponse struct {
	Generated time.Time `json:"generated"`
	// Ready is false until the registry has listed every kind.
	Ready    bool     `json:"ready"`
	Policies []Policy `json:"policies"`
}

// ErrorsResponse is GET /dashboard/api/errors?service=NAME.NS&limit=N.
type ErrorsResponse struct {
	Generated time.Time            `json:"generated"`
	Errors    []telemetry.TapEvent `json:"errors"`
}

func (a *api) topology(w http.ResponseWriter, r *http.Request) {
	window, err := durationParam(r, "window", defaultWindow, minStep, maxWindow)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	now := a.now()
	svcs, wls := a.src.Status()
	topo := a.tel.Topology(window, now)
	resp := TopologyResponse{
		Generated:     now,
		WindowSeconds: window.Seconds(),
		Summary:       summarize(svcs, wls, a.src.ProxyStatus()),
	}
	resp.Nodes, resp.Edges = graph(svcs, topo)
	resp.Width, resp.Height = layout(resp.Nodes, resp.Edges)
	writeJSON(w, resp)
}

// graph joins the registry's services and the traffic into nodes (sorted
// by ID) and edges merged per service pair (sorted by source, destination).
func graph(svcs []registry.ServiceStatus, topo telemetry.Topology) ([]GraphNode, []GraphEdge) {
	byID := make(map[string]*GraphNode, len(svcs)+len(topo.Nodes))
	add := func(id string) *GraphNode {
		if n, ok := byID[id]; ok {
			return n
		}
		name, ns := splitService(id)
		n := &GraphNode{ID: id, Name: name, Namespace: ns, Golden: telemetry.Golden{SuccessRate: 1}}
		byID[id] = n
		return n
	}
	for _, s := range svcs {
		n := add(s.Name + "." + s.Namespace)
		n.Registered, n.Endpoints, n.Healthy = true, s.Endpoints, s.Healthy
	}
	for _, tn := range topo.Nodes {
		n := add(tn.Service)
		n.Zones, n.Golden = slices.Clone(tn.Zones), tn.Golden
	}
	edges := mergeEdges(topo.Edges)
	for _, e := range edges {
		add(e.Source)
		add(e.Destination)
	}
	nodes := make([]GraphNode, 0, len(byID))
	for _, n := range byID {
		n.Health = healthOf(n.Golden)
		nodes = append(nodes, *n)
	}
	slices.SortFunc(nodes, func(a, b GraphNode) int { return strings.Compare(a.ID, b.ID) })
	return nodes, edges
}

// mergeEdges merges the per-zone-pair edges of each service pair.
func mergeEdges(in []telemetry.Edge) []GraphEdge {
	type key struct{ src, dst string }
	idx := map[key]int{}
	var out []GraphEdge
	for _, e := range in {
		k := key{e.Source, e.Destination}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, GraphEdge{Source: e.Source, Destination: e.Destination, Protocol: e.Protocol})
		}
		g := &out[i]
		g.Requests += e.Requests
		g.Failures += e.Failures
		g.RequestRate += e.RequestRate
		g.P50 = max(g.P50, e.P50)
		g.P99 = max(g.P99, e.P99)
		if g.Protocol != e.Protocol {
			g.Protocol = "mixed"
		}
		if e.SourceZone != "" || e.DestinationZone != "" {
			g.Zones = append(g.Zones, cmp.Or(e.SourceZone, "?")+"→"+cmp.Or(e.DestinationZone, "?"))
		}
		if e.CrossZone {
			g.CrossZone = true
			g.CrossZoneRate += e.RequestRate
		}
	}
	for i := range out {
		g := &out[i]
		g.SuccessRate = 1
		if g.Requests > 0 {
			g.SuccessRate = 1 - float64(g.Failures)/float64(g.Requests)
		}
		g.Health = healthOf(g.Golden)
		slices.Sort(g.Zones)
	}
	slices.SortFunc(out, func(a, b GraphEdge) int {
		return cmp.Or(strings.Compare(a.Source, b.Source), strings.Compare(a.Destination, b.Destination))
	})
	return out
}

func healthOf(g telemetry.Golden) string {
	switch {
	case g.Requests == 0:
		return HealthIdle
	case g.SuccessRate >= GoodSuccess:
		return HealthGood
	case g.SuccessRate >= WarnSuccess:
		return HealthWarn
	default:
		return HealthBad
	}
}

// splitService splits "NAME.NAMESPACE" at its last dot (names are DNS
// labels, so neither part has one); a name without a dot has no namespace.
func splitService(id string) (name, ns string) {
	if i := strings.LastIndexByte(id, '.'); i >= 0 {
		return id[:i], id[i+1:]
	}
	return id, ""
}

func summarize(svcs []registry.ServiceStatus, wls []registry.WorkloadStatus, proxies []xds.ProxyStatus) Summary {
	s := Summary{Services: len(svcs), Workloads: len(wls), Proxies: len(proxies)}
	for _, wl := range wls {
		if wl.Health == translate.HealthUnhealthy {
			s.Unhealthy++
		}
	}
	for _, p := range proxies {
		if p.Connected {
			s.Connected++
		}
		for _, t := range p.Types {
			if t.NACK != "" {
				s.NACKs++
				break
			}
		}
	}
	return s
}

func (a *api) service(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("service")
	name, ns := splitService(id)
	if name == "" || ns == "" {
		http.Error(w, fmt.Sprintf("service %q: want NAME.NAMESPACE", id), http.StatusBadRequest)
		return
	}
	window, err := durationParam(r, "window", defaultSeriesWindow, minStep, maxWindow)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	step, err := durationParam(r, "step", max(minStep, window/defaultPoints), minStep, window)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if window/step > maxPoints {
		http.Error(w, fmt.Sprintf("step %s: window %s would have more than %d points", step, window, maxPoints), http.StatusBadRequest)
		return
	}
	now := a.now()
	resp := ServiceResponse{Generated: now, ID: id, Name: name, Namespace: ns, StepSeconds: step.Seconds(), Golden: telemetry.Golden{SuccessRate: 1}}

	svcs, wls := a.src.Status()
	for _, s := range svcs {
		if s.Name == name && s.Namespace == ns {
			resp.Registered, resp.Endpoints, resp.Healthy = true, s.Endpoints, s.Healthy
			for _, p := range s.Ports {
				resp.Ports = append(resp.Ports, Port{Name: p.Name, Port: p.Port, TargetPort: p.TargetPort, Protocol: string(p.Protocol)})
			}
		}
	}
	topo := a.tel.Topology(defaultWindow, now)
	for _, n := range topo.Nodes {
		if n.Service == id {
			resp.Golden = n.Golden
		}
	}
	resp.Health = healthOf(resp.Golden)
	for _, e := range mergeEdges(topo.Edges) {
		if e.Destination == id {
			resp.Inbound = append(resp.Inbound, e)
		}
		if e.Source == id {
			resp.Outbound = append(resp.Outbound, e)
		}
	}
	resp.Series = a.tel.Series(id, window, step, now)
	resp.Errors = a.tel.Errors(id, defaultErrors)

	mesh, ok := a.src.Mesh()
	if ok {
		resp.Policies = policiesFor(policies(mesh), id)
	}
	resp.Workloads = a.workloadRows(r.Context(), wls, mesh, id, nil)
	writeJSON(w, resp)
}

func (a *api) workloads(w http.ResponseWriter, r *http.Request) {
	_, wls := a.src.Status()
	proxies := a.src.ProxyStatus()
	mesh, _ := a.src.Mesh()
	var certErr error
	resp := WorkloadsResponse{Generated: a.now(), Summary: summarize(nil, wls, proxies)}
	resp.Summary.Services = len(mesh.Services)
	resp.Workloads = a.workloadRows(r.Context(), wls, mesh, "", &certErr)
	if certErr != nil {
		resp.CertificatesError = certErr.Error()
	}
	for _, p := range proxies {
		if p.Workload == "" {
			resp.Proxyless = append(resp.Proxyless, proxyState(p))
		}
	}
	writeJSON(w, resp)
}

// workloadRows joins the registry's workloads with their services, proxies,
// certificates and process statistics; only those of service when it is
// not "". A certificate log failure leaves the certificates out and is
// stored in *certErr when certErr is not nil.
func (a *api) workloadRows(ctx context.Context, wls []registry.WorkloadStatus, mesh translate.Mesh, service string, certErr *error) []WorkloadRow {
	type key struct{ ns, name string }
	objs := make(map[key]*v1alpha1.Workload, len(mesh.Workloads))
	for _, wl := range mesh.Workloads {
		objs[key{wl.Namespace, wl.Name}] = wl
	}
	// Services by namespace: a service selects only in its own, and this
	// keeps 5,000 workloads × 500 services cheap.
	svcsByNS := map[string][]*v1alpha1.Service{}
	for _, s := range mesh.Services {
		svcsByNS[s.Namespace] = append(svcsByNS[s.Namespace], s)
	}
	proxies := map[key]xds.ProxyStatus{}
	for _, p := range a.src.ProxyStatus() {
		if p.Workload != "" {
			proxies[key{p.Namespace, p.Workload}] = p
		}
	}
	procs := map[string]telemetry.ProxyProcess{}
	for _, p := range a.tel.Processes() {
		procs[p.Workload] = p
	}
	ctx, cancel := context.WithTimeout(ctx, certTimeout)
	defer cancel()
	certs, err := a.src.Certificates(ctx)
	if err != nil {
		certs = nil
		if certErr != nil {
			*certErr = fmt.Errorf("read certificate log: %w", err)
		}
	}
	// Identities are keyed by the SPIFFE ID's path, so that the trust
	// domain, which the dashboard does not know, does not matter.
	type idCerts struct {
		newest *Certificate
		count  int
	}
	byIdentity := map[string]*idCerts{}
	for i := range certs {
		c := &certs[i]
		p := spiffePath(c.SPIFFEID)
		ic := byIdentity[p]
		if ic == nil {
			ic = &idCerts{}
			byIdentity[p] = ic
		}
		ic.count++
		if !c.Revoked && (ic.newest == nil || c.IssuedAt.After(ic.newest.IssuedAt)) {
			ic.newest = c
		}
	}

	rows := make([]WorkloadRow, 0, len(wls))
	for _, wl := range wls {
		obj := objs[key{wl.Namespace, wl.Name}]
		var services []string
		if obj != nil {
			for _, s := range svcsByNS[wl.Namespace] {
				if selects(s.Spec.Selector, obj.Labels) {
					services = append(services, s.Name+"."+s.Namespace)
				}
			}
		}
		if service != "" && !slices.Contains(services, service) {
			continue
		}
		row := WorkloadRow{
			Namespace: wl.Namespace, Name: wl.Name, Address: wl.Address,
			Health: healthName(wl.Health), Proxied: wl.Proxied,
		}
		row.Services = services
		if obj != nil {
			row.ServiceAccount = cmp.Or(obj.Spec.ServiceAccount, "default")
			// The same labels translate reads for locality.
			row.Zone = cmp.Or(obj.Labels["zone"], obj.Labels["topology.kubernetes.io/zone"])
			if ic := byIdentity["/ns/"+wl.Namespace+"/sa/"+row.ServiceAccount]; ic != nil {
				if ic.newest != nil {
					c := *ic.newest
					row.Certificate = &c
				}
				row.Certificates = ic.count
			}
		}
		if p, ok := proxies[key{wl.Namespace, wl.Name}]; ok {
			ps := proxyState(p)
			row.Proxy = &ps
		}
		if p, ok := procs[wl.Namespace+"/"+wl.Name]; ok {
			row.Process = &p
			row.Zone = cmp.Or(row.Zone, p.Zone)
		}
		rows = append(rows, row)
	}
	return rows
}

// spiffePath is the path of a SPIFFE ID ("/ns/N/sa/S"), or the ID itself
// when it is not one.
func spiffePath(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return id
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i:]
	}
	return id
}

// selects mirrors the registry's rule: every selector label must match,
// and an empty selector selects nothing.
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

func proxyState(p xds.ProxyStatus) ProxyState {
	ps := ProxyState{ID: p.ID, Connected: p.Connected, ConnectedAt: p.ConnectedAt}
	for _, t := range xdsTypes {
		ts, ok := p.Types[t.url]
		if !ok {
			continue
		}
		ps.Types = append(ps.Types, TypeState{
			Type: t.name, Sent: ts.SentVersion, Acked: ts.AckedVersion,
			InSync: ts.SentVersion == ts.AckedVersion, NACK: ts.NACK, UpdatedAt: ts.UpdatedAt,
		})
		if ts.NACK != "" {
			ps.NACK = true
		}
	}
	return ps
}

func healthName(h translate.Health) string {
	switch h {
	case translate.HealthHealthy:
		return "healthy"
	case translate.HealthUnhealthy:
		return "unhealthy"
	default:
		return "unknown"
	}
}

func (a *api) policies(w http.ResponseWriter, _ *http.Request) {
	mesh, ok := a.src.Mesh()
	resp := PoliciesResponse{Generated: a.now(), Ready: ok, Policies: policies(mesh)}
	writeJSON(w, resp)
}

func (a *api) errors(w http.ResponseWriter, r *http.Request) {
	limit := defaultErrors
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxErrors {
			http.Error(w, fmt.Sprintf("limit %q: want an integer from 1 to %d", s, maxErrors), http.StatusBadRequest)
			return
		}
		limit = n
	}
	resp := ErrorsResponse{Generated: a.now(), Errors: a.tel.Errors(r.URL.Query().Get("service"), limit)}
	writeJSON(w, resp)
}

// durationParam reads a Go duration ("90s", "15m") from the query, def when
// absent; it must lie in [lo, hi].
func durationParam(r *http.Request, name string, def, lo, hi time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s %q: not a duration (like 60s or 15m)", name, s)
	}
	if d < lo || d > hi {
		return 0, fmt.Errorf("%s %s: must be from %s to %s", name, d, lo, hi)
	}
	return d, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	secure(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}
