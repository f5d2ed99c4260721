// Package telemetry owns the wire types that carry traffic summaries from
// the proxies to the control plane, and the topology, time-series and tap
// views the control plane serves from them (API, `verge top`, `verge tap`,
// the dashboard). It holds types and small pure helpers only, so that both
// sides (the proxy links no control-plane package) can import it.
//
// Proxies push rather than being scraped: an edge site's proxies sit behind
// links the centre cannot dial, while every proxy already holds an
// authenticated connection outward to its control plane. A proxy POSTs a
// Report every few seconds with the deltas since its last accepted report,
// and the answer tells it which taps are active.
package telemetry

import (
	"math"
	"sort"
	"time"
)

// API paths on the control plane's API listener.
const (
	// ReportPath: POST a Report (JSON) from a proxy, authenticated by its
	// SVID; the answer is a ReportResponse.
	ReportPath = "/api/v1/telemetry/report"
	// TopologyPath: GET ?window=60s → Topology.
	TopologyPath = "/api/v1/topology"
	// SeriesPath: GET ?service=NAME.NS&window=15m&step=10s → Series.
	SeriesPath = "/api/v1/topology/series"
	// TapPath: GET ?service=NAME.NS[&max=N] → a stream of TapEvent, one
	// JSON object per line, until the client goes away or max events.
	TapPath = "/api/v1/tap"
	// ErrorsPath: GET ?service=NAME.NS (optional) → []TapEvent, the most
	// recent failed requests, newest first.
	ErrorsPath = "/api/v1/telemetry/errors"
)

