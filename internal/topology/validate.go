package topology

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/internal/telemetry"
)

// Limits of a report. A proxy aggregates per edge key, so even a busy
// gateway has far fewer edges than MaxReportEdges.
const (
	MaxReportBytes  = 4 << 20
	MaxReportEdges  = 2000
	MaxReportTaps   = 1000
	MaxReportErrors = 100
	// maxName bounds names: a DNS name's length.
	maxName = 253
	// maxText bounds free text of tap events (paths, authorities, flags).
	maxText = 4096
)

// DecodeReport reads a report strictly (unknown fields and trailing data
// are errors) and validates it.
func DecodeReport(data []byte) (*telemetry.Report, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r telemetry.Report
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("decode report: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode report: data after the report object")
	}
	if err := Validate(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks a report, naming every bad field by its JSON path.
func Validate(r *telemetry.Report) error {
	var errs field.ErrorList
	ns, name, ok := strings.Cut(r.Workload, "/")
	switch {
	case !ok || ns == "" || name == "" || strings.Contains(name, "/"):
		errs = append(errs, field.Invalid(field.NewPath("workload"), r.Workload, "must be namespace/name"))
	default:
		errs = append(errs, checkName(field.NewPath("workload"), r.Workload, true)...)
		if r.Proxy != name+"."+ns {
			errs = append(errs, field.Invalid(field.NewPath("proxy"), r.Proxy, "must be the node id of the workload, "+name+"."+ns))
		}
		if r.Namespace != ns {
			errs = append(errs, field.Invalid(field.NewPath("namespace"), r.Namespace, "must be the workload's namespace, "+ns))
		}
	}
	errs = append(errs, checkName(field.NewPath("service"), r.Service, false)...)
	errs = append(errs, checkName(field.NewPath("zone"), r.Zone, false)...)
	errs = append(errs, checkName(field.NewPath("adminAddress"), r.AdminAddress, false)...)
	if r.End.Before(r.Start) {
		errs = append(errs, field.Invalid(field.NewPath("end"), r.End, "must not be before start"))
	}
	if r.Process.CPUSeconds < 0 || r.Process.CPUSeconds != r.Process.CPUSeconds {
		errs = append(errs, field.Invalid(field.NewPath("process", "cpuSeconds"), r.Process.CPUSeconds, "must be a number of seconds, at least 0"))
	}
	if r.Process.Goroutines < 0 {
		errs = append(errs, field.Invalid(field.NewPath("process", "goroutines"), r.Process.Goroutines, "must be at least 0"))
	}
	if len(r.Edges) > MaxReportEdges {
		errs = append(errs, field.TooMany(field.NewPath("edges"), len(r.Edges), MaxReportEdges))
	} else {
		seen := make(map[telemetry.EdgeKey]bool, len(r.Edges))
		for i := range r.Edges {
			p := field.NewPath("edges").Index(i)
			errs = append(errs, checkEdge(p, &r.Edges[i])...)
			if seen[r.Edges[i].EdgeKey] {
				errs = append(errs, field.Duplicate(p, "edge key"))
			}
			seen[r.Edges[i].EdgeKey] = true
		}
	}
	for _, l := range []struct {
		name   string
		events []telemetry.TapEvent
		max    int
	}{{"taps", r.Taps, MaxReportTaps}, {"errors", r.Errors, MaxReportErrors}} {
		if len(l.events) > l.max {
			errs = append(errs, field.TooMany(field.NewPath(l.name), len(l.events), l.max))
			continue
		}
		for i := range l.events {
			errs = append(errs, checkEvent(field.NewPath(l.name).Index(i), &l.events[i])...)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("invalid report: %w", errs.ToAggregate())
}

func checkEdge(p *field.Path, e *telemetry.EdgeStats) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, checkDirection(p.Child("direction"), e.Direction)...)
	errs = append(errs, checkProtocol(p.Child("protocol"), e.Protocol)...)
	errs = append(errs, checkName(p.Child("source"), e.Source, true)...)
	errs = append(errs, checkName(p.Child("destination"), e.Destination, true)...)
	errs = append(errs, checkName(p.Child("sourceZone"), e.SourceZone, false)...)
	errs = append(errs, checkName(p.Child("destinationZone"), e.DestinationZone, false)...)
	if e.Failures > e.Requests {
		errs = append(errs, field.Invalid(p.Child("failures"), e.Failures, fmt.Sprintf("must not exceed requests (%d)", e.Requests)))
	}
	if len(e.Latency) != buckets {
		errs = append(errs, field.Invalid(p.Child("latency"), len(e.Latency), fmt.Sprintf("must have %d counts (len(LatencyBuckets)+1)", buckets)))
	}
	return errs
}

func checkEvent(p *field.Path, e *telemetry.TapEvent) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, checkDirection(p.Child("direction"), e.Direction)...)
	errs = append(errs, checkProtocol(p.Child("protocol"), e.Protocol)...)
	for _, f := range []struct{ name, v string }{
		{"tapId", e.TapID}, {"proxy", e.Proxy}, {"source", e.Source}, {"destination", e.Destination},
		{"identity", e.Identity}, {"method", e.Method}, {"traceId", e.TraceID},
	} {
		errs = append(errs, checkName(p.Child(f.name), f.v, false)...)
	}
	for _, f := range []struct{ name, v string }{{"authority", e.Authority}, {"path", e.Path}, {"flags", e.Flags}} {
		if len(f.v) > maxText || !utf8.ValidString(f.v) {
			errs = append(errs, field.Invalid(p.Child(f.name), truncate(f.v), fmt.Sprintf("must be valid UTF-8 of at most %d bytes", maxText)))
		}
	}
	if e.Status < 0 || e.Status > 999 {
		errs = append(errs, field.Invalid(p.Child("status"), e.Status, "must be 0 (no response) or an HTTP status"))
	}
	if e.GRPCStatus < -1 || e.GRPCStatus > 16 {
		errs = append(errs, field.Invalid(p.Child("grpcStatus"), e.GRPCStatus, "must be -1 (not gRPC) or a gRPC code 0..16"))
	}
	if e.Duration < 0 {
		errs = append(errs, field.Invalid(p.Child("duration"), e.Duration, "must be at least 0"))
	}
	return errs
}

func checkDirection(p *field.Path, v string) field.ErrorList {
	if v != telemetry.Inbound && v != telemetry.Outbound {
		return field.ErrorList{field.NotSupported(p, v, []string{telemetry.Inbound, telemetry.Outbound})}
	}
	return nil
}

func checkProtocol(p *field.Path, v string) field.ErrorList {
	switch v {
	case "http", "grpc", "tcp":
		return nil
	}
	return field.ErrorList{field.NotSupported(p, v, []string{"http", "grpc", "tcp"})}
}

// checkName accepts printable UTF-8 of at most maxName bytes.
func checkName(p *field.Path, v string, required bool) field.ErrorList {
	switch {
	case v == "" && required:
		return field.ErrorList{field.Required(p, "")}
	case len(v) > maxName:
		return field.ErrorList{field.TooLong(p, truncate(v), maxName)}
	case !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return field.ErrorList{field.Invalid(p, truncate(v), "must be printable UTF-8")}
	}
	return nil
}

// truncate shortens a bad value for an error message.
func truncate(v string) string {
	if len(v) <= 64 {
		return v
	}
	return v[:64] + "..."
}
