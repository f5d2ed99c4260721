package xds

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ProxyStatus is what the server knows of one xDS client (node ID), as
// GET /api/v1/proxies and `verge proxy-status` show it.
type ProxyStatus struct {
	// ID is the node ID the client sent.
	ID string `json:"id"`
	// Namespace and Workload name the Verge proxy's Workload (node metadata
	// "workload"); both empty for Envoy and proxyless gRPC clients.
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"`
	// Connected is true while at least one stream of the node is open.
	Connected bool `json:"connected"`
	// ConnectedAt is when the node's current (or last) connection began.
	ConnectedAt time.Time `json:"connectedAt"`
	// Types is keyed by xDS type URL.
	Types map[string]TypeStatus `json:"types"`
}

// TypeStatus is the state of one resource type on one node.
type TypeStatus struct {
	// SentVersion is the version_info of the last response sent.
	SentVersion string `json:"sentVersion"`
	// AckedVersion is the last version the client accepted.
	AckedVersion string `json:"ackedVersion"`
	// NACK is the error_detail message of the client's last rejection; it is
	// cleared when the client accepts a version.
	NACK string `json:"nack"`
	// UpdatedAt is when any of the above last changed.
	UpdatedAt time.Time `json:"updatedAt"`
}

// ProxyStatus returns every node the server knows (connected, or gone for
// less than Config.GoneAfter), sorted by ID. The result is owned by the
// caller. Safe for concurrent use.
func (s *Server) ProxyStatus() []ProxyStatus {
	s.mu.Lock()
	out := make([]ProxyStatus, 0, len(s.nodes))
	for _, n := range s.nodes {
		ps := ProxyStatus{
			ID:          n.id,
			Namespace:   n.namespace,
			Workload:    n.workload,
			Connected:   n.streams > 0,
			ConnectedAt: n.connectedAt.UTC(),
			Types:       make(map[string]TypeStatus, len(n.types)),
		}
		for url, ts := range n.types {
			t := *ts
			t.UpdatedAt = t.UpdatedAt.UTC()
			ps.Types[url] = t
		}
		out = append(out, ps)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Handler serves GET /api/v1/proxies: ProxyStatus as a JSON array. Mount it
// at that path.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		// An encoding error here can only be a write to a gone client.
		_ = json.NewEncoder(w).Encode(s.ProxyStatus())
	})
}
