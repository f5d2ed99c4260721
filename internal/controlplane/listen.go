package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
)

// Reasons of verge_cp_connections_refused_total.
const (
	refusedPlaintextNotLoopback = "plaintext_not_loopback"
	refusedTLSHandshake         = "tls_handshake"
	refusedTimeout              = "timeout"
	// refusedGarbage is plaintext from loopback that cannot be the port's
	// protocol (not an HTTP request line on the API port, not the HTTP/2
	// preface on the xDS port).
	refusedGarbage = "garbage"
	// refusedRevoked is a TLS client whose certificate the CA revoked.
	refusedRevoked = "revoked"
)

var refusedReasons = []string{refusedPlaintextNotLoopback, refusedTLSHandshake, refusedTimeout, refusedGarbage, refusedRevoked}

// errRevokedClientCert fails the handshake of a client presenting a
// revoked certificate.
var errRevokedClientCert = errors.New("client certificate is revoked")

// defaultHandshakeTimeout bounds how long a new connection may take to send
// its first bytes and, for TLS, finish the handshake.
const defaultHandshakeTimeout = 10 * time.Second

// maxPendingConns bounds connections being sniffed or handshaken at once;
// beyond it the port stops accepting until some finish.
const maxPendingConns = 512

// tlsRecordHandshake is the first byte of every TLS connection: the record
// type of the ClientHello.
const tlsRecordHandshake = 0x16

// http2Preface opens every HTTP/2 connection with prior knowledge, which is
// how gRPC speaks plaintext.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// connKind is what a port does with a new connection.
type connKind int

const (
	connRefuse connKind = iota
	connTLS
	connPlaintext
)

// classify decides from a connection's first byte and its peer what the
// port does with it: TLS from anywhere, plaintext only from loopback,
// because a plaintext caller can prove nothing and must at least be on this
// host. reason says why a connection is refused.
func classify(first byte, remote net.Addr) (kind connKind, reason string) {
	if first == tlsRecordHandshake {
		return connTLS, ""
	}
	if !isLoopback(remote) {
		return connRefuse, refusedPlaintextNotLoopback
	}
	return connPlaintext, ""
}

func isLoopback(a net.Addr) bool {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.IsLoopback()
	}
	if a == nil {
		return false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// portConfig is how one port (API or xDS) treats its connections.
type portConfig struct {
	// name is the port label: "api" or "xds".
	name string
	tls  *tls.Config
	// plaintextOK checks the first bytes of a plaintext connection;
	// plaintextPeek is how many it needs.
	plaintextOK   func([]byte) bool
	plaintextPeek int
	timeout       time.Duration
	refused       *prometheus.CounterVec
	logger        *slog.Logger
}

// apiPlaintextOK accepts what can start an HTTP/1.1 request line: a method
// is upper-case letters.
func apiPlaintextOK(b []byte) bool { return len(b) == 1 && b[0] >= 'A' && b[0] <= 'Z' }

func xdsPlaintextOK(b []byte) bool { return bytes.Equal(b, http2Preface) }

// dualListener serves TLS and plaintext on one port. A goroutine per new
// connection reads its first bytes (and, for TLS, completes the handshake)
// within the port's timeout, so that a slow or silent client never holds up
// Accept; connections that pass come out of Accept as *tls.Conn (TLS: net/http
// sets Request.TLS from it and dualCredentials hands its state to gRPC) or
// as the plain connection. Refusals are closed, logged and counted.
type dualListener struct {
	inner net.Listener
	cfg   portConfig

	ready   chan net.Conn
	done    chan struct{} // closed when the accept loop has ended
	closing chan struct{} // closed by Close
	sem     chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	// err is why the accept loop ended; written before done is closed.
	err error

	// mu guards pending: connections still being sniffed, closed by Close
	// so that it does not wait out their timeouts.
	mu      sync.Mutex
	pending map[net.Conn]struct{}
}

func newDualListener(inner net.Listener, cfg portConfig) *dualListener {
	if cfg.timeout <= 0 {
		cfg.timeout = defaultHandshakeTimeout
	}
	l := &dualListener{
		inner:   inner,
		cfg:     cfg,
		ready:   make(chan net.Conn),
		done:    make(chan struct{}),
		closing: make(chan struct{}),
		sem:     make(chan struct{}, maxPendingConns),
		pending: map[net.Conn]struct{}{},
	}
	l.wg.Go(l.acceptLoop)
	return l
}

func (l *dualListener) Addr() net.Addr { return l.inner.Addr() }

// Accept returns the next connection that passed the port's checks.
func (l *dualListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// Close stops accepting, closes connections still being checked and waits
// for the listener's goroutines.
func (l *dualListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closing)
		err = l.inner.Close()
		l.mu.Lock()
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *dualListener) acceptLoop() {
	defer close(l.done)
	var backoff time.Duration
	for {
		select {
		case l.sem <- struct{}{}:
		case <-l.closing:
			l.err = net.ErrClosed
			return
		}
		c, err := l.inner.Accept()
		if err != nil {
			<-l.sem
			select {
			case <-l.closing:
				l.err = net.ErrClosed
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.err = err
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than stop serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.cfg.logger.Warn("accept failed, retrying", "port", l.cfg.name, "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-l.closing:
				l.err = net.ErrClosed
				return
			}
			continue
		}
		backoff = 0
		l.mu.Lock()
		select {
		case <-l.closing:
			// Close already closed the pending connections.
			l.mu.Unlock()
			c.Close()
			<-l.sem
			l.err = net.ErrClosed
			return
		default:
		}
		l.pending[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(func() {
			defer func() { <-l.sem }()
			conn := l.sniff(c)
			l.mu.Lock()
			delete(l.pending, c)
			l.mu.Unlock()
			if conn == nil {
				c.Close()
				return
			}
			select {
			case l.ready <- conn:
			case <-l.closing:
				conn.Close()
			}
		})
	}
}

// sniff returns the connection to serve, or nil when it is refused.
func (l *dualListener) sniff(c net.Conn) net.Conn {
	remote := c.RemoteAddr()
	if err := c.SetDeadline(time.Now().Add(l.cfg.timeout)); err != nil {
		return nil
	}
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		l.failed(remote, "", err)
		return nil
	}
	pc := &peekedConn{Conn: c, r: br}
	kind, reason := classify(first[0], remote)
	switch kind {
	case connTLS:
		tc := tls.Server(pc, l.cfg.tls)
		if err := tc.HandshakeContext(context.Background()); err != nil {
			l.failed(remote, refusedTLSHandshake, err)
			return nil
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			return nil
		}
		return tc
	case connPlaintext:
		if l.cfg.plaintextOK != nil {
			b, err := br.Peek(l.cfg.plaintextPeek)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil // a short read that is not a timeout: judge what came
			}
			if err != nil {
				l.failed(remote, "", err)
				return nil
			}
			if !l.cfg.plaintextOK(b) {
				l.refuse(remote, refusedGarbage, "plaintext that is not the port's protocol", "first_bytes", printable(b))
				return nil
			}
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			return nil
		}
		return pc
	default:
		l.refuse(remote, reason, "plaintext from a non-loopback peer: use TLS")
		return nil
	}
}

// failed counts and logs a connection that failed before it could be
// served: a timeout or handshake error is refused; a client that simply
// closed is logged at debug only (port scanners, health checks).
func (l *dualListener) failed(remote net.Addr, reason string, err error) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		l.refuse(remote, refusedTimeout, "no data or handshake within the timeout", "timeout", l.cfg.timeout)
	case errors.Is(err, errRevokedClientCert):
		l.refuse(remote, refusedRevoked, "tls handshake failed", "err", err)
	case reason != "":
		l.refuse(remote, reason, "tls handshake failed", "err", err)
	default:
		l.cfg.logger.Debug("connection closed before its first byte", "port", l.cfg.name, "remote_addr", remote.String(), "err", err)
	}
}

