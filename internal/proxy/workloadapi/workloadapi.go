// Package workloadapi serves the SPIFFE Workload API on a Unix socket, so
// that the application next to the proxy can fetch its own X.509 SVID and
// trust bundle with any SPIFFE client (go-spiffe's workloadapi package,
// spiffe-helper, ...). It serves the proxy's identity: the application and
// its proxy are one workload. It owns the socket and the gRPC server, not the
// identity (proxy/svid).
//
// FetchX509SVID and FetchX509Bundles stream the current value at once and
// again on every change (renewal, trust bundle rotation). The JWT and WIT
// methods answer Unimplemented: the mesh issues no JWT-SVIDs.
//
// Access control is the socket's file mode, 0660: the proxy and the
// application run as the same user (or share a group) at the edge, and
// nobody else may connect. The Workload API spec's attestation of the caller
// is not done: everyone who can open the socket gets the SVID.
package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// SocketMode is the Unix socket's file mode (see the package comment).
const SocketMode fs.FileMode = 0o660

// headerKey is the metadata every Workload API call must carry with value
// "true": it proves the call was made on purpose by a SPIFFE client, not by
// a browser or proxy tricked into it (SPIFFE Workload API spec, section 5.3).
const headerKey = "workload.spiffe.io"

// Source is what the server reads: the proxy's SVID and the bundle of its
// trust domain (proxy/svid.Source). Its methods must be safe for concurrent
// use and not block; returned values are shared and not modified. Changed
// returns a channel closed at the next change of either.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Changed() <-chan struct{}
}

// Server is the Workload API on one socket.
type Server struct {
	path string
	src  Source
	log  *slog.Logger
	workload.UnimplementedSpiffeWorkloadAPIServer
}

// New returns a server for the socket at path, serving src.
func New(path string, src Source, logger *slog.Logger) *Server {
	return &Server{path: path, src: src, log: logger.With("component", "workloadapi", "socket", path)}
}

// Run listens on the socket and serves until ctx ends, then closes every
// stream and removes the socket. A stale socket left by a crashed proxy is
// removed first; any other file at path is an error.
func (s *Server) Run(ctx context.Context) error {
	if fi, err := os.Lstat(s.path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("workload api socket %q: exists and is not a socket", s.path)
		}
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("workload api socket %q: remove stale socket: %w", s.path, err)
		}
	}
	lis, err := net.Listen("unix", s.path)
	if err != nil {
		return fmt.Errorf("workload api socket %q: %w", s.path, err)
	}
	// Closing the listener removes the socket file.
	lis.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(s.path, SocketMode); err != nil {
		lis.Close()
		return fmt.Errorf("workload api socket %q: %w", s.path, err)
	}
	gs := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(gs, s)
	s.log.Info("workload api serving")
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case <-ctx.Done():
		// Stop, not GracefulStop: the streams are long-lived and would
		// hold shutdown forever; clients reconnect to the next proxy.
		gs.Stop()
		<-errc
		return nil
	case err := <-errc:
		gs.Stop()
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return fmt.Errorf("serve workload api: %w", err)
	}
}

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(headerKey); len(v) != 1 || v[0] != "true" {
		return status.Errorf(codes.InvalidArgument, "security header missing from request: %s: true", headerKey)
	}
	return nil
}

// FetchX509SVID streams the SVID with its key and bundle.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	return s.watch(ctx, func(sv *x509svid.SVID, b *x509bundle.Bundle) error {
		certs, key, err := sv.MarshalRaw()
		if err != nil {
			return status.Errorf(codes.Internal, "marshal svid: %v", err)
		}
		return stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId:    sv.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      concatRaw(b),
		}}})
	})
}

// FetchX509Bundles streams the trust bundle of the proxy's trust domain.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	return s.watch(ctx, func(sv *x509svid.SVID, b *x509bundle.Bundle) error {
		return stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
			sv.ID.TrustDomain().IDString(): concatRaw(b),
		}})
	})
}

// watch calls send with the current SVID and bundle once they exist, then
// after every change, until ctx ends or send fails.
func (s *Server) watch(ctx context.Context, send func(*x509svid.SVID, *x509bundle.Bundle) error) error {
	for {
		changed := s.src.Changed()
		if sv, b, ok := s.current(); ok {
			if err := send(sv, b); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (s *Server) current() (*x509svid.SVID, *x509bundle.Bundle, bool) {
	sv, err := s.src.GetX509SVID()
	if err != nil {
		// No SVID yet: the stream waits for the first one.
		return nil, nil, false
	}
	b, err := s.src.GetX509BundleForTrustDomain(sv.ID.TrustDomain())
	if err != nil {
		return nil, nil, false
	}
	return sv, b, true
}

func concatRaw(b *x509bundle.Bundle) []byte {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, c.Raw...)
	}
	return out
}
