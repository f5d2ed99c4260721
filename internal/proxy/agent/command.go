package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// Env is what main read from the environment for the command (the command
// reads no environment itself).
type Env struct {
	// Server is VERGE_SERVER, the --server default; empty means
	// DefaultServer.
	Server string
	// JoinToken is VERGE_JOIN_TOKEN, used when neither --join-token nor
	// --join-token-file is given. It is not a flag default: --help would
	// print the secret.
	JoinToken string
}

// NewCommand returns the `proxy` command shared by verge and verge-proxy.
// defaultServer is the --server default that main read from VERGE_SERVER;
// empty means DefaultServer. NewCommandEnv also takes VERGE_JOIN_TOKEN.
func NewCommand(defaultServer string) *cobra.Command {
	return NewCommandEnv(Env{Server: defaultServer})
}

// NewCommandEnv is NewCommand with every environment default.
func NewCommandEnv(env Env) *cobra.Command {
	defaultServer := env.Server
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
		httpProxyPort        int
		idFlags              identityFlags
		auditLog             string
	)
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the data-plane proxy next to an application",
		Long: `Run the Verge proxy for one workload. It registers the workload with the
control plane, receives its configuration over xDS, accepts the application's
inbound traffic on --inbound ports and its outbound calls on --outbound ports.

With a join token (verge token create) the proxy makes its own key, obtains
its SVID, keeps it in --data-dir and renews it; xDS and the API then use
mutual TLS. Without one, and without an SVID from an earlier start, the proxy
runs without identity (plaintext) and says so in its log.`,
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
			if httpProxyPort < 0 || httpProxyPort > 65535 {
				errs = append(errs, fmt.Errorf("--http-proxy-port %d: must be 0 (off) or a port", httpProxyPort))
			}
			cfg.HTTPProxyPort, cfg.HTTPProxyAddress = int32(httpProxyPort), outboundAddr
			idFlags.tokenSet = cmd.Flags().Changed("join-token")
			if err := idFlags.apply(&cfg, env.JoinToken); err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			w, closeAudit, err := openAuditLog(auditLog, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg.AuditLog = w
			err = Run(cmd.Context(), cfg, logger, nil)
			// Run has closed the recorder, so every line is written.
			return errors.Join(err, closeAudit())
		},
	}
	f := cmd.Flags()
	f.StringVar(&serverFlag, "server", defaultServer, "control plane REST API URL (default from VERGE_SERVER)")
	f.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:7701", "control plane xDS address")
	f.StringVar(&nameFlag, "name", "", "workload name (required)")
	f.StringVarP(&cfg.Namespace, "namespace", "n", "default", "workload namespace")
	f.StringSliceVar(&labels, "labels", nil, "workload labels, KEY=VALUE[,KEY=VALUE]; Services select workloads by them")
	f.StringVar(&cfg.Address, "address", "127.0.0.1", "IP peers use to reach this workload's inbound ports")
	f.StringVar(&cfg.ServiceAccount, "service-account", "", `identity the workload runs as (default: the one its join token grants, else "default")`)
	f.StringArrayVar(&inbound, "inbound", nil, "APPPORT=INBOUNDPORT: accept on INBOUNDPORT for the application's APPPORT (repeatable)")
	f.StringArrayVar(&outbound, "outbound", nil, "SERVICE[.NS]:PORT=LOCALPORT: listen on 127.0.0.1:LOCALPORT for calls to SERVICE:PORT (repeatable)")
	f.StringVar(&outboundAddr, "outbound-address", "127.0.0.1", "IP the outbound listeners bind")
	f.IntVar(&httpProxyPort, "http-proxy-port", 0, "port (on --outbound-address) of a listener for applications that set HTTP_PROXY=http://ADDR:PORT: absolute-form requests and CONNECT to NAME.NS.mesh[:PORT] reach that service; 0 is off")
	f.StringVar(&cfg.AppAddress, "app-address", "127.0.0.1", "address the application listens on")
	f.StringVar(&cfg.ReadinessPath, "readiness-path", "", "HTTP path probed for readiness (default: TCP connect)")
	f.DurationVar(&cfg.ReportInterval, "report-interval", DefaultReportInterval, "how often the proxy sends its traffic summary (request counts, latencies, taps) to the control plane")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:9901", "admin listener: /ready, /stats/prometheus, /config_dump, /debug/pprof/")
	f.StringVar(&cfg.DataDir, "data-dir", "./verge-proxy-data", "directory for the last accepted configuration and the proxy's identity")
	f.StringVar(&idFlags.token, "join-token", "", "join token proving the workload's identity at first start (default from VERGE_JOIN_TOKEN; prefer --join-token-file: flags show in ps)")
	f.StringVar(&idFlags.tokenFile, "join-token-file", "", "file holding the join token")
	f.StringVar(&cfg.CAFile, "ca-file", "", "PEM roots verifying an https control plane at first start (else the persisted trust bundle, else system roots)")
	f.StringVar(&idFlags.socket, "workload-api-socket", "", `SPIFFE Workload API Unix socket for the application (default "<data-dir>/spiffe.sock"; "off" or "-" disables)`)
	f.IntVar(&concurrency, "concurrency", 1, "OS threads running Go code at once (GOMAXPROCS): 1 suits a sidecar, 0 means one per core (node mode, gateways)")
	f.DurationVar(&drain, "drain-timeout", 10*time.Second, "how long in-flight requests may finish on shutdown")
	f.DurationVar(&drainDelay, "drain-delay", 2*time.Second, "on shutdown, how long the proxy keeps accepting after reporting not ready, so that peers learn to stop sending first")
	f.StringVar(&auditLog, "audit-log", "", `file the authorization audit log is appended to, one JSON line per deny or audit decision ("-": stdout; default: stderr, beside the log)`)
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// identityFlags are the flags of the proxy's identity, resolved by apply.
type identityFlags struct {
	token, tokenFile, socket string
	// tokenSet is whether --join-token was given (even empty).
	tokenSet bool
}

