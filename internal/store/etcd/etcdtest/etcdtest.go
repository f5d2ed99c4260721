// Package etcdtest owns starting a real, single-member etcd server inside a
// test process (go.etcd.io/etcd/server/v3/embed), so the store and the
// control plane test against etcd itself rather than a fake. It is for tests
// only.
package etcdtest

import (
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startLimit bounds the wait for the server to become ready; it only turns
// a hang into a failure.
const startLimit = 60 * time.Second

// Start starts an etcd server on 127.0.0.1 with ports chosen by the kernel
// and its data under t.TempDir(), and stops it in t.Cleanup. It returns the
// client endpoints. Tests sharing one server keep apart by key prefix.
func Start(t testing.TB) []string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "verge-test"
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	// Port 0 works for listening; a single member never dials its peer URL,
	// so advertising port 0 there is harmless.
	local := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{local}
	cfg.AdvertiseClientUrls = []url.URL{local}
	cfg.ListenPeerUrls = []url.URL{local}
	cfg.AdvertisePeerUrls = []url.URL{local}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// No metrics or pprof listeners: nothing beyond the client and peer ports.
	cfg.ListenMetricsUrls = nil

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("start etcd: %v", err)
	case <-time.After(startLimit):
		t.Fatalf("start etcd: not ready within %v", startLimit)
	}
	endpoints := make([]string, 0, len(e.Clients))
	for _, l := range e.Clients {
		endpoints = append(endpoints, "http://"+l.Addr().String())
	}
	return endpoints
}
