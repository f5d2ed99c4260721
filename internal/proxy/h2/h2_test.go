package h2

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoHandler answers every stream with its request body, a header naming
// the method and path, and content-length when the request had one.
type echoHandler struct{}

func (echoHandler) ServeStream(s *Stream) {
	body, err := io.ReadAll(s)
	if err != nil {
		return // reset: nobody to answer
	}
	hdr := []hpack.HeaderField{{Name: "x-seen", Value: s.Method + " " + s.Path}}
	if s.ContentLength >= 0 {
		hdr = append(hdr, hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	}
	if len(body) == 0 {
		_ = s.WriteHeader(200, hdr, true, true)
		return
	}
	if s.WriteHeader(200, hdr, false, false) != nil {
		return
	}
	for len(body) > 0 {
		n := min(len(body), 100<<10)
		if s.WriteData(body[:n], n == len(body), true) != nil {
			return
		}
		body = body[n:]
	}
}

// startServer serves h with ServeConn on a loopback listener (HTTP/2 with
// prior knowledge) until the test ends.
func startServer(t *testing.T, h Handler, cfg ServerConfig) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { _ = ServeConn(ctx, c, h, cfg) })
		}
	})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// stdClient is x/net's HTTP/2 client speaking prior knowledge over TCP.
func stdClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + i/509)
	}
	return b
}

func TestServerWithStandardClient(t *testing.T) {
	addr := startServer(t, echoHandler{}, ServerConfig{})
	client := stdClient(t)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			payload := pattern(i * 97 << 10) // up to ~3.7 MiB, past every window
			res, err := client.Post("http://"+addr+"/echo/"+strconv.Itoa(i), "application/octet-stream", bytes.NewReader(payload))
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || res.StatusCode != 200 || !bytes.Equal(got, payload) || res.Header.Get("X-Seen") != "POST /echo/"+strconv.Itoa(i) {
				errs <- fmt.Errorf("request %d: status %d, %d of %d bytes, seen %q, %v", i, res.StatusCode, len(got), len(payload), res.Header.Get("X-Seen"), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// stdServer is x/net's HTTP/2 server with prior knowledge on loopback.
func stdServer(t *testing.T, h http.Handler, maxStreams uint32) (string, *http.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: protos, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: int(maxStreams)}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), srv
}

func newTestClient(t *testing.T) *Client {
	t.Helper()
	c := NewClient(ClientConfig{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}})
	t.Cleanup(c.Close)
	return c
}

func roundTrip(c *Client, addr, method, path string, body []byte, length int64) (int, http.Header, []byte, error) {
	req := &Request{Method: method, Authority: "test", Path: path, ContentLength: length, Deadline: time.Now().Add(30 * time.Second)}
	if body != nil {
		req.Body = bytes.NewReader(body)
	}
	res, err := c.RoundTrip(addr, req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer res.Close()
	got, err := io.ReadAll(res)
	h := http.Header{}
	for _, f := range res.Header {
		h.Add(f.Name, f.Value)
	}
	return res.Status, h, got, err
}

func TestClientWithStandardServer(t *testing.T) {
	var mu sync.Mutex
	inflight, peak := map[string]int{}, 0 // by client connection
	addr, _ := stdServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inflight[r.RemoteAddr]++
		peak = max(peak, inflight[r.RemoteAddr])
		mu.Unlock()
		defer func() { mu.Lock(); inflight[r.RemoteAddr]--; mu.Unlock() }()
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Len", strconv.Itoa(len(body)))
		w.Header().Set("X-Authority", r.Host)
		time.Sleep(5 * time.Millisecond) // let streams overlap
		_, _ = w.Write(body)
	}), 3)
	c := newTestClient(t)
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() {
			payload := pattern(i * 150 << 10)
			length := int64(len(payload))
			if i%3 == 0 {
				length = -1 // streamed without a declared length
			}
			status, h, got, err := roundTrip(c, addr, "POST", "/p", payload, length)
			if err != nil || status != 200 || !bytes.Equal(got, payload) || h.Get("X-Len") != strconv.Itoa(len(payload)) || h.Get("X-Authority") != "test" {
				errs <- fmt.Errorf("request %d: status %d, %d of %d bytes, %v", i, status, len(got), len(payload), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if peak > 3 {
		t.Errorf("peak concurrent streams on a connection %d, above the server's limit of 3", peak)
	}
}

func TestClientGoAwayFinishesInFlight(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	addr, srv := stdServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "ok")
	}), 0)
	c := newTestClient(t)
	results := make(chan error, 3)
	for range 3 {
		go func() {
			status, _, body, err := roundTrip(c, addr, "GET", "/", nil, 0)
			if err == nil && (status != 200 || string(body) != "ok") {
				err = fmt.Errorf("status %d body %q", status, body)
			}
			results <- err
		}()
	}
	for range 3 {
		<-started
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx) // GOAWAY, then waits for the streams
	}()
	// Once the GOAWAY arrived, a new request goes to a new connection,
	// which the closed listener refuses, without harming those in flight.
	deadline := time.Now().Add(10 * time.Second)
	for !c.allGoingAway(addr) {
		if time.Now().After(deadline) {
			t.Fatal("no GOAWAY seen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var de *DialError
	if _, _, _, err := roundTrip(c, addr, "GET", "/", nil, 0); !errors.As(err, &de) {
		t.Errorf("request after GOAWAY: %v, want a dial error", err)
	}
	close(release)
	for range 3 {
		if err := <-results; err != nil {
			t.Errorf("in-flight request: %v", err)
		}
	}
	if err := <-shut; err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func TestClientDeadline(t *testing.T) {
	block := make(chan struct{})
	addr, _ := stdServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}), 0)
	defer close(block)
	c := newTestClient(t)
	_, err := c.RoundTrip(addr, &Request{Method: "GET", Authority: "a", Path: "/", Deadline: time.Now().Add(200 * time.Millisecond)})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", err)
	}
	var de *DialError
	if _, err := c.RoundTrip("127.0.0.1:1", &Request{Method: "GET", Authority: "a", Path: "/"}); !errors.As(err, &de) {
		t.Errorf("dial to a closed port: %v, want a DialError", err)
	}
}

