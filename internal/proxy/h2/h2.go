// Package h2 is the HTTP/2 hop between two Verge proxies: a client that
// carries requests as streams over a few mutual TLS connections per peer
// (Client), and a server that reads such streams and hands each to a
// Handler (ServeConn). It owns the multiplexing only: framing and header
// compression are golang.org/x/net/http2's Framer and hpack; TLS, routing,
// authorization and the application side belong to package proxy and the
// HTTP/1.1 engine (proxy/h1).
//
// Why not net/http: between two proxies each request crossed, on each side,
// net/http's connection reader, a handler goroutine and the Transport's or
// server's frame writer goroutine, with channel hand-offs between them and
// a response header map, request and body objects per request. On the
// project's 2-core box BenchmarkTwoProxies measured mTLS over net/http's
// HTTP/2 at 25-35% of the plaintext HTTP/1.1 fast path; the floor is 85%.
// Here a request costs one wake-up per side: writes happen on the caller's
// goroutine under the connection's write mutex, into a bufio.Writer that a
// flusher goroutine per connection flushes after the goroutines ready to
// run had their turn (wire.unlockBatched), so that concurrent streams share
// TLS records and syscalls; one reader goroutine per connection dispatches
// frames to streams, decoding header blocks with its own reused HPACK
// decoder (headers.go).
//
// What is implemented of RFC 9113: SETTINGS (with ack), PING ack, flow
// control both ways (4 MiB per stream, 16 MiB per connection, credited as
// data is consumed), MAX_CONCURRENT_STREAMS, CONTINUATION, padding, GOAWAY
// (graceful on both sides), RST_STREAM; PRIORITY frames and unknown frames
// are ignored; server push is never sent nor accepted. Request and
// response trailers are read and dropped: the bridge is used only for
// HTTP/1.1 applications, and HTTP/2 or gRPC services keep net/http.
package h2

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/net/http2"
)

// Flow control and framing parameters, the same on both sides.
const (
	// streamWindow and connWindow are what each side lets its peer send
	// before credit comes back: large, so that a bulk stream over a
	// loopback or LAN hop is not throttled at 64 KiB per round trip.
	streamWindow = 4 << 20
	connWindow   = 16 << 20
	// creditStep is how much consumed data is credited back at once
	// (WINDOW_UPDATE), per stream and per connection.
	creditStep = 1 << 20
	// readFrameSize is the largest frame the peer may send.
	readFrameSize = 64 << 10
	// maxHeaderListSize bounds a decoded header section.
	maxHeaderListSize = 64 << 10
	// defaultWindow and defaultFrameSize are RFC 9113's initial values,
	// in force until the peer's SETTINGS arrive.
	defaultWindow    = 65535
	defaultFrameSize = 16 << 10
	// writeTimeout bounds how long a flush may make no progress: a peer
	// that stopped reading would otherwise hold every stream of the
	// connection.
	writeTimeout = 30 * time.Second
	// handshakeTimeout bounds the wait for the peer's preface and first
	// SETTINGS frame.
	handshakeTimeout = 10 * time.Second
)

// Errors a caller branches on.
var (
	// ErrRefused: the peer did not process the stream (REFUSED_STREAM, or
	// above the last stream ID of its GOAWAY); it is safe to retry.
	ErrRefused = errors.New("h2: stream refused by peer")
	// ErrClosed: the connection or client was closed.
	ErrClosed = errors.New("h2: connection closed")
	// ErrTimeout: the stream's deadline passed.
	ErrTimeout = errors.New("h2: stream deadline exceeded")
)

// Timeout marks ErrTimeout as a timeout for callers that test net.Error.
func (e *streamError) Timeout() bool { return errors.Is(e.err, ErrTimeout) }

// streamError is why a stream ended early: a reset by the peer (code) or a
// local cause.
type streamError struct {
	code http2.ErrCode
	err  error
}

func (e *streamError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("h2: stream reset by peer: %v", e.code)
}

func (e *streamError) Unwrap() error { return e.err }

// resetError is the error of a stream the peer reset with code.
func resetError(code http2.ErrCode) error {
	if code == http2.ErrCodeRefusedStream {
		return &streamError{code: code, err: ErrRefused}
	}
	return &streamError{code: code}
}
