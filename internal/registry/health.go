package registry

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/xds/translate"
)

// HealthPath is where HealthHandler expects to be mounted.
const HealthPath = "/api/v1/health/"

// healthReport is the body of PUT /api/v1/health/{namespace}/{workload}.
type healthReport struct {
	Ready *bool `json:"ready"`
}

// HealthHandler serves PUT /api/v1/health/{namespace}/{workload} with the
// JSON body {"ready": true|false}: a Verge proxy reports its application's
// readiness on connect, on every change and at least every 30 s. It answers 204, 404
// for an unknown workload, 400 for a bad body. Mount it at HealthPath.
func (r *Registry) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT "+HealthPath+"{namespace}/{workload}", func(w http.ResponseWriter, req *http.Request) {
		var body healthReport
		dec := json.NewDecoder(io.LimitReader(req.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			http.Error(w, "decode health report: "+err.Error(), http.StatusBadRequest)
			return
		}
		if body.Ready == nil {
			http.Error(w, "decode health report: field ready is required", http.StatusBadRequest)
			return
		}
		ns, name := req.PathValue("namespace"), req.PathValue("workload")
		if !r.ReportReady(ns, name, *body.Ready) {
			http.Error(w, "workload "+ns+"/"+name+" not found", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(HealthPath, func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPut {
			w.Header().Set("Allow", http.MethodPut)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		http.NotFound(w, req)
	})
	return mux
}

// ServiceStatus is one service as the dashboard shows it.
type ServiceStatus struct {
	Namespace string
	Name      string
	Ports     []v1alpha1.ServicePort
	// Endpoints counts the workloads the service selects; Healthy those of
	// them not known to be unhealthy.
	Endpoints int
	Healthy   int
}

// WorkloadStatus is one workload as the dashboard shows it.
type WorkloadStatus struct {
	Namespace string
	Name      string
	Address   string
	Health    translate.Health
	// Proxied is true when a Verge proxy fronts the workload.
	Proxied bool
	// ProxyConnected is true while its proxy has an xDS stream open.
	ProxyConnected bool
}

// Status returns every service and workload, sorted by namespace and name,
// with their current health. The result is owned by the caller.
func (r *Registry) Status() ([]ServiceStatus, []WorkloadStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var wls []*v1alpha1.Workload
	var svcs []*v1alpha1.Service
	for _, objs := range r.objs {
		for _, o := range objs {
			switch o := o.(type) {
			case *v1alpha1.Workload:
				wls = append(wls, o)
			case *v1alpha1.Service:
				svcs = append(svcs, o)
			}
		}
	}
	sortObjects(wls)
	sortObjects(svcs)

	wout := make([]WorkloadStatus, 0, len(wls))
	for _, wl := range wls {
		wout = append(wout, WorkloadStatus{
			Namespace:      wl.Namespace,
			Name:           wl.Name,
			Address:        wl.Spec.Address,
			Health:         r.healthLocked(wl),
			Proxied:        wl.Spec.Proxy != nil,
			ProxyConnected: r.conns[wl.Namespace+"/"+wl.Name] > 0,
		})
	}
	sout := make([]ServiceStatus, 0, len(svcs))
	for _, svc := range svcs {
		st := ServiceStatus{Namespace: svc.Namespace, Name: svc.Name, Ports: slices.Clone(svc.Spec.Ports)}
		for _, wl := range wls {
			if wl.Namespace != svc.Namespace || !selects(svc.Spec.Selector, wl.Labels) {
				continue
			}
			st.Endpoints++
			if r.healthLocked(wl) != translate.HealthUnhealthy {
				st.Healthy++
			}
		}
		sout = append(sout, st)
	}
	return sout, wout
}

// selects reports whether sel selects labels. As in translate (and
// Kubernetes), an empty selector selects nothing.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