// rawConn opens a TCP connection to a ServeConn server and reads its
// frames.
type rawConn struct {
	c  net.Conn
	fr *http2.Framer
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	return &rawConn{c: c, fr: fr}
}

// goAway reads frames until a GOAWAY and then the end of the connection;
// it returns the GOAWAY's code.
func (r *rawConn) goAway(t *testing.T) http2.ErrCode {
	t.Helper()
	var code http2.ErrCode
	seen := false
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			if !seen {
				t.Fatalf("connection ended (%v) without GOAWAY", err)
			}
			return code
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			seen, code = true, ga.ErrCode
		}
	}
}

func TestServerMalformedInput(t *testing.T) {
	addr := startServer(t, echoHandler{}, ServerConfig{})
	preface := []byte(http2.ClientPreface)
	settings := []byte{0, 0, 0, 4, 0, 0, 0, 0, 0} // empty SETTINGS
	frame := func(typ, flags byte, stream uint32, payload []byte) []byte {
		n := len(payload)
		b := []byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)}
		return append(b, payload...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name  string
		input []byte
		code  http2.ErrCode
	}{
		{"bad preface", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxx"), http2.ErrCodeProtocol},
		{"garbage after preface", cat(preface, bytes.Repeat([]byte{0xff}, 64)), http2.ErrCodeProtocol},
		{"first frame not settings", cat(preface, frame(6, 0, 0, make([]byte, 8))), http2.ErrCodeProtocol},
		{"oversized frame", cat(preface, settings, []byte{0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1}), http2.ErrCodeFrameSize},
		{"data on stream 0", cat(preface, settings, frame(0, 0, 0, []byte("x"))), http2.ErrCodeProtocol},
		{"data on idle stream", cat(preface, settings, frame(0, 0, 7, []byte("x"))), http2.ErrCodeProtocol},
		{"headers on even stream", cat(preface, settings, frame(1, 5, 2, []byte{0x82})), http2.ErrCodeProtocol},
		{"bad hpack", cat(preface, settings, frame(1, 5, 1, []byte{0xff, 0xff, 0xff, 0xff})), http2.ErrCodeCompression},
		{"continuation without headers", cat(preface, settings, frame(9, 4, 1, []byte{0x82})), http2.ErrCodeProtocol},
		{"window overflow", cat(preface, settings, frame(8, 0, 0, []byte{0x7f, 0xff, 0xff, 0xff})), http2.ErrCodeFlowControl},
		{"push promise", cat(preface, settings, frame(5, 4, 1, []byte{0, 0, 0, 2, 0x82})), http2.ErrCodeProtocol},
		{"bad settings value", cat(preface, frame(4, 0, 0, []byte{0, 5, 0, 0, 0, 1})), http2.ErrCodeProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, addr)
			if _, err := r.c.Write(tt.input); err != nil {
				t.Fatal(err)
			}
			if code := r.goAway(t); code != tt.code {
				t.Errorf("GOAWAY code %v, want %v", code, tt.code)
			}
		})
	}
}

