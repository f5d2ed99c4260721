package authz

import (
	"encoding/json"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// auditQueueSize bounds the audit lines waiting for the writer; beyond it
// lines are dropped and counted, never waited for.
const auditQueueSize = 1024

// Recorder counts every decision (verge_authz_decisions_total) and writes
// deny and audit decisions to the audit log, one JSON line each with time,
// source (principal and IP), destination (listener, port, method, path),
// policy, rule and reason. Writing never blocks the request path: lines go
// through a bounded queue to one goroutine, and what does not fit is counted
// as dropped (verge_authz_audit_dropped_total). Metric labels are the
// listener, the action and the policy name, all from configuration: never a
// path, address or principal. A nil *Recorder records nothing.
type Recorder struct {
	decisions *prometheus.CounterVec
	audits    *prometheus.CounterVec
	dropped   prometheus.Counter

	queue chan auditLine // nil without a writer
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// auditLine is one audit log entry, encoded by the writer goroutine.
type auditLine struct {
	Time      time.Time `json:"time"`
	Decision  string    `json:"decision"` // deny or audit
	Listener  string    `json:"listener"`
	Principal string    `json:"source_principal,omitempty"`
	SourceIP  string    `json:"source_ip,omitempty"`
	DestPort  uint32    `json:"destination_port"`
	Method    string    `json:"method,omitempty"`
	Path      string    `json:"path,omitempty"`
	Policy    string    `json:"policy,omitempty"`
	Rule      string    `json:"rule,omitempty"`
	Reason    string    `json:"reason"`
}

// NewRecorder returns a recorder writing the audit log to w (nil: no audit
// log, decisions are still counted). Close flushes it; w is written from one
// goroutine only and is not closed.
func NewRecorder(w io.Writer) *Recorder {
	r := &Recorder{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_authz_decisions_total",
			Help: "Authorization decisions by listener, outcome (allow, deny) and the policy that decided (empty when none did).",
		}, []string{"listener", "action", "policy"}),
		audits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "verge_authz_audits_total",
			Help: "AUDIT policy matches by listener and policy.",
		}, []string{"listener", "policy"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "verge_authz_audit_dropped_total",
			Help: "Audit log lines dropped because the writer fell behind or failed.",
		}),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if w == nil {
		close(r.done)
		return r
	}
	r.queue = make(chan auditLine, auditQueueSize)
	go r.write(w)
	return r
}

// write owns w until Close: it encodes queued lines, then drains the queue
// when stopped.
func (r *Recorder) write(w io.Writer) {
	defer close(r.done)
	enc := json.NewEncoder(w)
	put := func(l auditLine) {
		if err := enc.Encode(&l); err != nil {
			r.dropped.Inc()
		}
	}
	for {
		select {
		case l := <-r.queue:
			put(l)
		case <-r.stop:
			for {
				select {
				case l := <-r.queue:
					put(l)
				default:
					return
				}
			}
		}
	}
}

// Record accounts one decision made on the named listener. It never blocks
// and is safe for concurrent use.
func (r *Recorder) Record(listener string, req *Request, d Decision) {
	if r == nil {
		return
	}
	action := "allow"
	if !d.Allowed {
		action = "deny"
	}
	policy := d.Policy
	if policy != "" && d.Rule != "" {
		policy += "/" + d.Rule
	}
	r.decisions.WithLabelValues(listener, action, policy).Inc()
	for _, a := range d.Audited {
		r.audits.WithLabelValues(listener, a).Inc()
	}
	if r.queue == nil || (d.Allowed && len(d.Audited) == 0) {
		return
	}
	base := auditLine{
		Time:      time.Now().UTC(),
		Listener:  listener,
		Principal: req.Principal,
		DestPort:  req.DestPort,
		Method:    req.Method,
		Path:      req.Path,
	}
	if req.SourceIP.IsValid() {
		base.SourceIP = req.SourceIP.String()
	}
	if !d.Allowed {
		l := base
		l.Decision, l.Policy, l.Rule, l.Reason = "deny", d.Policy, d.Rule, d.Reason
		r.enqueue(l)
	}
	for _, a := range d.Audited {
		l := base
		l.Decision, l.Policy = "audit", a
		if i := strings.LastIndexByte(a, '/'); i >= 0 {
			l.Policy, l.Rule = a[:i], a[i+1:]
		}
		if d.Allowed {
			l.Reason = "matched AUDIT policy; request allowed"
		} else {
			l.Reason = "matched AUDIT policy; request denied: " + d.Reason
		}
		r.enqueue(l)
	}
}

func (r *Recorder) enqueue(l auditLine) {
	select {
	case <-r.stop:
		r.dropped.Inc()
		return
	default:
	}
	select {
	case r.queue <- l:
	default:
		r.dropped.Inc()
	}
}

// Collectors are the recorder's metrics, for the proxy's registry.
func (r *Recorder) Collectors() []prometheus.Collector {
	if r == nil {
		return nil
	}
	return []prometheus.Collector{r.decisions, r.audits, r.dropped}
}

// Close stops accepting audit lines, writes those queued and returns when
// the writer goroutine has ended. It is idempotent.
func (r *Recorder) Close() error {
	if r == nil {
		return nil
	}
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return nil
}
