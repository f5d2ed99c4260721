package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/internal/telemetry"
)

// Defaults and bounds of the read endpoints' parameters.
const (
	DefaultWindow      = 60 * time.Second
	DefaultSeriesRange = 15 * time.Minute
	DefaultTapRate     = 10
	DefaultErrorsLimit = 50
)

// Refusal is an AuthorizeReport decision against the caller: Status is
// the HTTP status to answer (401, 403, 503), Message says why.
type Refusal struct {
	Status  int
	Message string
}

func (r *Refusal) Error() string { return r.Message }

// HandlerConfig configures Handler.
type HandlerConfig struct {
	// AuthorizeReport decides whether r may deliver a report of workload
	// namespace/name, after the report decoded and validated; a *Refusal
	// is answered as it says, any other error with 500. Nil allows every
	// report (tests only).
	AuthorizeReport func(r *http.Request, namespace, name string) error
	// Registerer receives verge_telemetry_reports_total; none when nil.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Results of verge_telemetry_reports_total.
var reportResults = []string{"accepted", "invalid", "refused", "error"}

// Handler serves, on the API listener:
//
//	POST telemetry.ReportPath     a proxy's report (≤ MaxReportBytes, strict JSON, validated, authorized) → ReportResponse
//	GET  telemetry.TopologyPath   ?window=60s → Topology
//	GET  telemetry.SeriesPath     ?service=NAME.NS&window=15m&step=10s → Series
//	GET  telemetry.TapPath        ?service=NAME.NS&max=N&rate=N → NDJSON TapEvents, until max or the client leaves
//	GET  telemetry.ErrorsPath     ?service=NAME.NS&limit=50 → []TapEvent
//	GET  telemetry.ProxiesPath    → []ProxyProcess
//
// Reads authorize nothing themselves: they are reads of the API, behind
// whatever guards its reads. Errors are Kubernetes-style Status objects
// naming the bad field or parameter.
func (a *Aggregator) Handler(cfg HandlerConfig) http.Handler {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{a: a, cfg: cfg, logger: logger.With("component", "topology")}
	h.reports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "verge_telemetry_reports_total",
		Help: "Telemetry reports from proxies, by result (accepted, invalid, refused, error).",
	}, []string{"result"})
	for _, r := range reportResults {
		h.reports.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(h.reports, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "verge_topology_edges",
			Help: "Edge series the control plane keeps (per direction, protocol, services and zones).",
		}, func() float64 {
			a.mu.RLock()
			defer a.mu.RUnlock()
			return float64(len(a.series))
		}))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+telemetry.ReportPath, h.report)
	mux.HandleFunc("GET "+telemetry.TopologyPath, h.topology)
	mux.HandleFunc("GET "+telemetry.SeriesPath, h.series)
	mux.HandleFunc("GET "+telemetry.TapPath, h.tap)
	mux.HandleFunc("GET "+telemetry.ErrorsPath, h.errors)
	mux.HandleFunc("GET "+telemetry.ProxiesPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.Processes())
	})
	return mux
}

type handler struct {
	a       *Aggregator
	cfg     HandlerConfig
	logger  *slog.Logger
	reports *prometheus.CounterVec
}

func (h *handler) report(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxReportBytes))
	if err != nil {
		h.reports.WithLabelValues("invalid").Inc()
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeStatus(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("report: body exceeds %d bytes", MaxReportBytes))
			return
		}
		writeStatus(w, http.StatusBadRequest, "read report: "+err.Error())
		return
	}
	rep, err := DecodeReport(data)
	if err != nil {
		h.reports.WithLabelValues("invalid").Inc()
		h.logger.Debug("telemetry report refused", "remote_addr", r.RemoteAddr, "err", err)
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	if h.cfg.AuthorizeReport != nil {
		ns, name := workloadOf(rep)
		if err := h.cfg.AuthorizeReport(r, ns, name); err != nil {
			if ref, ok := errors.AsType[*Refusal](err); ok {
				h.reports.WithLabelValues("refused").Inc()
				h.logger.Warn("telemetry report refused", "proxy", rep.Proxy, "workload", rep.Workload, "remote_addr", r.RemoteAddr, "err", err)
				writeStatus(w, ref.Status, ref.Message)
				return
			}
			h.reports.WithLabelValues("error").Inc()
			h.logger.Error("telemetry report not authorized", "proxy", rep.Proxy, "workload", rep.Workload, "err", err)
			writeStatus(w, http.StatusInternalServerError, "authorize report: internal error")
			return
		}
	}
	h.reports.WithLabelValues("accepted").Inc()
	writeJSON(w, http.StatusOK, h.a.Ingest(rep, h.a.opts.Clock()))
}

