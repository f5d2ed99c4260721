package resilience

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseRetryOn(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    RetryOn
		wantErr string // a substring naming the bad token
	}{
		{name: "empty", in: "", want: 0},
		{name: "blank", in: "  ", want: 0},
		{name: "one", in: "5xx", want: Retry5xx},
		{name: "envoy http set", in: "5xx,gateway-error,reset,connect-failure,retriable-4xx,refused-stream",
			want: Retry5xx | RetryGatewayError | RetryReset | RetryConnectFailure | RetryRetriable4xx | RetryRefusedStream},
		{name: "grpc set with spaces", in: "cancelled, deadline-exceeded ,internal,resource-exhausted,unavailable",
			want: RetryCancelled | RetryDeadlineExceeded | RetryInternal | RetryResourceExhausted | RetryUnavailable},
		{name: "repeat", in: "reset,reset", want: RetryReset},
		{name: "unknown", in: "5xx,bogus", wantErr: `unknown condition "bogus"`},
		{name: "empty token", in: "5xx,,reset", wantErr: `unknown condition ""`},
		{name: "case matters", in: "5XX", wantErr: `"5XX"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRetryOn(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRetryOn(%q) error = %v, want one containing %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRetryOn(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseRetryOn(%q) = %v, want %v", tt.in, got, tt.want)
			}
			back, err := ParseRetryOn(got.String())
			if err != nil || back != got {
				t.Errorf("ParseRetryOn(%q.String() = %q) = %v, %v; want it back", tt.in, got.String(), back, err)
			}
		})
	}
}

func TestShouldRetry(t *testing.T) {
	all, err := ParseRetryOn("5xx,gateway-error,reset,connect-failure,retriable-4xx,refused-stream,cancelled,deadline-exceeded,internal,resource-exhausted,unavailable")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		cond       RetryOn
		status     int
		grpcStatus int
		failure    Failure
		want       bool
	}{
		{name: "5xx on 500", cond: Retry5xx, status: 500, grpcStatus: GRPCStatusNone, want: true},
		{name: "5xx on 599", cond: Retry5xx, status: 599, grpcStatus: GRPCStatusNone, want: true},
		{name: "5xx not on 404", cond: Retry5xx, status: 404, grpcStatus: GRPCStatusNone},
		{name: "5xx on reset", cond: Retry5xx, failure: FailureReset, grpcStatus: GRPCStatusNone, want: true},
		{name: "5xx on connect failure", cond: Retry5xx, failure: FailureConnect, grpcStatus: GRPCStatusNone, want: true},
		{name: "5xx on per-try timeout", cond: Retry5xx, failure: FailureTimeout, grpcStatus: GRPCStatusNone, want: true},
		{name: "gateway-error on 503", cond: RetryGatewayError, status: 503, grpcStatus: GRPCStatusNone, want: true},
		{name: "gateway-error not on 500", cond: RetryGatewayError, status: 500, grpcStatus: GRPCStatusNone},
		{name: "gateway-error on reset", cond: RetryGatewayError, failure: FailureReset, grpcStatus: GRPCStatusNone, want: true},
		{name: "reset on refused stream", cond: RetryReset, failure: FailureRefusedStream, grpcStatus: GRPCStatusNone, want: true},
		{name: "reset not on 503", cond: RetryReset, status: 503, grpcStatus: GRPCStatusNone},
		{name: "connect-failure on connect", cond: RetryConnectFailure, failure: FailureConnect, grpcStatus: GRPCStatusNone, want: true},
		{name: "connect-failure not on reset", cond: RetryConnectFailure, failure: FailureReset, grpcStatus: GRPCStatusNone},
		{name: "refused-stream on refused", cond: RetryRefusedStream, failure: FailureRefusedStream, grpcStatus: GRPCStatusNone, want: true},
		{name: "refused-stream not on reset", cond: RetryRefusedStream, failure: FailureReset, grpcStatus: GRPCStatusNone},
		{name: "retriable-4xx on 409", cond: RetryRetriable4xx, status: 409, grpcStatus: GRPCStatusNone, want: true},
		{name: "retriable-4xx not on 429", cond: RetryRetriable4xx, status: 429, grpcStatus: GRPCStatusNone},
		{name: "overflow never", cond: all, failure: FailureOverflow, grpcStatus: GRPCStatusNone},
		{name: "success never", cond: all, status: 200, grpcStatus: GRPCStatusNone},
		{name: "grpc ok never", cond: all, status: 200, grpcStatus: 0},
		{name: "unavailable", cond: RetryUnavailable, status: 200, grpcStatus: 14, want: true},
		{name: "cancelled", cond: RetryCancelled, status: 200, grpcStatus: 1, want: true},
		{name: "deadline-exceeded", cond: RetryDeadlineExceeded, status: 200, grpcStatus: 4, want: true},
		{name: "resource-exhausted", cond: RetryResourceExhausted, status: 200, grpcStatus: 8, want: true},
		{name: "internal", cond: RetryInternal, status: 200, grpcStatus: 13, want: true},
		{name: "unavailable not under internal", cond: RetryInternal, status: 200, grpcStatus: 14},
		{name: "grpc unknown code", cond: all, status: 200, grpcStatus: 2},
		{name: "empty set", cond: 0, status: 503, grpcStatus: 14, failure: FailureNone},
		{name: "empty set on reset", cond: 0, failure: FailureReset, grpcStatus: GRPCStatusNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ShouldRetry(tt.cond, tt.status, tt.grpcStatus, tt.failure); got != tt.want {
				t.Errorf("ShouldRetry(%v, %d, %d, %d) = %v, want %v", tt.cond, tt.status, tt.grpcStatus, tt.failure, got, tt.want)
			}
		})
	}
}

func TestGRPCStatus(t *testing.T) {
	tests := []struct {
		name            string
		trailer, header http.Header
		want            int
	}{
		{name: "none", want: GRPCStatusNone},
		{name: "trailer", trailer: http.Header{"Grpc-Status": {"14"}}, want: 14},
		{name: "trailers-only", header: http.Header{"Grpc-Status": {"8"}}, want: 8},
		{name: "trailer wins", trailer: http.Header{"Grpc-Status": {"0"}}, header: http.Header{"Grpc-Status": {"8"}}, want: 0},
		{name: "garbage", trailer: http.Header{"Grpc-Status": {"x"}}, want: GRPCStatusNone},
		{name: "negative", trailer: http.Header{"Grpc-Status": {"-3"}}, want: GRPCStatusNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := GRPCStatus(tt.trailer, tt.header); got != tt.want {
				t.Errorf("GRPCStatus() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	// Rand returning n-1 shows each retry's upper bound.
	top := func(n int64) int64 { return n - 1 }
	tests := []struct {
		name string
		b    Backoff
		want []time.Duration // Delay(1), Delay(2), ... with Rand = top
	}{
		{
			name: "envoy defaults",
			b:    Backoff{Rand: top},
			want: []time.Duration{25*time.Millisecond - 1, 75*time.Millisecond - 1, 175*time.Millisecond - 1,
				250*time.Millisecond - 1, 250*time.Millisecond - 1},
		},
		{
			name: "custom",
			b:    Backoff{Base: time.Second, Max: 5 * time.Second, Rand: top},
			want: []time.Duration{time.Second - 1, 3*time.Second - 1, 5*time.Second - 1},
		},
		{
			name: "zero draw",
			b:    Backoff{Rand: func(int64) int64 { return 0 }},
			want: []time.Duration{0, 0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []time.Duration
			for i := range tt.want {
				got = append(got, tt.b.Delay(i+1))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("delays (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBackoffRandomWithinBounds(t *testing.T) {
	b := Backoff{}
	for retry := -1; retry < 100; retry++ {
		for range 20 {
			d := b.Delay(retry)
			if d < 0 || d >= 250*time.Millisecond {
				t.Fatalf("Delay(%d) = %v, want in [0, 250ms)", retry, d)
			}
		}
	}
}

func FuzzParseRetryOn(f *testing.F) {
	for _, s := range []string{"", "5xx", "gateway-error,reset", "cancelled, unavailable", "5xx,,", "bogus"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRetryOn(s)
		if err != nil {
			if r != 0 {
				t.Fatalf("ParseRetryOn(%q) = %v with error %v, want 0", s, r, err)
			}
			return
		}
		if r >= retryOnEnd {
			t.Fatalf("ParseRetryOn(%q) = %#x, has unknown bits", s, uint32(r))
		}
		back, err := ParseRetryOn(r.String())
		if err != nil || back != r {
			t.Fatalf("ParseRetryOn(%q) = %v, formatted %q parses to %v, %v", s, r, r.String(), back, err)
		}
	})
}
