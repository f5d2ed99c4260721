// Package fault owns the proxy's fault injection decisions, in the shape
// of Envoy's HTTP fault filter: delay a share of matching requests by a
// fixed duration, abort a share with an HTTP status or a gRPC status code,
// shares given as Envoy's FractionalPercent (per hundred, ten thousand or
// million, so down to 0.0001%), requests selected by headers, and at most
// MaxActive faults in progress at once. It decides only: the proxy sleeps,
// writes the abort response and calls Done. It does not own route
// matching (one Filter per route that carries a fault) nor the API type
// the configuration comes from.
//
// How the proxy calls it, per request on a route with a Filter:
//
//	d := f.Decide(lookup) // lookup: the request's headers, lower-case names
//	if d.Active() {
//		defer f.Done()
//		if d.Delay > 0 { wait d.Delay or the request's context }
//		if d.HTTPStatus != 0 { reply with that status }
//		if d.GRPCStatus != 0 { reply with grpc-status d.GRPCStatus }
//	}
//
// Decide does not allocate.
package fault

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"
)

// Denominator is the unit of a Percent's numerator, as Envoy's
// FractionalPercent.DenominatorType.
type Denominator uint8

const (
	// Hundred makes the numerator a percentage.
	Hundred Denominator = iota
	// TenThousand makes the numerator hundredths of a percent.
	TenThousand
	// Million makes the numerator ten-thousandths of a percent.
	Million
)

func (d Denominator) value() uint64 {
	switch d {
	case Hundred:
		return 100
	case TenThousand:
		return 10_000
	case Million:
		return 1_000_000
	}
	return 0
}

// Percent is a share of requests: Numerator out of Denominator.
type Percent struct {
	Numerator   uint32
	Denominator Denominator
}

// String formats p as a percentage, e.g. "0.0001%".
func (p Percent) String() string {
	switch p.Denominator {
	case TenThousand:
		return fmt.Sprintf("%g%%", float64(p.Numerator)/100)
	case Million:
		return fmt.Sprintf("%g%%", float64(p.Numerator)/10_000)
	}
	return fmt.Sprintf("%d%%", p.Numerator)
}

func (p Percent) validate() error {
	d := p.Denominator.value()
	if d == 0 {
		return fmt.Errorf("denominator: invalid value %d: must be HUNDRED (0), TEN_THOUSAND (1) or MILLION (2)", p.Denominator)
	}
	if uint64(p.Numerator) > d {
		return fmt.Errorf("numerator: invalid value %d: must be at most %d (the denominator)", p.Numerator, d)
	}
	return nil
}

// hit reports whether the random draw r falls in p's share. The modulo's
// bias over 64 random bits is below 1e-13.
func (p Percent) hit(r uint64) bool {
	return r%p.Denominator.value() < uint64(p.Numerator)
}

// Delay delays a share of requests by a fixed duration.
type Delay struct {
	Fixed   time.Duration
	Percent Percent
}

// Abort ends a share of requests with an error response: exactly one of
// HTTPStatus (200-599, as Envoy) and GRPCStatus (1-16) is set.
type Abort struct {
	HTTPStatus int
	GRPCStatus int
	Percent    Percent
}

// MatchKind says how a HeaderMatch compares a header's value.
type MatchKind uint8

const (
	// MatchExact matches a header whose value equals Value.
	MatchExact MatchKind = iota
	// MatchPrefix matches a header whose value starts with Value.
	MatchPrefix
	// MatchPresent matches a header that is present, whatever its value.
	MatchPresent
)

// HeaderMatch selects requests by one header.
type HeaderMatch struct {
	// Name is the header's name; New lower-cases it, and the proxy's
	// lookup gets it in lower case.
	Name  string
	Kind  MatchKind
	Value string
	// Invert selects the requests the match does not.
	Invert bool
}

// Config configures a Filter. The caller does not touch it after New.
type Config struct {
	// Delay and Abort may both be set (a delayed request may then be
	// aborted too, as Envoy does); at least one must be.
	Delay *Delay
	Abort *Abort
	// Headers must all match for a request to be eligible.
	Headers []HeaderMatch
	// MaxActive caps the faults in progress (Decide returned Active and
	// Done was not yet called); 0 means no cap, as Envoy's unset
	// max_active_faults.
	MaxActive int
	// Rand returns uniformly random bits; nil uses math/rand/v2. Tests
	// inject a deterministic source. It must be safe for concurrent use.
	Rand func() uint64
}

// Filter decides faults for one route. It is safe for concurrent use.
type Filter struct {
	delay     Delay
	hasDelay  bool
	abort     Abort
	hasAbort  bool
	headers   []HeaderMatch
	maxActive int64
	rand      func() uint64

	active atomic.Int64
	// Counters for metrics.
	delays, aborts, overflow atomic.Uint64
}