// maxSocketPath is the longest Unix socket path Linux accepts (sun_path is
// 108 bytes with the terminating NUL; macOS allows 104).
const maxSocketPath = 103

// apply sets cfg.JoinToken and cfg.WorkloadAPISocket from the flags and
// VERGE_JOIN_TOKEN (envToken), after cfg.DataDir is set. --join-token and
// --join-token-file exclude each other; either overrides the environment.
func (f identityFlags) apply(cfg *Config, envToken string) error {
	var errs []error
	switch {
	case f.tokenSet && f.tokenFile != "":
		errs = append(errs, errors.New("--join-token, --join-token-file: give one, not both"))
	case f.tokenFile != "":
		data, err := os.ReadFile(f.tokenFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("--join-token-file: %w", err))
			break
		}
		cfg.JoinToken = strings.TrimSpace(string(data))
		if cfg.JoinToken == "" {
			errs = append(errs, fmt.Errorf("--join-token-file %q: empty", f.tokenFile))
		}
	case f.tokenSet:
		cfg.JoinToken = strings.TrimSpace(f.token)
	default:
		cfg.JoinToken = strings.TrimSpace(envToken)
	}
	if strings.ContainsAny(cfg.JoinToken, " \t\r\n") {
		errs = append(errs, errors.New("join token: contains white space"))
	}
	switch f.socket {
	case "off", "-":
		cfg.WorkloadAPISocket = ""
	case "":
		cfg.WorkloadAPISocket = filepath.Join(cfg.DataDir, "spiffe.sock")
	default:
		cfg.WorkloadAPISocket = f.socket
	}
	if len(cfg.WorkloadAPISocket) > maxSocketPath {
		errs = append(errs, fmt.Errorf("--workload-api-socket %q: %d bytes, a Unix socket path has at most %d (set it, or a shorter --data-dir)",
			cfg.WorkloadAPISocket, len(cfg.WorkloadAPISocket), maxSocketPath))
	}
	return errors.Join(errs...)
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

// openAuditLog resolves --audit-log: "" is stderr (the audit lines sit
// beside the JSON log), "-" stdout, anything else a file opened for
// appending (created 0600: it names peers and paths). The returned close
// closes only a file the function opened.
func openAuditLog(path string, stdout, stderr io.Writer) (io.Writer, func() error, error) {
	nop := func() error { return nil }
	switch path {
	case "":
		return stderr, nop, nil
	case "-":
		return stdout, nop, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--audit-log: %w", err)
	}
	return f, f.Close, nil
}
