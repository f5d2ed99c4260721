package resilience

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RetryOn is a set of retry conditions, named as Envoy's x-envoy-retry-on
// and x-envoy-retry-grpc-on values. The zero value retries nothing.
type RetryOn uint32

// The retry conditions. Envoy's documentation (router filter,
// x-envoy-retry-on and x-envoy-retry-grpc-on) defines each.
const (
	// Retry5xx retries a 5xx response, or an attempt that got no response
	// at all (connect failure, reset, refused stream, per-try timeout).
	Retry5xx RetryOn = 1 << iota
	// RetryGatewayError retries 502, 503 and 504, and attempts that got
	// no response (Envoy counts those as gateway errors too).
	RetryGatewayError
	// RetryReset retries attempts that got no response: disconnect,
	// reset, per-try timeout, connect failure.
	RetryReset
	// RetryConnectFailure retries attempts whose connection failed.
	RetryConnectFailure
	// RetryRetriable4xx retries 409 Conflict.
	RetryRetriable4xx
	// RetryRefusedStream retries streams the upstream reset with
	// REFUSED_STREAM (it did not process them).
	RetryRefusedStream
	// RetryCancelled retries gRPC status CANCELLED (1).
	RetryCancelled
	// RetryDeadlineExceeded retries gRPC status DEADLINE_EXCEEDED (4).
	RetryDeadlineExceeded
	// RetryResourceExhausted retries gRPC status RESOURCE_EXHAUSTED (8).
	RetryResourceExhausted
	// RetryInternal retries gRPC status INTERNAL (13).
	RetryInternal
	// RetryUnavailable retries gRPC status UNAVAILABLE (14).
	RetryUnavailable

	retryOnEnd
)

// retryOnNames is in bit order: retryOnNames[i] names 1<<i.
var retryOnNames = [...]string{
	"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
	"cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable",
}

// The gRPC status codes RetryOn knows; google.golang.org/grpc/codes is not
// imported for five constants.
const (
	grpcCancelled         = 1
	grpcDeadlineExceeded  = 4
	grpcResourceExhausted = 8
	grpcInternal          = 13
	grpcUnavailable       = 14
)

// GRPCStatusNone stands for "no gRPC status": the response is not gRPC,
// or it carried no grpc-status.
const GRPCStatusNone = -1

// ParseRetryOn parses a comma-separated list of condition names (spaces
// around names are ignored, repeats are allowed). An empty string is the
// empty set. The error names the first unknown token.
func ParseRetryOn(s string) (RetryOn, error) {
	var r RetryOn
	if strings.TrimSpace(s) == "" {
		return 0, nil
	}
	for tok := range strings.SplitSeq(s, ",") {
		name := strings.TrimSpace(tok)
		bit := RetryOn(0)
		for i, n := range retryOnNames {
			if n == name {
				bit = 1 << i
				break
			}
		}
		if bit == 0 {
			return 0, fmt.Errorf("retry-on: unknown condition %q (want a comma-separated list of %s)",
				name, strings.Join(retryOnNames[:], ", "))
		}
		r |= bit
	}
	return r, nil
}

// String formats r as ParseRetryOn reads it, in a fixed order.
func (r RetryOn) String() string {
	var b strings.Builder
	for i, n := range retryOnNames {
		if r&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n)
		}
	}
	return b.String()
}

// Failure is how an attempt failed without a response.
type Failure uint8

const (
	// FailureNone: the attempt got a response (look at its status).
	FailureNone Failure = iota
	// FailureConnect: the connection to the endpoint could not be made
	// (dial error, refused, connect timeout, TLS handshake failure).
	FailureConnect
	// FailureReset: the connection or stream broke before a complete
	// response head (reset, EOF, protocol error).
	FailureReset
	// FailureRefusedStream: the upstream refused the HTTP/2 stream
	// (RST_STREAM or GOAWAY with REFUSED_STREAM): it did not process it.
	FailureRefusedStream
	// FailureTimeout: the per-try timeout ended the attempt.
	FailureTimeout
	// FailureOverflow: a circuit breaker refused the attempt locally.
	// Never retried (Envoy: an overflow is not an upstream failure).
	FailureOverflow
)