func (l *dualListener) refuse(remote net.Addr, reason, why string, attrs ...any) {
	l.cfg.refused.WithLabelValues(l.cfg.name, reason).Inc()
	l.cfg.logger.Warn("connection refused", append([]any{"port", l.cfg.name, "reason", reason, "detail", why, "remote_addr", remote.String()}, attrs...)...)
}

// printable renders the first bytes of a refused connection for the log.
func printable(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			out = append(out, c)
		} else {
			out = append(out, '.')
		}
	}
	return string(out)
}

// peekedConn reads first what sniffing buffered.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// serverTLS is a port's TLS configuration: the control plane's SVID, TLS 1.3
// only, and client certificates requested but optional. A certificate that
// is sent must be an SVID of the trust domain that verifies against the
// current bundle (go-spiffe) and must not be revoked (revoked, when not nil,
// reports it by serial), else the handshake fails; who may do what is
// decided per request (apiserver.Guard, xds.Authenticator).
func serverTLS(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain, alpn []string, revoked func(*big.Int) bool) *tls.Config {
	c := tlsconfig.TLSServerConfig(svid)
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = alpn
	c.ClientAuth = tls.RequestClientCert
	verify := tlsconfig.VerifyPeerCertificate(bundle, tlsconfig.AuthorizeMemberOf(td))
	c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil // callers without a certificate authenticate with a bearer token or not at all
		}
		if err := verify(raw, chains); err != nil {
			return err
		}
		if revoked == nil {
			return nil
		}
		// crypto/tls leaves chains empty with RequestClientCert (go-spiffe
		// verified raw above), so the leaf is parsed here.
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		if revoked(leaf.SerialNumber) {
			return fmt.Errorf("%w: serial %s", errRevokedClientCert, leaf.SerialNumber.Text(16))
		}
		return nil
	}
	return c
}

// dualCredentials are the xDS port's gRPC transport credentials. The
// handshake already happened in dualListener; they only report it: a TLS
// connection's state (with the client certificate, for xds.Authenticator),
// or no security for plaintext from loopback.
type dualCredentials struct{}

func (dualCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("dual credentials: server side only")
}

func (dualCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if tc, ok := c.(*tls.Conn); ok {
		return tc, credentials.TLSInfo{
			State:          tc.ConnectionState(),
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		}, nil
	}
	return c, plaintextInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (dualCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c dualCredentials) Clone() credentials.TransportCredentials { return c }

func (dualCredentials) OverrideServerName(string) error { return nil }

type plaintextInfo struct{ credentials.CommonAuthInfo }

func (plaintextInfo) AuthType() string { return "insecure" }
