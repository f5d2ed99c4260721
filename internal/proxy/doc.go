// Package proxy is Verge's data plane. It owns the listeners, the HTTP
// router, the per-cluster load balancers (package balancer) and upstream
// connection pools, the TCP proxy and the admin endpoints. It does not own
// where configuration comes from (proxy/xdsclient builds config.Snapshot
// values), the HTTP/1.1 fast-path engine (proxy/h1), the HTTP/2 framing
// and multiplexing of the bridge between proxies (proxy/h2), or anything
// of the control plane: it never links bbolt, etcd or client-go.
//
// Data flow for one request:
//
//	listener with a TLS context (inbound) -> sniff the first byte:
//	    TLS record -> mutual TLS handshake (tls.go), then on "h2":
//	      table reaching only HTTP/1.1 applications -> the HTTP/2 bridge
//	      (bridge.go, package h2) -> h1 engine's pool to the application
//	      otherwise -> net/http's HTTP/2 server, with the peer's SPIFFE ID
//	      in the connection's context
//	    plaintext -> closed and counted (STRICT), or as below (PERMISSIVE)
//	listener (ListenerHTTP) -> sniff the first bytes:
//	    HTTP/1.1 on a table that only reaches HTTP/1.1 clusters -> h1 engine
//	      (TLS endpoints of such clusters, peer proxies: an HTTP/2 stream
//	      over mutual TLS through the bridge's client, bridge.go)
//	    HTTP/2 preface, h2c upgrade (handed back by h1), the rest -> net/http
//	  -> authorization (Listener.Authz, authorize.go): 403 / gRPC 7 on deny
//	  -> route table (virtual host by Host/:authority, first matching route)
//	  -> cluster (weighted choice among the route's clusters)
//	  -> balancer (round robin or least request, per-endpoint in-flight count)
//	  -> pool (per-cluster http.Transport: HTTP/1.1 keep-alive or h2c; for
//	     TLS endpoints, peer proxies, HTTP/2 over mutual TLS whatever the
//	     application spoke, on a few connections per endpoint)
//	  -> upstream, with the response streamed back, trailers included
//
//	listener (ListenerTCP) -> [mutual TLS, ALPN verge-tcp] -> authorization
//	  once per connection -> cluster -> balancer -> dial (mutual TLS to TLS
//	  endpoints) -> copy both ways
//
// Snapshot publication: Update compiles a config.Snapshot (route tables with
// domains indexed and clusters resolved) into an immutable state and
// publishes it through an atomic.Pointer. Each request loads the pointer
// once and uses that state to its end, so a concurrent Update never changes
// a request midway and the request path takes no lock. What must outlive a
// snapshot (balancer counters, pooled connections) lives in per-cluster
// pools carried from one state to the next by cluster name. Listener
// sockets are reconciled by Run's goroutine: new name+address+kind keys are
// opened, removed ones close their socket at once (so that a listener
// renamed or changing kind can bind the same address) and drain in the
// background, unchanged ones keep their connections and just see the new
// state; a listener that cannot bind is retried with backoff.
//
// Revocation (revoke.go): the trust bundle secret of each snapshot lists
// revoked certificate serials; handshakes both ways refuse such peers, and
// connections already open with one are closed gracefully, as are the
// plaintext connections of a listener that turned STRICT.
//
// Shutdown (Run's context ends): Ready turns false, the listeners keep
// accepting for Config.DrainDelay while the control plane tells peers,
// then they stop accepting and drain for up to Config.DrainTimeout.
package proxy
