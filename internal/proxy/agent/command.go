package agent

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/logging"
)

// DefaultServer is the control plane's API when neither --server nor
// VERGE_SERVER says otherwise.
const DefaultServer = "http://127.0.0.1:7700"

// NewCommand returns the `proxy` command shared by verge and verge-proxy.
// defaultServer is the --server default that main read from VERGE_SERVER
// (the command reads no environment itself); empty means DefaultServer.
func NewCommand(defaultServer string) *cobra.Command {
	if defaultServer == "" {
		defaultServer = DefaultServer
	}
	var (
		cfg                  Config
		labels               []string
		inbound, outbound    []string
		logFormat, logLevel  string
		drain, drainDelay    time.Duration
		serverFlag, nameFlag string
		outboundAddr         string
		concurrency          int
	)
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the data-plane proxy next to an application",
		Long: `Run the Verge proxy for one workload. It registers the workload with the
control plane, receives its configuration over xDS, accepts the application's
inbound traffic on --inbound ports and its outbound calls on --outbound ports.`,
		Example: `  verge proxy --name backend-v1-0 --labels app=backend,version=v1 \
    --inbound 8080=15001 --outbound greeter:9000=10002`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logging.New(cmd.ErrOrStderr(), logFormat, logLevel)
			if err != nil {
				return err
			}
			if concurrency < 0 {
				return fmt.Errorf("--concurrency %d: must be 0 (all cores) or more", concurrency)
			}
			if concurrency > 0 {
				runtime.GOMAXPROCS(concurrency)
			}
			cfg.Server = serverFlag
			cfg.Name = nameFlag
			cfg.Proxy.DrainTimeout = drain
			cfg.Proxy.DrainDelay = drainDelay
			var errs []error
			if cfg.Labels, err = parseLabels(labels); err != nil {
				errs = append(errs, err)
			}
			for _, s := range inbound {
				p, err := parseInbound(s)
				if err != nil {
					errs = append(errs, err)
				}
				cfg.Inbound = append(cfg.Inbound, p)
			}
			for _, s := range outbound {
				o, err := parseOutbound(s)
				if err != nil {
					errs = append(errs, err)
				}
				o.LocalAddress = outboundAddr
				cfg.Outbound = append(cfg.Outbound, o)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			return Run(cmd.Context(), cfg, logger, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&serverFlag, "server", defaultServer, "control plane REST API URL (default from VERGE_SERVER)")
	f.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:7701", "control plane xDS address")
	f.StringVar(&nameFlag, "name", "", "workload name (required)")
	f.StringVarP(&cfg.Namespace, "namespace", "n", "default", "workload namespace")
	f.StringSliceVar(&labels, "labels", nil, "workload labels, KEY=VALUE[,KEY=VALUE]; Services select workloads by them")
	f.StringVar(&cfg.Address, "address", "127.0.0.1", "IP peers use to reach this workload's inbound ports")
	f.StringVar(&cfg.ServiceAccount, "service-account", "default", "identity the workload runs as")
	f.StringArrayVar(&inbound, "inbound", nil, "APPPORT=INBOUNDPORT: accept on INBOUNDPORT for the application's APPPORT (repeatable)")
	f.StringArrayVar(&outbound, "outbound", nil, "SERVICE[.NS]:PORT=LOCALPORT: listen on 127.0.0.1:LOCALPORT for calls to SERVICE:PORT (repeatable)")
	f.StringVar(&outboundAddr, "outbound-address", "127.0.0.1", "IP the outbound listeners bind")
	f.StringVar(&cfg.AppAddress, "app-address", "127.0.0.1", "address the application listens on")
	f.StringVar(&cfg.ReadinessPath, "readiness-path", "", "HTTP path probed for readiness (default: TCP connect)")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:9901", "admin listener: /ready, /stats/prometheus, /config_dump, /debug/pprof/")
	f.StringVar(&cfg.DataDir, "data-dir", "./verge-proxy-data", "directory for the last accepted configuration")
	f.IntVar(&concurrency, "concurrency", 1, "OS threads running Go code at once (GOMAXPROCS): 1 suits a sidecar, 0 means one per core (node mode, gateways)")
	f.DurationVar(&drain, "drain-timeout", 10*time.Second, "how long in-flight requests may finish on shutdown")
	f.DurationVar(&drainDelay, "drain-delay", 2*time.Second, "on shutdown, how long the proxy keeps accepting after reporting not ready, so that peers learn to stop sending first")
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

func parseLabels(ss []string) (map[string]string, error) {
	if len(ss) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(ss))
	for _, s := range ss {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels %q: want KEY=VALUE", s)
		}
		m[k] = v
	}
	return m, nil
}

func parseInbound(s string) (PortPair, error) {
	a, b, ok := strings.Cut(s, "=")
	app, err1 := parsePort(a)
	in, err2 := parsePort(b)
	if !ok || err1 != nil || err2 != nil {
		return PortPair{}, fmt.Errorf("--inbound %q: want APPPORT=INBOUNDPORT with ports 1-65535", s)
	}
	return PortPair{AppPort: app, InboundPort: in}, nil
}

func parseOutbound(s string) (Outbound, error) {
	lhs, local, ok := strings.Cut(s, "=")
	i := strings.LastIndexByte(lhs, ':')
	if !ok || i <= 0 {
		return Outbound{}, fmt.Errorf("--outbound %q: want SERVICE[.NS]:PORT=LOCALPORT", s)
	}
	port, err1 := parsePort(lhs[i+1:])
	lp, err2 := parsePort(local)
	if err1 != nil || err2 != nil {
		return Outbound{}, fmt.Errorf("--outbound %q: ports must be 1-65535", s)
	}
	return Outbound{Service: strings.TrimSuffix(lhs[:i], ".mesh"), Port: port, LocalPort: lp}, nil
}

func parsePort(s string) (int32, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return int32(n), nil
}
