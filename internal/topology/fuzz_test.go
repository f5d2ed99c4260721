package topology

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"verge.dev/verge/internal/telemetry"
)

// FuzzReport checks the report decoder and validator: no panic; a report
// it accepts aggregates without panicking, and encodes back into a report
// it accepts as the same value.
func FuzzReport(f *testing.F) {
	good := report("web-1", "default", "web", "z1",
		edge(telemetry.Outbound, "web.default", "z1", "api.default", "z2", 10, 1, map[int]uint64{4: 9, 14: 1}),
		edge(telemetry.Inbound, "unknown", "", "web.default", "z1", 3, 0, map[int]uint64{0: 3}))
	good.Taps = []telemetry.TapEvent{{TapID: "ab", Proxy: "web-1.default", Direction: "outbound", Protocol: "grpc",
		Source: "web.default", Destination: "api.default", Path: "/pkg.Svc/Call", Status: 200, GRPCStatus: 14, Duration: time.Millisecond}}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"proxy":"a.b","workload":"b/a","service":"a","namespace":"b","start":"2026-05-01T12:00:00Z","end":"2026-05-01T12:00:05Z","process":{"cpuSeconds":1.5,"rssBytes":1,"goroutines":3}}`))
	f.Add([]byte(`{"edges":[{"direction":"inbound","protocol":"tcp","source":"x","destination":"y","latency":[1]}]}`))
	f.Add([]byte(`{"proxy":"a.b","workload":"b/a","namespace":"b","process":{"cpuSeconds":-1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeReport(data)
		if err != nil {
			return
		}
		a := New(Options{})
		a.Ingest(r, t0)
		a.Topology(time.Minute, t0)
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal accepted report: %v", err)
		}
		r2, err := DecodeReport(again)
		if err != nil {
			t.Fatalf("re-encoded report refused: %v\n%s", err, again)
		}
		if diff := cmp.Diff(r, r2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
