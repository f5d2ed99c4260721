package main

import (
	"strings"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/controlplane"
	"verge.dev/verge/internal/logging"
)

func controlPlaneCommand(version string) *cobra.Command {
	var (
		cfg                 = controlplane.Config{Version: version}
		etcdEndpoints       string
		logFormat, logLevel string
	)
	cmd := &cobra.Command{
		Use:   "control-plane",
		Short: "Run a zone control plane: REST API, dashboard, xDS server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logging.New(cmd.ErrOrStderr(), logFormat, logLevel)
			if err != nil {
				return err
			}
			if etcdEndpoints != "" {
				cfg.EtcdEndpoints = strings.Split(etcdEndpoints, ",")
			}
			return controlplane.Run(cmd.Context(), cfg, logger, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.APIAddr, "api-addr", "127.0.0.1:7700", "REST API and dashboard address (port 0 picks one)")
	f.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:7701", "xDS (gRPC ADS) address")
	f.StringVar(&cfg.SyncAddr, "sync-addr", "127.0.0.1:7702", "zone sync address")
	f.StringVar(&cfg.DataDir, "data-dir", "./verge-data", "state directory (bbolt store)")
	f.StringVar(&cfg.Store, "store", "bolt", "store backend: bolt or etcd")
	f.StringVar(&etcdEndpoints, "etcd-endpoints", "", "etcd client URLs, comma-separated (with --store etcd)")
	f.StringVar(&cfg.EtcdPrefix, "etcd-prefix", "/verge", "key prefix in etcd")
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}
