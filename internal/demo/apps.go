package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The demo's gRPC service is declared by hand with well-known wrapper
// messages, so the demo needs no generated code: /verge.demo.Greeter/SayHello
// takes and returns a google.protobuf.StringValue.
const greeterMethod = "/verge.demo.Greeter/SayHello"

func greeterDesc(reply func(name string) string) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "verge.demo.Greeter",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "SayHello",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				return wrapperspb.String(reply(in.GetValue())), nil
			},
		}},
	}
}

// appConfig describes one demo application.
type appConfig struct {
	kind        string // "http" or "grpc"
	listen      string
	name        string // reported in answers, e.g. "backend-v1"
	backendURL  string // frontend only: the backend through the proxy's outbound port
	greeterAddr string // frontend only: the greeter through the proxy's outbound port
}

// NewAppCommand returns the hidden `demo-app` command the demo starts its
// applications with. They are ordinary programs that know nothing of the
// mesh: the frontend calls its upstreams at the local ports its proxy opens.
func NewAppCommand() *cobra.Command {
	var cfg appConfig
	cmd := &cobra.Command{
		Use:    "demo-app",
		Short:  "Run one of the demo's applications",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runApp(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.kind, "kind", "http", "http or grpc")
	f.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "listen address")
	f.StringVar(&cfg.name, "name", "app", "name reported in answers")
	f.StringVar(&cfg.backendURL, "backend-url", "", "backend URL (frontend)")
	f.StringVar(&cfg.greeterAddr, "greeter-addr", "", "greeter address (frontend)")
	return cmd
}

func runApp(ctx context.Context, cfg appConfig) error {
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen %q: %w", cfg.listen, err)
	}
	g, ctx := errgroup.WithContext(ctx)
	switch cfg.kind {
	case "grpc":
		srv := grpc.NewServer()
		srv.RegisterService(greeterDesc(func(n string) string { return "hello " + n + " from " + cfg.name }), nil)
		g.Go(func() error { return srv.Serve(lis) })
		g.Go(func() error { <-ctx.Done(); srv.GracefulStop(); return nil })
	case "http":
		h, closeFn, err := httpApp(cfg)
		if err != nil {
			return err
		}
		defer closeFn()
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	default:
		return fmt.Errorf("--kind %q: want http or grpc", cfg.kind)
	}
	return g.Wait()
}

// answer is what every demo HTTP app returns.
type answer struct {
	Service string  `json:"service"`
	Backend *answer `json:"backend,omitempty"`
	Greeter string  `json:"greeter,omitempty"`
	Error   string  `json:"error,omitempty"`
}

func httpApp(cfg appConfig) (http.Handler, func(), error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	if cfg.backendURL == "" {
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, answer{Service: cfg.name})
		})
		return mux, func() {}, nil
	}
	client := &http.Client{Timeout: 5 * time.Second}
	conn, err := grpc.NewClient(cfg.greeterAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("greeter client %q: %w", cfg.greeterAddr, err)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a := answer{Service: cfg.name}
		status := http.StatusOK
		if b, err := callBackend(r.Context(), client, cfg.backendURL); err != nil {
			a.Error, status = "backend: "+err.Error(), http.StatusBadGateway
		} else {
			a.Backend = b
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		out := new(wrapperspb.StringValue)
		if err := conn.Invoke(ctx, greeterMethod, wrapperspb.String(cfg.name), out); err != nil {
			a.Error, status = "greeter: "+err.Error(), http.StatusBadGateway
		} else {
			a.Greeter = out.GetValue()
		}
		writeJSON(w, status, a)
	})
	return mux, func() { conn.Close() }, nil
}

func callBackend(ctx context.Context, c *http.Client, url string) (*answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	var a answer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&a); err != nil {
		return nil, fmt.Errorf("decode answer: %w", err)
	}
	return &a, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