// ShouldRetry reports whether an attempt that ended with the given HTTP
// status (0 if none), gRPC status (GRPCStatusNone if none) and failure may
// be retried under cond. It does not look at budgets, breakers or attempt
// counts; the caller checks those. Safe for concurrent use; no allocation.
//
// An attempt with a failure got no response: status and grpcStatus are
// ignored. Envoy's rules: 5xx and gateway-error retry any failure, reset
// retries any, connect-failure and refused-stream only theirs; an overflow
// is never retried.
func ShouldRetry(cond RetryOn, status, grpcStatus int, failure Failure) bool {
	switch failure {
	case FailureNone:
	case FailureOverflow:
		return false
	default:
		if cond&(Retry5xx|RetryGatewayError|RetryReset) != 0 {
			return true
		}
		return (failure == FailureConnect && cond&RetryConnectFailure != 0) ||
			(failure == FailureRefusedStream && cond&RetryRefusedStream != 0)
	}
	switch {
	case status >= 500 && status <= 599 && cond&Retry5xx != 0:
		return true
	case (status == 502 || status == 503 || status == 504) && cond&RetryGatewayError != 0:
		return true
	case status == http.StatusConflict && cond&RetryRetriable4xx != 0:
		return true
	}
	switch grpcStatus {
	case grpcCancelled:
		return cond&RetryCancelled != 0
	case grpcDeadlineExceeded:
		return cond&RetryDeadlineExceeded != 0
	case grpcResourceExhausted:
		return cond&RetryResourceExhausted != 0
	case grpcInternal:
		return cond&RetryInternal != 0
	case grpcUnavailable:
		return cond&RetryUnavailable != 0
	}
	return false
}

// GRPCStatus returns the grpc-status of a response: from its trailers, or
// from its headers for a trailers-only response (gRPC puts the status in
// the only HEADERS frame when there is no body). GRPCStatusNone when
// neither has a valid one. Either argument may be nil. No allocation.
func GRPCStatus(trailer, header http.Header) int {
	if v := trailer["Grpc-Status"]; len(v) > 0 {
		return ParseGRPCStatus(v[0])
	}
	if v := header["Grpc-Status"]; len(v) > 0 {
		return ParseGRPCStatus(v[0])
	}
	return GRPCStatusNone
}

// ParseGRPCStatus parses a grpc-status value: a decimal code, or
// GRPCStatusNone when it is not one.
func ParseGRPCStatus(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return GRPCStatusNone
	}
	return n
}

// Envoy's defaults for retry backoff.
const (
	DefaultBackoffBase = 25 * time.Millisecond
	backoffMaxFactor   = 10
)

// Backoff is Envoy's fully jittered exponential backoff between retries:
// for retry N (1 for the first) the delay is drawn uniformly from
// [0, (2^N - 1) * Base), and that bound is capped at Max. So with the
// defaults the first retry waits 0-25 ms, the second 0-75 ms, the third
// 0-175 ms, and none waits 250 ms or more (Envoy's router documentation,
// "x-envoy-max-retries"). Full jitter spreads the retries of many clients
// that failed together instead of synchronizing them.
//
// A Backoff holds no state and is safe for concurrent use.
type Backoff struct {
	// Base is the delay unit; zero means DefaultBackoffBase.
	Base time.Duration
	// Max caps the delay bound; zero means 10 * Base.
	Max time.Duration
	// Rand returns a uniform value in [0, n) for n > 0; nil means
	// math/rand/v2's Int64N. Tests set it to make delays deterministic.
	Rand func(n int64) int64
}

// Delay returns the wait before retry number retry (1 for the first retry;
// values below 1 count as 1).
func (b Backoff) Delay(retry int) time.Duration {
	base := b.Base
	if base <= 0 {
		base = DefaultBackoffBase
	}
	limit := b.Max
	if limit <= 0 {
		limit = backoffMaxFactor * base
	}
	retry = max(retry, 1)
	// (2^retry - 1) * base, saturating at limit without overflowing.
	bound := limit
	if retry < 63 {
		hi, lo := bits.Mul64(uint64(1)<<retry-1, uint64(base))
		if hi == 0 && lo < uint64(limit) {
			bound = time.Duration(lo)
		}
	}
	if bound <= 0 {
		return 0
	}
	rnd := b.Rand
	if rnd == nil {
		rnd = rand.Int64N
	}
	return time.Duration(rnd(int64(bound)))
}
