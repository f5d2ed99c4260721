package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

const protocolMesh = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: h2}
spec:
  selector: {app: server}
  ports: [{port: 80, protocol: HTTP2, targetPort: 8080}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: grpc}
spec:
  selector: {app: server}
  ports: [{port: 9000, protocol: GRPC, targetPort: 9000}]
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata: {name: tcp}
spec:
  selector: {app: server}
  ports: [{port: 7000, protocol: TCP, targetPort: 7000}]
`

// TestProtocolsThroughTwoProxies carries HTTP/2 (prior knowledge and h2c
// upgrade), gRPC (unary and every streaming kind, with status and trailers)
// and raw TCP through a client-side and a server-side proxy.
func TestProtocolsThroughTwoProxies(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	srv, cli := newHost(), newHost()
	httpServer(t, srv.addr(8080), "h2srv")
	grpcServer(t, srv.addr(9000))
	tcpEcho(t, srv.addr(7000))
	c.apply(t, protocolMesh)
	ps := startProxy(t, c, proxyOpts{name: "server-0", labels: "app=server", host: srv,
		inbound: []string{"8080=15080", "9000=15090", "7000=15070"}})
	pc := startProxy(t, c, proxyOpts{name: "client-0", labels: "app=client", host: cli,
		outbound: []string{"h2:80=10080", "grpc:9000=10090", "tcp:7000=10070"}})
	ps.waitReady(t)
	pc.waitReady(t)

	t.Run("http2 prior knowledge", func(t *testing.T) {
		tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		eventually(t, 20*time.Second, func() error {
			resp, err := hc.Get("http://" + cli.addr(10080) + "/h2")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 || !strings.HasPrefix(string(body), "h2srv GET /h2") {
				return fmt.Errorf("%s %s %q", resp.Proto, resp.Status, body)
			}
			if got := resp.Header.Get("X-Proto"); got != "HTTP/2.0" {
				return fmt.Errorf("server saw %s, want HTTP/2.0 end to end", got)
			}
			return nil
		})
	})

	t.Run("h2c upgrade", func(t *testing.T) {
		eventually(t, 20*time.Second, func() error { return h2cUpgradeGet(cli.addr(10080), "/up") })
	})

	t.Run("grpc", func(t *testing.T) {
		conn, err := grpc.NewClient(cli.addr(10090), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		tc := testgrpc.NewTestServiceClient(conn)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		eventually(t, 20*time.Second, func() error {
			_, err := tc.EmptyCall(ctx, &testgrpc.Empty{})
			return err
		})
		// Unary with a large payload.
		resp, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 256 << 10, Payload: &testgrpc.Payload{Body: make([]byte, 256<<10)}})
		if err != nil || len(resp.GetPayload().GetBody()) != 256<<10 {
			t.Fatalf("large unary: %v", err)
		}
		// A status set by the server arrives intact in the trailers.
		_, err = tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "nope: ü"}})
		if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != "nope: ü" {
			t.Errorf("status through proxies = %v, want NotFound %q", err, "nope: ü")
		}
		// Server streaming.
		ss, err := tc.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 10}, {Size: 20}, {Size: 30}}})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			_, err := ss.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("server stream: %v", err)
			}
			n++
		}
		if n != 3 {
			t.Errorf("server stream got %d messages, want 3", n)
		}
		// Client streaming.
		cs, err := tc.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, sz := range []int{100, 200, 300} {
			if err := cs.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, sz)}}); err != nil {
				t.Fatal(err)
			}
		}
		cr, err := cs.CloseAndRecv()
		if err != nil || cr.GetAggregatedPayloadSize() != 600 {
			t.Errorf("client stream: %v %v", cr, err)
		}
		// Bidi: ping-pong, each reply before the next request (full duplex).
		bs, err := tc.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := bs.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: int32(10 + i)}}}); err != nil {
				t.Fatal(err)
			}
			r, err := bs.Recv()
			if err != nil || len(r.GetPayload().GetBody()) != 10+i {
				t.Fatalf("ping-pong %d: %v", i, err)
			}
		}
		bs.CloseSend()
		if _, err := bs.Recv(); err != io.EOF {
			t.Errorf("bidi end: %v, want EOF", err)
		}
	})

	t.Run("tcp", func(t *testing.T) {
		eventually(t, 20*time.Second, func() error {
			conn, err := net.DialTimeout("tcp", cli.addr(10070), 5*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			msg := bytes.Repeat([]byte("verge-tcp "), 10000)
			go func() { conn.Write(msg); conn.(*net.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(conn)
			if err != nil || !bytes.Equal(got, msg) {
				return fmt.Errorf("echo got %d bytes, %v; want %d", len(got), err, len(msg))
			}
			return nil
		})
	})
}

func grpcServer(t *testing.T, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, interop.NewTestServer())
	go s.Serve(lis)
	t.Cleanup(s.Stop)
}

func tcpEcho(t *testing.T, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// h2cUpgradeGet does an HTTP/1.1 request with Upgrade: h2c and reads the
// answer on stream 1 of the upgraded HTTP/2 connection.
func h2cUpgradeGet(addr, path string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: h2\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", path)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("upgrade answered %s", resp.Status)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		return err
	}
	fr := http2.NewFramer(conn, br)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	var status string
	var body []byte
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == ":status" {
			status = f.Value
		}
	})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("read frame: %w (status %q, body %q)", err, status, body)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if f.StreamID == 1 {
				dec.Write(f.HeaderBlockFragment())
			}
			if f.StreamEnded() {
				return checkUpgraded(status, body)
			}
		case *http2.DataFrame:
			if f.StreamID == 1 {
				body = append(body, f.Data()...)
				if f.StreamEnded() {
					return checkUpgraded(status, body)
				}
			}
		case *http2.GoAwayFrame:
			return fmt.Errorf("goaway: %v", f.ErrCode)
		}
	}
}

func checkUpgraded(status string, body []byte) error {
	if status != "200" || !strings.HasPrefix(string(body), "h2srv GET /up") {
		return fmt.Errorf("upgraded stream: status %q body %q", status, body)
	}
	return nil
}