// New validates c and returns its Filter. The error lists every problem,
// each naming its field.
func New(c Config) (*Filter, error) {
	var errs []error
	if c.Delay == nil && c.Abort == nil {
		errs = append(errs, errors.New("delay, abort: must set at least one"))
	}
	if d := c.Delay; d != nil {
		if d.Fixed <= 0 {
			errs = append(errs, fmt.Errorf("delay.fixed: invalid value %v: must be positive", d.Fixed))
		}
		if err := d.Percent.validate(); err != nil {
			errs = append(errs, fmt.Errorf("delay.percent.%w", err))
		}
	}
	if a := c.Abort; a != nil {
		switch {
		case a.HTTPStatus != 0 && a.GRPCStatus != 0:
			errs = append(errs, fmt.Errorf("abort: httpStatus %d and grpcStatus %d: must set only one", a.HTTPStatus, a.GRPCStatus))
		case a.HTTPStatus == 0 && a.GRPCStatus == 0:
			errs = append(errs, errors.New("abort: must set httpStatus or grpcStatus"))
		case a.HTTPStatus != 0 && (a.HTTPStatus < 200 || a.HTTPStatus > 599):
			errs = append(errs, fmt.Errorf("abort.httpStatus: invalid value %d: must be in [200, 599]", a.HTTPStatus))
		case a.GRPCStatus != 0 && (a.GRPCStatus < 1 || a.GRPCStatus > 16):
			errs = append(errs, fmt.Errorf("abort.grpcStatus: invalid value %d: must be in [1, 16]", a.GRPCStatus))
		}
		if err := a.Percent.validate(); err != nil {
			errs = append(errs, fmt.Errorf("abort.percent.%w", err))
		}
	}
	headers := make([]HeaderMatch, len(c.Headers))
	for i, h := range c.Headers {
		if h.Name == "" {
			errs = append(errs, fmt.Errorf("headers[%d].name: must not be empty", i))
		}
		if h.Kind > MatchPresent {
			errs = append(errs, fmt.Errorf("headers[%d].kind: invalid value %d", i, h.Kind))
		}
		h.Name = strings.ToLower(h.Name)
		headers[i] = h
	}
	if c.MaxActive < 0 {
		errs = append(errs, fmt.Errorf("maxActive: invalid value %d: must be at least 0", c.MaxActive))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("fault: %w", err)
	}
	f := &Filter{headers: headers, maxActive: int64(c.MaxActive), rand: c.Rand}
	if c.Delay != nil {
		f.delay, f.hasDelay = *c.Delay, true
	}
	if c.Abort != nil {
		f.abort, f.hasAbort = *c.Abort, true
	}
	if f.rand == nil {
		f.rand = rand.Uint64
	}
	return f, nil
}

// Decision is what to do to one request. The zero value means nothing.
type Decision struct {
	// Delay is how long to hold the request before going on; 0 for none.
	Delay time.Duration
	// HTTPStatus, when not 0, ends the request with this status (after
	// Delay).
	HTTPStatus int
	// GRPCStatus, when not 0, ends the request with this gRPC status code
	// (after Delay).
	GRPCStatus int
}

// Active reports whether d injects a fault; the caller then calls Done
// once the fault is over (the delay elapsed or was cut short, the abort
// response written).
func (d Decision) Active() bool { return d.Delay > 0 || d.HTTPStatus != 0 || d.GRPCStatus != 0 }

// Lookup returns the value of a request header by lower-case name and
// whether it is present. For several values the proxy passes the first,
// as Envoy's header matcher sees them joined; Decide only calls it.
type Lookup func(name string) (value string, ok bool)

// Decide draws the faults for one request whose headers lookup reads.
// When it returns an Active decision it has counted the fault as in
// progress, and the caller must call Done when it is over.
func (f *Filter) Decide(lookup Lookup) Decision {
	for i := range f.headers {
		if !f.headers[i].matches(lookup) {
			return Decision{}
		}
	}
	var d Decision
	if f.hasDelay && f.delay.Percent.hit(f.rand()) {
		d.Delay = f.delay.Fixed
	}
	if f.hasAbort && f.abort.Percent.hit(f.rand()) {
		d.HTTPStatus, d.GRPCStatus = f.abort.HTTPStatus, f.abort.GRPCStatus
	}
	if !d.Active() {
		return d
	}
	if !f.enter() {
		f.overflow.Add(1)
		return Decision{}
	}
	if d.Delay > 0 {
		f.delays.Add(1)
	}
	if d.HTTPStatus != 0 || d.GRPCStatus != 0 {
		f.aborts.Add(1)
	}
	return d
}

// enter counts a fault in progress unless MaxActive are.
func (f *Filter) enter() bool {
	if f.maxActive == 0 {
		f.active.Add(1)
		return true
	}
	for {
		n := f.active.Load()
		if n >= f.maxActive {
			return false
		}
		if f.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Done ends a fault that Decide returned as Active.
func (f *Filter) Done() { f.active.Add(-1) }

// Stats are a Filter's counters since New, for metrics.
type Stats struct {
	// Active is the faults in progress.
	Active int64
	// Delays and Aborts count the faults injected (a request both delayed
	// and aborted counts in both).
	Delays, Aborts uint64
	// Overflow counts faults skipped because MaxActive were in progress.
	Overflow uint64
}

// Stats returns the Filter's counters.
func (f *Filter) Stats() Stats {
	return Stats{Active: f.active.Load(), Delays: f.delays.Load(), Aborts: f.aborts.Load(), Overflow: f.overflow.Load()}
}

func (h *HeaderMatch) matches(lookup Lookup) bool {
	v, ok := lookup(h.Name)
	switch h.Kind {
	case MatchExact:
		ok = ok && v == h.Value
	case MatchPrefix:
		ok = ok && strings.HasPrefix(v, h.Value)
	}
	return ok != h.Invert
}
