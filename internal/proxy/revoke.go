package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"verge.dev/verge/internal/proxy/config"
)

// Revocation and the enforcement of a listener's mode on connections it
// already accepted.
//
// The control plane lists revoked certificates in the trust bundle secret
// (config.Secret.Revoked, from the validation context's CRL). Update
// publishes the set; every handshake, both ways, refuses a peer whose leaf
// serial is in it (reason "revoked"). Connections already open with such a
// peer are closed gracefully once the set arrives:
//
//   - inbound (Run's goroutine, after each reconcile: listener.enforce):
//     an h1 connection finishes its exchange and closes, an idle one at
//     once; a bridge connection gets GOAWAY and closes after its streams;
//     a net/http connection closes when it next has no request in flight;
//     a TCP connection is closed;
//   - outbound (compileLocked): a cluster whose TLS upstream holds a
//     connection to a revoked peer gets a new one, so that new requests
//     never reach the old connections; those close once idle, and the ones
//     to revoked peers at the latest after Config.DrainTimeout.
//
// The same inbound enforcement closes plaintext connections a listener
// accepted while PERMISSIVE once it becomes STRICT.

// refusedRevoked is the reason label of a peer whose certificate the
// control plane revoked.
const refusedRevoked = "revoked"

// errRevoked tags a handshake refused for a revoked peer certificate.
var errRevoked = errors.New("proxy: peer certificate revoked")

// revokedSet is the published set of revoked serials (big.Int.Text(16)).
type revokedSet = map[string]struct{}

// revokedFrom is the revoked set of s's trust bundle; nil when none.
func revokedFrom(s *config.Snapshot) revokedSet {
	if s == nil {
		return nil
	}
	if sec := s.Secrets[config.SecretTrustBundle]; sec != nil && len(sec.Revoked) > 0 {
		return sec.Revoked
	}
	return nil
}

// setRevoked publishes set and reports whether it differs from the
// previous one.
func (p *Proxy) setRevoked(set revokedSet) bool {
	old := p.revoked.Load()
	if old != nil && maps.Equal(*old, set) || old == nil && len(set) == 0 {
		return false
	}
	p.revoked.Store(&set)
	return true
}

// isRevoked reports whether the certificate of serial is revoked; "" (no
// certificate) never is.
func (p *Proxy) isRevoked(serial string) bool {
	if serial == "" {
		return false
	}
	set := p.revoked.Load()
	if set == nil {
		return false
	}
	_, ok := (*set)[serial]
	return ok
}

// serialOf is a certificate's serial in the form of config.Secret.Revoked.
func serialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// leafSerial is the serial of the peer's leaf certificate, "" without one.
func leafSerial(cs *tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return serialOf(cs.PeerCertificates[0])
}

// notRevoked wraps an authorizer so that a peer whose leaf certificate is
// revoked is refused before anything else is asked of it. It reads the set
// at each handshake.
func (p *Proxy) notRevoked(next tlsconfig.Authorizer) tlsconfig.Authorizer {
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		for _, chain := range chains {
			if len(chain) > 0 && p.isRevoked(serialOf(chain[0])) {
				return fmt.Errorf("authorize peer %s: certificate serial %s: %w", id, serialOf(chain[0]), errRevoked)
			}
		}
		return next(id, chains)
	}
}

// downstreamPeer is what an inbound listener knows of who is at the other
// end of a connection.
type downstreamPeer struct {
	tls bool
	// principal is the peer's SPIFFE ID and serial its leaf certificate's
	// serial; both empty over plaintext.
	principal string
	serial    string
}

// mustClose reports whether a connection of peer, accepted earlier, may no
// longer be served on l's current config: plaintext on a STRICT listener,
// or a peer whose certificate is now revoked.
func (p *Proxy) mustClose(cl *config.Listener, peer downstreamPeer) bool {
	if !peer.tls {
		return tlsMode(cl) == config.TLSStrict
	}
	return p.isRevoked(peer.serial)
}

// enforcing reports whether any accepted connection of l can need closing,
// so that an update with nothing to enforce walks no connection.
func (p *Proxy) enforcing(cl *config.Listener) bool {
	if tlsMode(cl) == config.TLSStrict {
		return true
	}
	set := p.revoked.Load()
	return set != nil && len(*set) > 0 && tlsMode(cl) != config.TLSDisabled
}

// trackUpstream records an outbound TLS connection and its peer's serial,
// until it closes.
func (u *tlsUpstream) trackUpstream(tc *tls.Conn, raw *countedConn) {
	st := tc.ConnectionState()
	serial := leafSerial(&st)
	u.connsMu.Lock()
	if u.conns == nil {
		u.conns = map[*countedConn]string{}
	}
	u.conns[raw] = serial
	u.connsMu.Unlock()
	raw.onClose = func() {
		u.connsMu.Lock()
		delete(u.conns, raw)
		u.connsMu.Unlock()
	}
}

// revokedConns returns the open connections whose peer is revoked.
func (u *tlsUpstream) revokedConns(p *Proxy) []net.Conn {
	if u == nil {
		return nil
	}
	u.connsMu.Lock()
	defer u.connsMu.Unlock()
	var out []net.Conn
	for c, serial := range u.conns {
		if p.isRevoked(serial) {
			out = append(out, c)
		}
	}
	return out
}

// retireRevoked takes u out of service because it holds connections to
// revoked peers: its idle connections close now, busy ones once their
// requests end (bridge) or once idle (net/http), and, after timeout, the
// connections to revoked peers that are still open are cut. u must no
// longer be reachable from the published state.
func (u *tlsUpstream) retireRevoked(bad []net.Conn, timeout time.Duration) {
	u.closeIdle()
	time.AfterFunc(timeout, func() {
		u.closeIdle()
		for _, c := range bad {
			_ = c.Close()
		}
	})
}
