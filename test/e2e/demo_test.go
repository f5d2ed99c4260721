package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs `verge demo` as a newcomer would (on its own loopback
// addresses and kernel-chosen ports), checks that traffic flows through the
// frontend to the backend and the gRPC greeter, that the dashboard lists the
// mesh, and that Ctrl-C stops every process it started.
func TestDemo(t *testing.T) {
	t.Parallel()
	hosts := fmt.Sprintf("127.%d.%d", 200+rand.IntN(50), rand.IntN(256))
	cmd := exec.Command(vergeBin, "demo", "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
		"--duration", "2m", "--rps", "20", "--hosts", hosts)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		done <- cmd.Wait()
	}()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })

	var api, frontend string
	apiRe := regexp.MustCompile(`Dashboard and API:\s+(\S+)`)
	feRe := regexp.MustCompile(`Frontend \(ingress\):\s+(\S+)`)
	deadline := time.After(60 * time.Second)
	for api == "" || frontend == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited before printing its banner: %v", <-done)
			}
			t.Log(l)
			if m := apiRe.FindStringSubmatch(l); m != nil {
				api = m[1]
			}
			if m := feRe.FindStringSubmatch(l); m != nil {
				frontend = m[1]
			}
		case <-deadline:
			t.Fatal("no banner from the demo within 60s")
		}
	}

	c := &http.Client{Timeout: 10 * time.Second}
	eventually(t, 60*time.Second, func() error {
		resp, err := c.Get(frontend)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var a struct {
			Backend *struct{ Service string }
			Greeter string
			Error   string
		}
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
			return err
		}
		if resp.StatusCode != 200 || a.Backend == nil || !strings.HasPrefix(a.Greeter, "hello frontend from greeter") {
			return fmt.Errorf("frontend answered %s: %+v", resp.Status, a)
		}
		return nil
	})
	eventually(t, 30*time.Second, func() error {
		resp, err := c.Get(api + "/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, want := range []string{"frontend", "backend-v1", "greeter", "frontend-0"} {
			if !strings.Contains(string(b), want) {
				return fmt.Errorf("dashboard does not show %q yet", want)
			}
		}
		return nil
	})

	// Ctrl-C: the demo stops its children and exits cleanly.
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exit after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30s of Ctrl-C")
	}
	if _, err := c.Get(api + "/healthz"); err == nil {
		t.Errorf("control plane still answers after the demo stopped")
	}
	if _, err := c.Get(frontend); err == nil {
		t.Errorf("frontend proxy still answers after the demo stopped")
	}
}
