package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// haproxyConfig is one HTTP hop: one thread, connection reuse to the
// upstream whatever the client does ("http-reuse always"), no logging.
// Timeouts are generous: they only matter for a broken run.
const haproxyConfig = `global
    nbthread 1
    maxconn 4096

defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe
    bind %s
    default_backend be

backend be
    server upstream %s
`

// startHAProxyPair starts two HAProxy processes chained in front of
// backend and returns the first hop's address and both pids.
func startHAProxyPair(ctx context.Context, dir, backend string, procs *[]*proc) (string, []int, error) {
	var addrs [2]string
	for i := range addrs {
		ip := fmt.Sprintf("%s%d", ipHAProxy, i+1)
		port, err := freePort(ip)
		if err != nil {
			return "", nil, err
		}
		addrs[i] = net.JoinHostPort(ip, strconv.Itoa(port))
	}
	var pids []int
	// The second hop first, so the first has an upstream when it starts.
	for i := len(addrs) - 1; i >= 0; i-- {
		upstream := backend
		if i+1 < len(addrs) {
			upstream = addrs[i+1]
		}
		name := fmt.Sprintf("haproxy-%d", i+1)
		cfg := filepath.Join(dir, name+".cfg")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, haproxyConfig, addrs[i], upstream), 0o644); err != nil {
			return "", nil, fmt.Errorf("write %s: %w", cfg, err)
		}
		// -db: stay in the foreground, one process, so /proc/PID is all of it.
		p, err := startProc(dir, name, "haproxy", "-db", "-f", cfg)
		if err != nil {
			return "", nil, err
		}
		*procs = append(*procs, p)
		if err := waitFor(ctx, name, 30*time.Second, dialable(addrs[i])); err != nil {
			return "", nil, fmt.Errorf("%w; log: %s", err, p.tail())
		}
		pids = append(pids, p.pid())
	}
	return addrs[0], pids, nil
}
