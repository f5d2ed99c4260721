package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// httpCaller is a minimal HTTP/1.1 keep-alive client on one connection. It
// replaces net/http's Transport because a Transport pools connections across
// goroutines, adds per-request goroutines and would make the client's own
// overhead a larger share of what is measured; this one writes a prebuilt
// request and parses the response with http.ReadResponse. Every case of a run
// uses the same client, so comparisons between cases are fair either way.
type httpCaller struct {
	addr    string
	timeout time.Duration
	size    int
	req     []byte
	nc      net.Conn
	br      *bufio.Reader
	dialer  net.Dialer
}

func newHTTPCaller(ctx context.Context, cfg Config) (*httpCaller, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST /echo HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", cfg.Addr, cfg.Size)
	b.Write(bytes.Repeat([]byte{'x'}, cfg.Size))
	c := &httpCaller{
		addr:    cfg.Addr,
		timeout: cfg.Timeout,
		size:    cfg.Size,
		req:     b.Bytes(),
		dialer:  net.Dialer{Timeout: cfg.Timeout},
	}
	if err := c.dial(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *httpCaller) dial(ctx context.Context) error {
	nc, err := c.dialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.addr, err)
	}
	c.nc = nc
	if c.br == nil {
		c.br = bufio.NewReaderSize(nc, 4096+c.size)
	} else {
		c.br.Reset(nc)
	}
	return nil
}

func (c *httpCaller) call(ctx context.Context) error {
	if c.nc == nil {
		if err := c.dial(ctx); err != nil {
			return err
		}
	}
	err := c.roundTrip()
	if err != nil {
		// The connection's state is unknown after any failure; the next
		// call starts on a fresh one.
		_ = c.close()
	}
	return err
}

func (c *httpCaller) roundTrip() error {
	if err := c.nc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	if _, err := c.nc.Write(c.req); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read response body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("response status %d", resp.StatusCode)
	}
	if n != int64(c.size) {
		return fmt.Errorf("response body: got %d bytes, want %d", n, c.size)
	}
	if resp.Close {
		// The server will close; don't let the next request race it.
		_ = c.close()
	}
	return nil
}

func (c *httpCaller) close() error {
	if c.nc == nil {
		return nil
	}
	err := c.nc.Close()
	c.nc = nil
	return err
}

// EchoHandler serves POST /echo (any path, in fact): it reads the request
// body, up to 1 MiB, and writes it back with 200 and a Content-Length.
func EchoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
}
