package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// topologyBenchArgs is the Go benchmark of the topology API at issue 6's
// scale (500 services, 5,000 workloads reporting): `go test` with these
// arguments, from the module root.
var topologyBenchArgs = []string{"test", "-run", "^$", "-bench", "Topology500", "./internal/topology/"}

// topologyCommand is topologyBenchArgs as a reader types it.
const topologyCommand = "go test -run '^$' -bench Topology500 ./internal/topology/"

// topologyFloor is the bound on one topology answer.
const topologyFloor = 100 * time.Millisecond

// topologyResult is one run of the topology benchmark.
type topologyResult struct {
	perOp time.Duration
	err   error
}

// runTopologyBench runs the topology benchmark in the module at root and
// reads its ns/op. It runs after the load measurements, so its CPU does not
// disturb them.
func runTopologyBench(ctx context.Context, root string) topologyResult {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", topologyBenchArgs...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return topologyResult{err: fmt.Errorf("%s: %w\n%s", topologyCommand, err, bytes.TrimSpace(out))}
	}
	d, err := parseBenchNsPerOp(out, "BenchmarkTopology500")
	if err != nil {
		return topologyResult{err: fmt.Errorf("%s: %w", topologyCommand, err)}
	}
	return topologyResult{perOp: d}
}

// parseBenchNsPerOp finds the result line of benchmark name in go test's
// output ("BenchmarkX-2   157   7527430 ns/op ...") and returns its ns/op.
func parseBenchNsPerOp(out []byte, name string) (time.Duration, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || (f[0] != name && !strings.HasPrefix(f[0], name+"-")) {
			continue
		}
		for i := 2; i < len(f); i++ {
			if f[i] != "ns/op" {
				continue
			}
			ns, err := strconv.ParseFloat(f[i-1], 64)
			if err != nil {
				return 0, fmt.Errorf("%s: ns/op %q: %w", name, f[i-1], err)
			}
			return time.Duration(ns), nil
		}
	}
	return 0, fmt.Errorf("no result line for %s in the output", name)
}
