package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"verge.dev/verge/internal/demo"
)

// TestExamplesApply applies every example the docs point at, and the demo's
// own resources, through the CLI: what a reader copies must be accepted.
func TestExamplesApply(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		out, code := c.verge(t, "", "apply", "-f", f)
		if code != 0 {
			t.Errorf("verge apply -f %s: exit %d\n%s", f, code, out)
		}
	}
	demoYAML := strings.NewReplacer("{{.HTTP}}", "8080", "{{.GRPC}}", "9000").Replace(demo.Resources)
	c.apply(t, demoYAML)
	out, code := c.verge(t, "", "get", "httproutes")
	if code != 0 || !strings.Contains(out, "backend-split") {
		t.Errorf("get httproutes after applying the demo's resources: exit %d\n%s", code, out)
	}
}
