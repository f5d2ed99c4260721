package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/h1"
	"verge.dev/verge/internal/proxy/h2"
)

// Request mirroring: a copy of a request, taken on the request path, is
// sent to a shadow cluster from a goroutine of its own (bounded by
// trafficMetrics.mirrorSlots and a deadline) and its answer discarded, so
// the caller never waits for it. The copy goes the way a request to that
// cluster would: the h1 pool to plaintext HTTP/1.1 endpoints, the bridge to
// TLS endpoints of an HTTP/1.1 cluster, the cluster's net/http transport
// otherwise.

// errNoMirrorEndpoint: the mirror cluster has no endpoint to send to.
var errNoMirrorEndpoint = errors.New("mirror: no endpoint")

// mirrorCopy is a request copied for a mirror; it owns its memory.
type mirrorCopy struct {
	method, target, host string
	// fields are the end-to-end fields, names lower case.
	fields []h1.Field
	body   []byte
}

// copyOutRequest copies an h1 engine request; false when its body is too
// large or of unknown length to keep.
func copyOutRequest(req *h1.OutRequest) (*mirrorCopy, bool) {
	cp := &mirrorCopy{method: req.Method, target: strings.Clone(req.Target), host: strings.Clone(req.Host)}
	if req.Fields != nil {
		for name, value := range req.Fields {
			cp.fields = append(cp.fields, h1.Field{Name: strings.ToLower(name), Value: strings.Clone(value)})
		}
	}
	if req.Body != nil && req.ContentLength != 0 {
		if req.ContentLength < 0 || req.ContentLength > maxRetryBody {
			return nil, false
		}
		cp.body = make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, cp.body); err != nil {
			return nil, false
		}
	}
	return cp, true
}

// copyHTTPRequest copies a net/http request as forwarded: target is the
// (rewritten) request-target, header the edited header, body the whole
// body (nil for none).
func copyHTTPRequest(r *http.Request, target, host string, header http.Header, body []byte) *mirrorCopy {
	cp := &mirrorCopy{method: r.Method, target: target, host: host, body: body}
	for k, vv := range header {
		lk := strings.ToLower(k)
		for _, v := range vv {
			cp.fields = append(cp.fields, h1.Field{Name: lk, Value: v})
		}
	}
	return cp
}

// mirrorTo sends cp to the named cluster of st without waiting.
func (p *Proxy) mirrorTo(st *state, clusterName string, cp *mirrorCopy) {
	cl := st.clusters[clusterName]
	if cl == nil {
		p.trafficMetrics.mirrors.WithLabelValues(clusterName, "failed").Inc()
		return
	}
	p.trafficMetrics.startMirror(clusterName, func() error { return p.sendMirror(cl, cp) })
}

// sendMirror sends cp to one endpoint of cl and discards the answer.
func (p *Proxy) sendMirror(cl *cluster, cp *mirrorCopy) error {
	ep := cl.bal.Pick()
	if ep == nil {
		return errNoMirrorEndpoint
	}
	defer ep.Done()
	deadline := time.Now().Add(mirrorTimeout)
	host := shadowHost(cp.host)
	tlsEP := cl.isTLS(ep.Address)
	if tlsEP && cl.tls.err != nil {
		return cl.tls.err
	}
	var body io.Reader
	if len(cp.body) > 0 {
		body = bytes.NewReader(cp.body)
	}
	switch {
	case tlsEP && cl.cfg.Protocol == config.UpstreamHTTP1 && p.bridgeOut():
		hdr := make([]hpack.HeaderField, 0, len(cp.fields))
		for _, f := range cp.fields {
			hdr = append(hdr, hpack.HeaderField{Name: f.Name, Value: f.Value})
		}
		req := h2.Request{Method: cp.method, Authority: host, Path: cp.target, Header: hdr,
			Body: body, ContentLength: int64(len(cp.body)), Deadline: deadline}
		res, err := cl.tls.h2Client().RoundTrip(ep.Address, &req)
		if err != nil {
			return err
		}
		defer res.Close()
		_, err = io.Copy(io.Discard, res)
		return err
	case !tlsEP && cl.cfg.Protocol == config.UpstreamHTTP1 && p.h1Pool != nil:
		req := h1.OutRequest{Method: cp.method, Target: cp.target, Host: host,
			Fields: func(yield func(name, value string) bool) {
				for _, f := range cp.fields {
					if !yield(f.Name, f.Value) {
						return
					}
				}
			},
			Body: body, ContentLength: int64(len(cp.body)), Deadline: deadline}
		res, err := p.h1Pool.RoundTrip(ep.Address, &req)
		if err != nil {
			return err
		}
		defer res.Close()
		_, err = io.Copy(io.Discard, res)
		return err
	}
	tr, scheme := http.RoundTripper(nil), "http"
	if tlsEP {
		tr, scheme = cl.tls.transport(), "https"
	} else {
		tr = cl.up.transport()
	}
	u, err := url.Parse(scheme + "://" + ep.Address + cp.target)
	if err != nil {
		return fmt.Errorf("mirror target %q: %w", cp.target, err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	req := &http.Request{Method: cp.method, URL: u, Host: host, Header: http.Header{},
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, ContentLength: int64(len(cp.body))}
	for _, f := range cp.fields {
		req.Header.Add(f.Name, f.Value)
	}
	if body != nil {
		req.Body = io.NopCloser(body)
	}
	res, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, err = io.Copy(io.Discard, res.Body)
	return err
}
