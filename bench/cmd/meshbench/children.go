package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"verge.dev/verge/bench/load"
)

// The harness re-executes its own binary with one of these subcommands to
// run the backend and the stock proxies in processes of their own, so their
// CPU time and memory can be read from /proc apart from the load generator's.
// Each prints "ready" and its bound addresses on stdout once it accepts.

// runBackend serves the HTTP echo handler and the gRPC echo service.
func runBackend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	httpAddr := fs.String("http", "127.0.0.1:0", "HTTP/1.1 echo address")
	grpcAddr := fs.String("grpc", "127.0.0.1:0", "gRPC echo address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	gl, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		hl.Close()
		return fmt.Errorf("backend: %w", err)
	}
	hs := &http.Server{Handler: load.EchoHandler(), ReadHeaderTimeout: 10 * time.Second}
	gs := grpc.NewServer()
	load.RegisterEcho(gs)
	fmt.Printf("ready http=%s grpc=%s\n", hl.Addr(), gl.Addr())
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(ctx, hs, hl) })
	g.Go(func() error {
		stop := context.AfterFunc(ctx, gs.Stop)
		defer stop()
		return gs.Serve(gl)
	})
	return g.Wait()
}

// stockProxy builds the "stock" reverse proxy: httputil.NewSingleHostReverseProxy
// with its defaults (http.DefaultTransport, two idle connections per host)
// unless idle is positive, in which case a clone of DefaultTransport keeps
// idle connections per host (the tuned variant). With h2c the upstream
// transport speaks only cleartext HTTP/2, as gRPC needs.
func stockProxy(target string, idle int, h2c bool) *httputil.ReverseProxy {
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	switch {
	case h2c:
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
		if idle > 0 {
			t.MaxIdleConnsPerHost = idle
		}
		rp.Transport = t
	case idle > 0:
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = idle
		rp.Transport = t
	}
	return rp
}

// runStockProxy serves one stock reverse proxy hop for HTTP/1.1 and, when
// -grpc-target is set, one for gRPC over h2c.
func runStockProxy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stock-proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "HTTP/1.1 listen address")
	target := fs.String("target", "", "HTTP/1.1 upstream host:port")
	grpcListen := fs.String("grpc-listen", "127.0.0.1:0", "gRPC (h2c) listen address")
	grpcTarget := fs.String("grpc-target", "", "gRPC (h2c) upstream host:port; empty: no gRPC hop")
	idle := fs.Int("idle", 0, "MaxIdleConnsPerHost of the upstream transport; 0: http.DefaultTransport as is")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("stock-proxy: -target is required")
	}
	g, ctx := errgroup.WithContext(ctx)
	hl, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("stock proxy: %w", err)
	}
	ready := fmt.Sprintf("ready http=%s", hl.Addr())
	hs := &http.Server{Handler: stockProxy(*target, *idle, false), ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error { return serveHTTP(ctx, hs, hl) })
	if *grpcTarget != "" {
		gl, err := net.Listen("tcp", *grpcListen)
		if err != nil {
			hl.Close()
			return fmt.Errorf("stock proxy: %w", err)
		}
		ready += fmt.Sprintf(" grpc=%s", gl.Addr())
		gs := &http.Server{Handler: stockProxy(*grpcTarget, *idle, true), ReadHeaderTimeout: 10 * time.Second}
		gs.Protocols = new(http.Protocols)
		gs.Protocols.SetHTTP1(true)
		gs.Protocols.SetUnencryptedHTTP2(true)
		g.Go(func() error { return serveHTTP(ctx, gs, gl) })
	}
	fmt.Println(ready)
	return g.Wait()
}

// serveHTTP serves on l until ctx ends, then closes the server.
func serveHTTP(ctx context.Context, s *http.Server, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", l.Addr(), err)
	}
	return nil
}

// childMain runs a subcommand and exits; it reports whether args named one.
func childMain(ctx context.Context, args []string) bool {
	if len(args) == 0 {
		return false
	}
	var run func(context.Context, []string) error
	switch args[0] {
	case "backend":
		run = runBackend
	case "stock-proxy":
		run = runStockProxy
	default:
		return false
	}
	if err := run(ctx, args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	return true
}
