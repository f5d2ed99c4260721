package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"verge.dev/verge/internal/controlplane"
	"verge.dev/verge/internal/logging"
)

// passphraseFile is where the control plane keeps a generated CA passphrase
// when --ca-passphrase-file is not given.
const passphraseFile = "ca-passphrase"

// adminTokenFile is where the control plane keeps a generated admin token
// when --admin-token-file is not given; the CLI reads it from the default
// data dir (./verge-data) when it talks to the default local control plane.
const adminTokenFile = "admin-token"

// adminTokenPrefix marks admin tokens, so that one pasted in the wrong place
// is recognizable (join tokens start with "vt1.").
const adminTokenPrefix = "vadm."

func controlPlaneCommand(version string) *cobra.Command {
	var (
		cfg                 = controlplane.Config{Version: version}
		etcdEndpoints       string
		logFormat, logLevel string
		caCert, caKey       string
		passFile            string
		adminFile           string
	)
	cmd := &cobra.Command{
		Use:   "control-plane",
		Short: "Run a zone control plane: REST API, dashboard, xDS server, certificate authority",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logging.New(cmd.ErrOrStderr(), logFormat, logLevel)
			if err != nil {
				return err
			}
			if etcdEndpoints != "" {
				cfg.EtcdEndpoints = strings.Split(etcdEndpoints, ",")
			}
			if (caCert == "") != (caKey == "") {
				return errors.New("--ca-cert and --ca-key go together")
			}
			if caCert != "" {
				if cfg.CACert, err = os.ReadFile(caCert); err != nil {
					return fmt.Errorf("--ca-cert: %w", err)
				}
				if cfg.CAKey, err = os.ReadFile(caKey); err != nil {
					return fmt.Errorf("--ca-key: %w", err)
				}
			}
			dataDir := cfg.DataDir
			if dataDir == "" {
				dataDir = controlplane.DefaultDataDir
			}
			if cfg.CAPassphrase, err = caPassphrase(passFile, dataDir, logger); err != nil {
				return err
			}
			if cfg.AdminToken, err = adminToken(adminFile, dataDir, logger); err != nil {
				return err
			}
			return controlplane.Run(cmd.Context(), cfg, logger, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.APIAddr, "api-addr", "127.0.0.1:7700", "REST API and dashboard address (port 0 picks one)")
	f.StringVar(&cfg.XDSAddr, "xds-addr", "127.0.0.1:7701", "xDS (gRPC ADS) address")
	f.StringVar(&cfg.SyncAddr, "sync-addr", "127.0.0.1:7702", "zone sync address")
	f.StringVar(&cfg.DataDir, "data-dir", "./verge-data", "state directory (bbolt store, encrypted CA material)")
	f.StringVar(&cfg.Store, "store", "bolt", "store backend: bolt or etcd")
	f.StringVar(&etcdEndpoints, "etcd-endpoints", "", "etcd client URLs, comma-separated (with --store etcd)")
	f.StringVar(&cfg.EtcdPrefix, "etcd-prefix", "/verge", "key prefix in etcd")
	f.StringVar(&cfg.TrustDomain, "trust-domain", controlplane.DefaultTrustDomain, "SPIFFE trust domain of the mesh")
	f.StringVar(&caCert, "ca-cert", "", "PEM file: the operator's CA certificate the mesh signs with, any intermediates, the root last (default: a self-signed root generated on first start)")
	f.StringVar(&caKey, "ca-key", "", "PEM file: the private key of --ca-cert")
	f.StringVar(&passFile, "ca-passphrase-file", "", "file holding the passphrase that encrypts the CA key at rest (trailing newlines ignored). "+
		"When unset, a random passphrase is generated on first start into DATA-DIR/"+passphraseFile+" (mode 0600) and read from there later; "+
		"that keeps the key and its passphrase side by side, so for real deployments move it to a secret store and pass this flag")
	f.DurationVar(&cfg.SVIDTTL, "svid-ttl", 0, "lifetime of issued workload certificates (default 24h)")
	f.StringVar(&adminFile, "admin-token-file", "", "file holding the admin bearer token (trailing newlines ignored). "+
		"When unset, one is generated on first start into DATA-DIR/"+adminTokenFile+" (mode 0600) and read from there later")
	f.StringArrayVar(&cfg.TLSSANs, "tls-san", nil, "extra DNS name or IP address of the control plane's certificate (repeatable)")
	f.BoolVar(&cfg.AllowAnonymous, "insecure-allow-anonymous", false, "allow API writes and proxy xDS streams without credentials (tests only)")
	_ = f.MarkHidden("insecure-allow-anonymous")
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// caPassphrase reads the CA passphrase from path, or from the data dir,
// where it generates one on first start.
func caPassphrase(path, dataDir string, logger *slog.Logger) ([]byte, error) {
	if path != "" {
		b, err := readSecretFile(path)
		if err != nil {
			return nil, fmt.Errorf("--ca-passphrase-file: %w", err)
		}
		return b, nil
	}
	p := filepath.Join(dataDir, passphraseFile)
	const warning = "ca passphrase kept in the data dir: move it to a secret store and pass --ca-passphrase-file for real deployments"
	b, err := readSecretFile(p)
	if err == nil {
		logger.Warn(warning, "path", p)
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var raw [32]byte
	rand.Read(raw[:]) // crypto/rand.Read never fails (Go 1.24+)
	b = []byte(base64.RawURLEncoding.EncodeToString(raw[:]))
	if err := writeNewFile(dataDir, passphraseFile, append(b, '\n')); err != nil {
		return nil, fmt.Errorf("generate ca passphrase %q: %w", p, err)
	}
	logger.Warn(warning, "path", p, "generated", true)
	return b, nil
}

// adminToken reads the admin token from path, or from the data dir, where
// it generates one on first start: "vadm." and 32 random bytes, base64url.
func adminToken(path, dataDir string, logger *slog.Logger) (string, error) {
	if path != "" {
		b, err := readSecretFile(path)
		if err != nil {
			return "", fmt.Errorf("--admin-token-file: %w", err)
		}
		if len(b) < 16 {
			return "", fmt.Errorf("--admin-token-file %q: token is %d bytes, want at least 16", path, len(b))
		}
		return string(b), nil
	}
	p := filepath.Join(dataDir, adminTokenFile)
	b, err := readSecretFile(p)
	if err == nil {
		return string(b), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var raw [32]byte
	rand.Read(raw[:]) // crypto/rand.Read never fails (Go 1.24+)
	tok := adminTokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	if err := writeNewFile(dataDir, adminTokenFile, []byte(tok+"\n")); err != nil {
		return "", fmt.Errorf("generate admin token %q: %w", p, err)
	}
	logger.Info("admin token generated: pass it to the CLI with --token-file or VERGE_TOKEN", "path", p)
	return tok, nil
}

// readSecretFile reads a one-line secret, without trailing newlines; an
// empty file is an error.
func readSecretFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("read %q: file is empty", path)
	}
	return b, nil
}

// writeNewFile creates dir/name (0600) with data, failing if it exists, and
// makes it durable: fsync of the file and of the directory.
func writeNewFile(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
