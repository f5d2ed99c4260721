package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// TestProxyDependencies keeps the small verge-proxy build free of the control
// plane's heavy parts: the store backends, Kubernetes and Gateway API
// packages, and the dashboard.
func TestProxyDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "verge.dev/verge/cmd/verge-proxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{"go.etcd.io/", "k8s.io/", "sigs.k8s.io/", "verge.dev/verge/web", "verge.dev/verge/internal/store",
		"verge.dev/verge/internal/controlplane", "verge.dev/verge/internal/apiserver", "verge.dev/verge/api/"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("verge-proxy links %s", pkg)
			}
		}
	}
}
