// Package e2e runs the real verge binary as separate processes on loopback:
// control planes, proxies and the CLI, with real HTTP/1.1, HTTP/2, gRPC and
// TCP clients and servers. The binary is built once in TestMain.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// vergeBin is the verge binary under test, built by TestMain.
var vergeBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "verge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	vergeBin = filepath.Join(dir, "verge")
	args := []string{"build", "-o", vergeBin}
	if os.Getenv("VERGE_E2E_RACE") == "1" {
		// The processes under test run with the race detector too, so a
		// race that only shows across real connections is caught here.
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "verge.dev/verge/cmd/verge")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build verge:", err)
		return 1
	}
	return m.Run()
}
