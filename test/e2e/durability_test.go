package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"verge.dev/verge/internal/store/etcd/etcdtest"
)

// TestAcceptedWritesSurviveKill9 kills the control plane with SIGKILL while a
// client applies a stream of resources, restarts it on the same state, and
// finds every write the API acknowledged.
func TestAcceptedWritesSurviveKill9(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"bolt", "etcd"} {
		t.Run(backend, func(t *testing.T) {
			var extra []string
			if backend == "etcd" {
				eps := etcdtest.Start(t)
				extra = []string{"--store", "etcd", "--etcd-endpoints", strings.Join(eps, ","), "--etcd-prefix", "/kill9-" + t.Name()}
			}
			dataDir := t.TempDir()
			c := startCP(t, dataDir, extra...)
			admin := c.adminToken(t)
			acked := make(chan string, 10000)
			done := make(chan struct{})
			go func() {
				defer close(done)
				hc := &http.Client{Timeout: 5 * time.Second}
				for i := 0; i < 5000; i++ {
					name := fmt.Sprintf("svc-%d", i)
					body := fmt.Sprintf(`{"apiVersion":"verge.dev/v1alpha1","kind":"Service","metadata":{"name":%q},"spec":{"ports":[{"port":80}]}}`, name)
					req, _ := http.NewRequest(http.MethodPut, c.api+"/apis/verge.dev/v1alpha1/namespaces/default/services/"+name, strings.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Authorization", "Bearer "+admin)
					resp, err := hc.Do(req)
					if err != nil {
						return // the control plane is gone
					}
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated {
						acked <- name
					}
				}
			}()
			// Kill once a good number of writes went through, mid-stream.
			eventually(t, 60*time.Second, func() error {
				if len(acked) < 200 {
					return fmt.Errorf("%d acked", len(acked))
				}
				return nil
			})
			c.kill()
			<-done
			close(acked)
			var names []string
			for n := range acked {
				names = append(names, n)
			}
			api := c.api
			startCPAt(t, dataDir, api, "127.0.0.1:0", extra...)
			out, code := c.verge(t, "", "get", "services", "-o", "json")
			if code != 0 {
				t.Fatalf("get services after restart: exit %d\n%s", code, out)
			}
			var missing []string
			for _, n := range names {
				if !strings.Contains(out, `"`+n+`"`) {
					missing = append(missing, n)
				}
			}
			if len(missing) > 0 {
				t.Fatalf("%d of %d acknowledged services lost after kill -9: %v", len(missing), len(names), missing[:min(10, len(missing))])
			}
			t.Logf("%d acknowledged writes, all present after kill -9 and restart", len(names))
		})
	}
}
