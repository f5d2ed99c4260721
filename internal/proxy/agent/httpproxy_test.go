package agent

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestWorkloadHTTPProxy: --http-proxy-port registers spec.httpProxy, and
// 0 leaves it out.
func TestWorkloadHTTPProxy(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"off", Config{}, `null`},
		{"on", Config{HTTPProxyPort: 15080, HTTPProxyAddress: "127.0.0.2"}, `{"port":15080,"address":"127.0.0.2"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.cfg.workload())
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Spec struct {
					HTTPProxy json.RawMessage `json:"httpProxy"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if got.Spec.HTTPProxy == nil {
				got.Spec.HTTPProxy = json.RawMessage("null")
			}
			if diff := cmp.Diff(tt.want, string(got.Spec.HTTPProxy)); diff != "" {
				t.Errorf("spec.httpProxy (-want +got):\n%s", diff)
			}
		})
	}
}
