// Package web owns the control plane's dashboard: one server-rendered HTML
// page (services, workloads and their health, connected proxies and the
// configuration versions they accepted) that refreshes itself every 2 s. Its
// assets are embedded, so it needs no network. It reads state through
// Source and changes nothing.
package web

import (
	"bytes"
	"embed"
	"html/template"
	"net/http"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
)

//go:embed templates/index.html
var assets embed.FS

var page = template.Must(template.New("index.html").Funcs(template.FuncMap{
	"health": healthName,
}).ParseFS(assets, "templates/index.html"))

// Source is the state the dashboard shows. Both methods are called on every
// page load, from HTTP handler goroutines; they must be safe for concurrent
// use and return data the caller owns.
type Source interface {
	// Status returns services and workloads (the registry).
	Status() ([]registry.ServiceStatus, []registry.WorkloadStatus)
	// ProxyStatus returns the xDS clients (the xDS server).
	ProxyStatus() []xds.ProxyStatus
}

// columns are the xDS types the proxies table shows, in apply order.
var columns = []struct{ name, url string }{
	{"CDS", resource.ClusterType},
	{"EDS", resource.EndpointType},
	{"LDS", resource.ListenerType},
	{"RDS", resource.RouteType},
}

type proxyRow struct {
	ID, Namespace, Workload string
	Connected               bool
	ConnectedAt             time.Time
	// Versions are the acked versions, one per column.
	Versions []string
	// NACKs are "TYPE: message" for each type whose last response was rejected.
	NACKs []string
}

type pageData struct {
	Services  []registry.ServiceStatus
	Workloads []registry.WorkloadStatus
	Types     []string
	Proxies   []proxyRow
}

// Handler serves the dashboard at "/" (GET and HEAD); any other path is 404,
// so it can be mounted as the API listener's catch-all.
func Handler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var d pageData
		d.Services, d.Workloads = src.Status()
		for _, c := range columns {
			d.Types = append(d.Types, c.name)
		}
		for _, ps := range src.ProxyStatus() {
			row := proxyRow{ID: ps.ID, Namespace: ps.Namespace, Workload: ps.Workload, Connected: ps.Connected, ConnectedAt: ps.ConnectedAt}
			for _, c := range columns {
				ts := ps.Types[c.url]
				row.Versions = append(row.Versions, ts.AckedVersion)
				if ts.NACK != "" {
					row.NACKs = append(row.NACKs, c.name+": "+ts.NACK)
				}
			}
			d.Proxies = append(d.Proxies, row)
		}
		// Render to a buffer so that a template error is a clean 500, not
		// half a page.
		var buf bytes.Buffer
		if err := page.Execute(&buf, d); err != nil {
			http.Error(w, "render dashboard: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = buf.WriteTo(w)
	})
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
