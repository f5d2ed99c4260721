// Package web owns the control plane's dashboard: a single-page application
// (hand-written HTML, CSS and JavaScript, embedded in the binary so it works
// without internet access) and the read-only JSON API under /dashboard/api/
// it polls every 2 s. The pages are:
//
//   - the live service topology: services as nodes and traffic as edges,
//     coloured by success rate, edge width by request rate, cross-zone
//     edges dashed; the graph layout is computed here (layout.go), so the
//     browser only draws it;
//   - one page per service: request rate, success rate and p50/p99 latency
//     over time as SVG charts, its callers and callees, workloads, the
//     routes and policies that target it and its recent failed requests;
//   - workloads: health, their proxies' xDS state (versions sent, accepted
//     and rejected), the identity's certificate and the proxies' CPU and
//     memory;
//   - routes and policies in effect, and recent errors mesh-wide.
//
// State comes from two narrow interfaces: Source (the registry, the xDS
// server and the certificate log) and Telemetry (the traffic aggregator).
// The package changes nothing; every route answers GET and HEAD only.
package web

import (
	"bytes"
	"context"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/telemetry"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
)

//go:embed static templates
var assets embed.FS

// page is templates/index.html. Besides loading the application it carries,
// inside <noscript>, a plain server-rendered list of services, workloads
// and proxies, so that the page says something useful to curl, scripts
// and browsers without JavaScript.
var page = template.Must(template.ParseFS(assets, "templates/index.html"))

// maxPlainRows caps each list of the plain summary, so that a mesh of
// 5,000 workloads does not make every page load heavy.
const maxPlainRows = 1000

// Paths the dashboard serves. Index is the page; everything else lives
// under /dashboard/ so that the handler can be the API listener's
// catch-all without shadowing anything.
const (
	IndexPath  = "/"
	StaticPath = "/dashboard/static/"
	APIPath    = "/dashboard/api/"
)

// Source is the control plane's state the dashboard shows. Every method is
// called from HTTP handler goroutines, often concurrently; implementations
// must be safe for concurrent use and return data the caller owns (the
// dashboard never modifies it).
type Source interface {
	// Status returns services and workloads (the registry).
	Status() ([]registry.ServiceStatus, []registry.WorkloadStatus)
	// ProxyStatus returns the xDS clients (the xDS server).
	ProxyStatus() []xds.ProxyStatus
	// Mesh returns the objects currently in effect (the registry's view);
	// ok is false until the registry has listed every kind once.
	Mesh() (m translate.Mesh, ok bool)
	// Certificates returns the workload certificates (SVIDs) the CA issued
	// that have not expired, in any order. It may do I/O (the issuance log
	// lives in the store) and should honour ctx.
	Certificates(ctx context.Context) ([]Certificate, error)
}

// Certificate is one issued SVID as the dashboard shows it.
type Certificate struct {
	// Serial is lower-case hex.
	Serial    string    `json:"serial"`
	SPIFFEID  string    `json:"spiffeID"`
	IssuedAt  time.Time `json:"issuedAt"`
	ExpiresAt time.Time `json:"expiresAt"`
	Revoked   bool      `json:"revoked,omitempty"`
}

// Telemetry is the traffic view: *topology.Aggregator implements it. The
// methods are called from HTTP handler goroutines, concurrently; they must
// not block on I/O and must return data the caller owns. Services are
// "NAME.NAMESPACE".
type Telemetry interface {
	// Topology is the service graph over the window ending at now.
	Topology(window time.Duration, now time.Time) telemetry.Topology
	// Series is service's golden signals per step over the window ending
	// at now.
	Series(service string, window, step time.Duration, now time.Time) telemetry.Series
	// Errors are service's (every service's when "") most recent failed
	// requests, newest first, at most limit.
	Errors(service string, limit int) []telemetry.TapEvent
	// Processes are the proxies that reported recently.
	Processes() []telemetry.ProxyProcess
}

// noTelemetry is the Telemetry of a control plane without an aggregator:
// an empty graph and no samples.
type noTelemetry struct{}

func (noTelemetry) Topology(window time.Duration, now time.Time) telemetry.Topology {
	return telemetry.Topology{Window: window, Generated: now}
}

func (noTelemetry) Series(service string, _, step time.Duration, _ time.Time) telemetry.Series {
	return telemetry.Series{Service: service, Step: step}
}
func (noTelemetry) Errors(string, int) []telemetry.TapEvent { return nil }
func (noTelemetry) Processes() []telemetry.ProxyProcess     { return nil }

// Handler serves the dashboard: the page at "/", its assets under
// StaticPath and the JSON API under APIPath, GET and HEAD only (other
// methods get 405); any other path is 404, so it can be mounted as the API
// listener's catch-all. A nil tel shows no traffic.
func Handler(src Source, tel Telemetry) http.Handler {
	return handlerAt(src, tel, time.Now)
}

// handlerAt is Handler with a clock.
func handlerAt(src Source, tel Telemetry, now func() time.Time) http.Handler {
	if tel == nil {
		tel = noTelemetry{}
	}
	a := &api{src: src, tel: tel, now: now}
	static, err := fs.Sub(assets, "static")
	if err != nil {
		panic("web: embedded assets lack static/: " + err.Error())
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+IndexPath+"{$}", a.index)
	files := http.StripPrefix(StaticPath, http.FileServerFS(static))
	mux.Handle("GET "+StaticPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		// Embedded files carry no modification time; no-cache makes the
		// browser revalidate, so a new binary's assets are never stale.
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	a.routes(mux)
	return mux
}

// secure sets headers that confine the page to its own origin: no script,
// style or image from anywhere else can load, which also proves in the
// browser test that nothing needs the internet.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

type plainSummary struct {
	Services  []registry.ServiceStatus
	Workloads []registry.WorkloadStatus
	Proxies   []xds.ProxyStatus
	// More counts the entries left out of each list.
	MoreServices, MoreWorkloads, MoreProxies int
}

func (a *api) index(w http.ResponseWriter, _ *http.Request) {
	var d plainSummary
	d.Services, d.Workloads = a.src.Status()
	d.Proxies = a.src.ProxyStatus()
	d.Services, d.MoreServices = capped(d.Services)
	d.Workloads, d.MoreWorkloads = capped(d.Workloads)
	d.Proxies, d.MoreProxies = capped(d.Proxies)
	// Render to a buffer so that a template error is a clean 500, not
	// half a page.
	var buf bytes.Buffer
	if err := page.Execute(&buf, d); err != nil {
		http.Error(w, "render dashboard: "+err.Error(), http.StatusInternalServerError)
		return
	}
	secure(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = buf.WriteTo(w)
}

func capped[T any](s []T) ([]T, int) {
	if len(s) > maxPlainRows {
		return s[:maxPlainRows], len(s) - maxPlainRows
	}
	return s, 0
}