// Directions of an edge, from the reporting proxy's point of view.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// LatencyBuckets are the upper bounds (seconds) of the latency histogram
// every report uses, so that the control plane merges reports by adding
// counts. Counts has one more slot than LatencyBuckets: the last is +Inf.
var LatencyBuckets = []float64{
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Report is one proxy's traffic since its previous accepted report.
type Report struct {
	// Proxy is the proxy's xDS node id (NAME.NAMESPACE of its workload).
	Proxy string `json:"proxy"`
	// Workload is "namespace/name"; Service and Namespace the service the
	// workload belongs to (its mesh name is Service.Namespace.mesh); Zone
	// the workload's zone label ("" when none).
	Workload  string `json:"workload"`
	Service   string `json:"service"`
	Namespace string `json:"namespace"`
	Zone      string `json:"zone,omitempty"`
	// Start and End bound the interval the deltas cover.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Edges are the request and connection counts per edge.
	Edges []EdgeStats `json:"edges,omitempty"`
	// Process is the proxy process's own resource use at End.
	Process ProcessStats `json:"process"`
	// Taps are sampled requests for the taps the last response listed.
	Taps []TapEvent `json:"taps,omitempty"`
	// Errors are a few failed requests of the interval (5xx, gRPC errors
	// other than client errors, connection failures), for the dashboard's
	// recent errors; bounded by the proxy.
	Errors []TapEvent `json:"errors,omitempty"`
	// AdminAddress is the proxy's admin listener (metrics, pprof), so
	// that `verge profile` can find it.
	AdminAddress string `json:"adminAddress,omitempty"`
}

// EdgeKey names one edge. Services are "NAME.NAMESPACE"; a caller the
// reporting inbound proxy cannot name (no proxy in front of it) is
// "unknown". Protocol is "http", "grpc" or "tcp".
type EdgeKey struct {
	Direction       string `json:"direction"`
	Protocol        string `json:"protocol"`
	Source          string `json:"source"`
	SourceZone      string `json:"sourceZone,omitempty"`
	Destination     string `json:"destination"`
	DestinationZone string `json:"destinationZone,omitempty"`
}

// EdgeStats are one edge's deltas. For TCP, Requests counts connections
// and Latency their durations.
type EdgeStats struct {
	EdgeKey
	Requests uint64 `json:"requests"`
	// Failures counts the requests Failed says failed.
	Failures uint64 `json:"failures"`
	// Latency counts requests per LatencyBuckets slot (+Inf last).
	Latency  []uint64 `json:"latency"`
	BytesIn  uint64   `json:"bytesIn"`
	BytesOut uint64   `json:"bytesOut"`
}

// Failed says whether a request counts as a failure in Failures: an HTTP
// status of 500 and above, no response at all (status 0), or a gRPC status
// that is not the client's fault. grpcCode < 0 means not gRPC.
func Failed(status, grpcCode int) bool {
	if status == 0 || status >= 500 {
		return true
	}
	switch grpcCode {
	case 2, 4, 8, 12, 13, 14, 15: // UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
		return true
	}
	return false
}

// ProcessStats is a process's resource use.
type ProcessStats struct {
	// CPUSeconds is user+system CPU time since the process started.
	CPUSeconds float64 `json:"cpuSeconds"`
	// RSSBytes is the resident set size.
	RSSBytes   uint64 `json:"rssBytes"`
	Goroutines int    `json:"goroutines"`
}

// ReportResponse is the control plane's answer to a Report.
type ReportResponse struct {
	// Taps the proxy should sample until its next report.
	Taps []TapRequest `json:"taps,omitempty"`
	// Interval is how long the proxy should wait before its next report
	// (shorter while a tap is active); zero keeps the proxy's default.
	Interval time.Duration `json:"interval,omitempty"`
}

// TapRequest asks proxies to sample requests to or from Service.
type TapRequest struct {
	ID string `json:"id"`
	// Service is "NAME.NAMESPACE"; a proxy samples requests whose source
	// or destination it is.
	Service string `json:"service"`
	// MaxPerSecond bounds the samples one proxy sends for this tap.
	MaxPerSecond int `json:"maxPerSecond"`
}

// TapEvent is one sampled request.
type TapEvent struct {
	TapID       string        `json:"tapId,omitempty"`
	Time        time.Time     `json:"time"`
	Proxy       string        `json:"proxy"`
	Direction   string        `json:"direction"`
	Protocol    string        `json:"protocol"`
	Source      string        `json:"source"`
	Identity    string        `json:"identity,omitempty"`
	Destination string        `json:"destination"`
	Method      string        `json:"method,omitempty"`
	Authority   string        `json:"authority,omitempty"`
	Path        string        `json:"path,omitempty"`
	Status      int           `json:"status"`
	GRPCStatus  int           `json:"grpcStatus"` // -1: not gRPC
	Duration    time.Duration `json:"duration"`
	TraceID     string        `json:"traceId,omitempty"`
	Flags       string        `json:"flags,omitempty"`
}

// Golden are the golden signals of a node or edge over a window.
type Golden struct {
	Requests uint64 `json:"requests"`
	Failures uint64 `json:"failures"`
	// RequestRate is requests per second over the window.
	RequestRate float64 `json:"requestRate"`
	// SuccessRate is 1 - Failures/Requests (1 when no requests).
	SuccessRate float64 `json:"successRate"`
	// P50 and P99 are latency quantiles in seconds, estimated from the
	// histogram (0 when no requests).
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

// Topology is the service graph over a window.
type Topology struct {
	Window    time.Duration `json:"window"`
	Generated time.Time     `json:"generated"`
	Nodes     []Node        `json:"nodes"`
	Edges     []Edge        `json:"edges"`
}

// Node is one service ("NAME.NAMESPACE"). Its golden signals are those of
// the requests it served (inbound).
type Node struct {
	Service   string   `json:"service"`
	Zones     []string `json:"zones,omitempty"`
	Workloads int      `json:"workloads"`
	Golden
}

// Edge is caller → callee, per pair of zones (CrossZone when they differ
// and both are known). Its golden signals are those the caller saw
// (outbound), or the callee's inbound view when the caller has no proxy.
type Edge struct {
	Source          string `json:"source"`
	Destination     string `json:"destination"`
	SourceZone      string `json:"sourceZone,omitempty"`
	DestinationZone string `json:"destinationZone,omitempty"`
	CrossZone       bool   `json:"crossZone,omitempty"`
	Protocol        string `json:"protocol"`
	Golden
}

// Series is one service's golden signals over time.
type Series struct {
	Service string        `json:"service"`
	Step    time.Duration `json:"step"`
	Points  []Point       `json:"points"`
}

// Point is the golden signals of one step, ending at Time.
type Point struct {
	Time time.Time `json:"time"`
	Golden
}

// BucketIndex returns the LatencyBuckets slot of a duration.
func BucketIndex(d time.Duration) int {
	s := d.Seconds()
	return sort.SearchFloat64s(LatencyBuckets, s)
}

// Quantile estimates the q-quantile (0..1) in seconds from counts per
// LatencyBuckets slot, interpolating linearly inside the bucket as
// Prometheus' histogram_quantile does; the +Inf slot reports the largest
// finite bound.
func Quantile(q float64, counts []uint64) float64 {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var seen float64
	for i, c := range counts {
		if c == 0 {
			continue
		}
		if seen+float64(c) >= rank {
			if i >= len(LatencyBuckets) {
				return LatencyBuckets[len(LatencyBuckets)-1]
			}
			lo := 0.0
			if i > 0 {
				lo = LatencyBuckets[i-1]
			}
			hi := LatencyBuckets[i]
			frac := (rank - seen) / float64(c)
			return lo + (hi-lo)*math.Max(0, math.Min(1, frac))
		}
		seen += float64(c)
	}
	return LatencyBuckets[len(LatencyBuckets)-1]
}

// ProxyProcess is what the control plane knows of one reporting proxy.
type ProxyProcess struct {
	Proxy        string       `json:"proxy"`
	Workload     string       `json:"workload"`
	Service      string       `json:"service"`
	Zone         string       `json:"zone,omitempty"`
	AdminAddress string       `json:"adminAddress,omitempty"`
	Process      ProcessStats `json:"process"`
	// CPUPercent is the CPU use between its last two reports (100 = one
	// core).
	CPUPercent float64   `json:"cpuPercent"`
	LastReport time.Time `json:"lastReport"`
}

// ProxiesPath: GET → []ProxyProcess, the proxies that reported recently.
const ProxiesPath = "/api/v1/telemetry/proxies"

// AccessLogField is one key of the access log's json_format (the Telemetry
// resource's access log, docs/xds-telemetry.md) and the Envoy command
// operator the control plane sends for it on HTTP and on TCP listeners
// ("" means the key is not written there; "direction" is literal text,
// the listener's direction). The control plane writes exactly these and
// the proxy accepts exactly these, so both sides read this one list.
type AccessLogField struct{ Key, HTTP, TCP string }

// AccessLogFields in the order the docs list them.
var AccessLogFields = []AccessLogField{
	{"start_time", "%START_TIME%", "%START_TIME%"},
	{"duration_ms", "%DURATION%", "%DURATION%"},
	{"direction", "", ""},
	{"protocol", "%PROTOCOL%", "tcp"},
	{"method", "%REQ(:METHOD)%", ""},
	{"authority", "%REQ(:AUTHORITY)%", ""},
	{"path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", ""},
	{"status", "%RESPONSE_CODE%", ""},
	{"grpc_status", "%GRPC_STATUS_NUMBER%", ""},
	{"bytes_received", "%BYTES_RECEIVED%", "%BYTES_RECEIVED%"},
	{"bytes_sent", "%BYTES_SENT%", "%BYTES_SENT%"},
	{"source", "%DOWNSTREAM_REMOTE_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS%"},
	{"source_identity", "%DOWNSTREAM_PEER_URI_SAN%", "%DOWNSTREAM_PEER_URI_SAN%"},
	{"destination", "%UPSTREAM_CLUSTER%", "%UPSTREAM_CLUSTER%"},
	{"upstream_host", "%UPSTREAM_HOST%", "%UPSTREAM_HOST%"},
	{"route", "%ROUTE_NAME%", ""},
	{"retries", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", ""},
	{"response_flags", "%RESPONSE_FLAGS%", "%RESPONSE_FLAGS%"},
	{"trace_id", "%TRACE_ID%", ""},
	{"request_id", "%REQ(X-REQUEST-ID)%", ""},
	{"user_agent", "%REQ(USER-AGENT)%", ""},
}
