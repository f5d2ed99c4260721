// Command meshbench is Verge's load harness. In one run it starts a backend,
// stock Go reverse proxies, HAProxy and Verge (control plane and proxies) as
// separate processes on 127.0.0.0/8, puts the same load through each path,
// and prints a Markdown report: throughput, latency percentiles, CPU per
// request, proxy memory, binary sizes, the cost of the proxies' telemetry
// (metrics, access logs, tracing), the topology API's answer time, and
// Verge's floors checked against the stock baseline. It owns process
// orchestration and the report; the load itself is bench/load's.
//
// Run from the module root:
//
//	go run ./bench/cmd/meshbench -o bench/RESULTS.md
//
// The same binary, re-executed with a subcommand ("backend", "stock-proxy"),
// is the backend and the stock proxies.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if childMain(ctx, os.Args[1:]) {
		return
	}
	var o options
	var cases, protocols, loadsRE string
	flag.StringVar(&o.out, "o", "", "also write the report to this file")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unrecorded warm-up before each measurement")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "recorded time of each measurement")
	flag.Int64Var(&o.maxRequests, "max-requests", 5_000_000, "cap on recorded requests per measurement")
	flag.StringVar(&cases, "cases", "", "regexp: run only the cases whose key matches (direct, stock1, stock2, stock2-tuned, haproxy2, verge1, verge2, verge2-mtls, verge2-policy, verge2-telemetry-off, verge2-metrics-logs, verge2-trace1, verge2-trace100; e.g. 'verge2-(telemetry|metrics|trace)' for issue 6's telemetry cases)")
	flag.StringVar(&loadsRE, "loads", "", "regexp: run only the loads whose name matches (e.g. '64 connections' for the load of the Verge-to-Verge throughput floors)")
	flag.StringVar(&protocols, "protocols", "http,grpc", "protocols to measure: http, grpc or both")
	flag.StringVar(&o.proxyBinary, "proxy-binary", "verge-proxy", "binary that runs the Verge proxies: verge-proxy or verge (as `verge proxy`)")
	flag.StringVar(&o.root, "root", "", "root of the Verge module (where go.mod is); default: the module of the current directory")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory with logs and data")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds of the open-loop and 64-connection loads (the latency and Verge-to-Verge throughput floors take their medians)")
	flag.IntVar(&o.pairs, "pairs", 9, "back-to-back pairs that measure each Verge-to-Verge throughput floor (0: take the rounds' ratios)")
	flag.DurationVar(&o.pairDuration, "pair-duration", 2*time.Second, "recorded time of each side of a pair")
	flag.BoolVar(&o.skipScale, "skip-scale", false, "skip the 100 services × 10 endpoints memory measurement")
	flag.BoolVar(&o.skipTopology, "skip-topology", false, "skip the topology API benchmark ("+topologyCommand+") run after the loads")
	flag.Parse()
	o.command = "go run ./bench/cmd/meshbench"
	for _, a := range os.Args[1:] {
		if strings.ContainsAny(a, " |*?()[]{}$'\"\\;&<>") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		o.command += " " + a
	}

	var err error
	if o.cases, err = regexp.Compile(cases); err != nil {
		fatal(fmt.Errorf("-cases %q: %w", cases, err))
	}
	if o.loads, err = regexp.Compile(loadsRE); err != nil {
		fatal(fmt.Errorf("-loads %q: %w", loadsRE, err))
	}
	for p := range strings.SplitSeq(protocols, ",") {
		switch strings.TrimSpace(p) {
		case "http":
			o.http = true
		case "grpc":
			o.grpc = true
		default:
			fatal(fmt.Errorf("-protocols %q: want http, grpc or both", protocols))
		}
	}
	if o.proxyBinary != "verge-proxy" && o.proxyBinary != "verge" {
		fatal(fmt.Errorf("-proxy-binary %q: want verge-proxy or verge", o.proxyBinary))
	}
	if o.root == "" {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		gomod := strings.TrimSpace(string(out))
		if err != nil || gomod == "" || gomod == os.DevNull {
			fatal(fmt.Errorf("find the Verge module: run from inside it or pass -root (go env GOMOD: %q, %v)", gomod, err))
		}
		o.root = filepath.Dir(gomod)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, o, logger); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "meshbench:", err)
	os.Exit(1)
}