// TestServerStreamErrors checks errors that reset one stream and leave
// the connection serving.
func TestServerStreamErrors(t *testing.T) {
	addr := startServer(t, echoHandler{}, ServerConfig{})
	r := dialRaw(t, addr)
	_, _ = r.c.Write([]byte(http2.ClientPreface))
	_ = r.fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	headers := func(id uint32, fields ...string) {
		hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		_ = r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	}
	base := []string{":method", "GET", ":scheme", "https", ":authority", "a", ":path", "/"}
	headers(1, append(base, "connection", "close")...)                  // connection-specific field
	headers(3, ":method", "GET", ":scheme", "https", ":authority", "a") // no :path
	headers(5, append(base, "te", "gzip")...)
	// The rules of RFC 9113 8.2 the connection's header decoder applies.
	headers(7, append(base, "X-Upper", "v")...)
	headers(9, append([]string{"accept", "*/*"}, base...)...) // pseudo after regular
	headers(11, append(base, ":method", "GET")...)            // repeated
	headers(13, append(base, ":unknown", "x")...)
	headers(15, append(base, ":status", "200")...) // request and response mixed
	headers(17, append(base, "x-bad", "a\x00b")...)
	headers(19, base...) // a good one after them
	resets := map[uint32]http2.ErrCode{}
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("read: %v (resets so far %v)", err, resets)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			resets[f.StreamID] = f.ErrCode
		case *http2.MetaHeadersFrame:
			if f.StreamID != 19 || f.PseudoValue("status") != "200" {
				t.Fatalf("response on stream %d status %q, want 200 on stream 19", f.StreamID, f.PseudoValue("status"))
			}
			for _, id := range []uint32{1, 3, 5, 7, 9, 11, 13, 15, 17} {
				if resets[id] != http2.ErrCodeProtocol {
					t.Errorf("stream %d: reset %v, want PROTOCOL_ERROR", id, resets[id])
				}
			}
			return
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v, want the connection kept", f.ErrCode)
		}
	}
}

// TestServerDrain checks that ServeConn's context ending sends GOAWAY,
// lets the stream in flight finish and then closes.
func TestServerDrain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	started := make(chan struct{})
	h := handlerFunc(func(s *Stream) {
		close(started)
		<-release
		_ = s.WriteHeader(200, nil, true, true)
	})
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		done <- ServeConn(ctx, c, h, ServerConfig{})
	}()
	c := newTestClient(t)
	res := make(chan error, 1)
	go func() {
		status, _, _, err := roundTrip(c, ln.Addr().String(), "GET", "/", nil, 0)
		if err == nil && status != 200 {
			err = fmt.Errorf("status %d", status)
		}
		res <- err
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		t.Fatalf("ServeConn returned (%v) with a stream in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-res; err != nil {
		t.Errorf("in-flight request: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeConn = %v, want nil after a drain", err)
	}
}

type handlerFunc func(*Stream)

func (f handlerFunc) ServeStream(s *Stream) { f(s) }

// FuzzServeConn feeds arbitrary bytes after a valid preface: the server
// must answer or close, never panic or hang.
func FuzzServeConn(f *testing.F) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "a"}, {Name: ":path", Value: "/"}} {
		_ = enc.WriteField(hf)
	}
	var seed bytes.Buffer
	fr := http2.NewFramer(&seed, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	_ = fr.WriteData(1, true, []byte("hello"))
	f.Add(seed.Bytes())
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0xff, 0xff})
	f.Add([]byte{0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x80, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = ServeConn(context.Background(), server, echoHandler{}, ServerConfig{})
		}()
		go func() {
			_, _ = io.Copy(io.Discard, client)
		}()
		_ = client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = client.Write([]byte(http2.ClientPreface))
		_, _ = client.Write(data)
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("ServeConn did not return after the client closed")
		}
	})
}

// allGoingAway reports whether every connection to addr got GOAWAY.
func (c *Client) allGoingAway(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ac := c.addrs[addr]
	if ac == nil {
		return false
	}
	for _, cc := range ac.conns {
		cc.mu.Lock()
		ga := cc.goaway
		cc.mu.Unlock()
		if !ga {
			return false
		}
	}
	return true
}
