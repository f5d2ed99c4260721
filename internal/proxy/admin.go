package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"slices"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"verge.dev/verge/internal/proxy/config"
)

// AdminSources are what the admin endpoints need from outside the data path.
type AdminSources struct {
	// HasConfig reports whether the xDS client holds an accepted
	// configuration; /ready also requires it. Nil means yes.
	HasConfig func() bool
	// Status, if set, is embedded in /config_dump as "status"; its result
	// must marshal to JSON.
	Status func() any
}

// AdminHandler serves the admin endpoints: /ready, /stats/prometheus,
// /config_dump and /debug/pprof/. pprof is mounted on this mux only, never on
// http.DefaultServeMux.
func (p *Proxy) AdminHandler(src AdminSources) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if !p.Ready() || (src.HasConfig != nil && !src.HasConfig()) {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /stats/prometheus", promhttp.HandlerFor(p.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		type listener struct {
			Name  string `json:"name"`
			Bound string `json:"bound"`
		}
		dump := struct {
			Snapshot  *config.Snapshot `json:"snapshot"`
			Listeners []listener       `json:"listeners"`
			Ready     bool             `json:"ready"`
			// Clusters is the live balancing and protection state
			// (guard_status.go).
			Clusters []clusterStatus `json:"clusters"`
			Status   any             `json:"status,omitempty"`
		}{Ready: p.Ready(), Listeners: []listener{}, Clusters: p.clusterStatuses()}
		if st := p.state.Load(); st != nil {
			dump.Snapshot = st.snap
		}
		if m := p.bound.Load(); m != nil {
			for name, a := range *m {
				dump.Listeners = append(dump.Listeners, listener{Name: name, Bound: a.String()})
			}
			slices.SortFunc(dump.Listeners, func(a, b listener) int {
				if a.Name < b.Name {
					return -1
				}
				if a.Name > b.Name {
					return 1
				}
				return 0
			})
		}
		if src.Status != nil {
			dump.Status = src.Status()
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(dump); err != nil {
			p.log.Debug("config dump not written", "error", err)
		}
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