// workloadOf splits a validated report's workload.
func workloadOf(r *telemetry.Report) (ns, name string) {
	ns, name, _ = strings.Cut(r.Workload, "/")
	return ns, name
}

func (h *handler) topology(w http.ResponseWriter, r *http.Request) {
	window, err := durationParam(r, "window", DefaultWindow, h.a.opts.Slot, h.a.opts.Retention)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, h.a.Topology(window, h.a.opts.Clock()))
}

func (h *handler) series(w http.ResponseWriter, r *http.Request) {
	service, err := serviceParam(r, true)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	window, err := durationParam(r, "window", min(DefaultSeriesRange, h.a.opts.Retention), h.a.opts.Slot, h.a.opts.Retention)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	step, err := durationParam(r, "step", h.a.opts.Slot, h.a.opts.Slot, window)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	if window/step > MaxPoints {
		writeStatus(w, http.StatusBadRequest, fmt.Sprintf("step: %s gives more than %d points over window %s", step, MaxPoints, window))
		return
	}
	writeJSON(w, http.StatusOK, h.a.Series(service, window, step, h.a.opts.Clock()))
}

func (h *handler) errors(w http.ResponseWriter, r *http.Request) {
	service, err := serviceParam(r, false)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	limit, err := intParam(r, "limit", DefaultErrorsLimit, 1, h.a.opts.MaxErrors)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, h.a.Errors(service, limit))
}

func (h *handler) tap(w http.ResponseWriter, r *http.Request) {
	service, err := serviceParam(r, true)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	limit, err := intParam(r, "max", 0, 0, 1<<30)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	rate, err := intParam(r, "rate", DefaultTapRate, 1, MaxTapRate)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, err.Error())
		return
	}
	events, err := h.a.Tap(r.Context(), service, rate)
	if err != nil {
		writeStatus(w, http.StatusServiceUnavailable, fmt.Sprintf("tap %s: %d taps are active, the most the control plane serves: try again later", service, h.a.opts.MaxTaps))
		return
	}
	rc := http.NewResponseController(w)
	// The server's ReadTimeout would otherwise end a stream that outlives
	// it: net/http cancels the request when its background read of the
	// connection times out.
	_ = rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	h.logger.Info("tap started", "service", service, "rate", rate, "max", limit, "remote_addr", r.RemoteAddr)
	enc := json.NewEncoder(w)
	sent := 0
	for e := range events {
		if err := enc.Encode(e); err != nil {
			break
		}
		if err := rc.Flush(); err != nil {
			break
		}
		if sent++; limit > 0 && sent >= limit {
			break
		}
	}
	h.logger.Info("tap ended", "service", service, "events", sent)
}

func serviceParam(r *http.Request, required bool) (string, error) {
	v := r.URL.Query().Get("service")
	if errs := checkName(field.NewPath("service"), v, required); len(errs) > 0 {
		return "", errs.ToAggregate()
	}
	return v, nil
}

func durationParam(r *http.Request, name string, def, lo, hi time.Duration) (time.Duration, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (e.g. 60s, 15m)", name, truncate(v))
	}
	if d < lo || d > hi {
		return 0, fmt.Errorf("%s: %s must be between %s and %s", name, d, lo, hi)
	}
	return d, nil
}

func intParam(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s: %q must be an integer between %d and %d", name, truncate(v), lo, hi)
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Code:     int32(code),
		Reason:   metav1.StatusReason(http.StatusText(code)),
		Message:  msg,
	})
}
