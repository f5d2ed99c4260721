package tracing

import (
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
)

// LogErrors sends the OpenTelemetry SDK's errors (failed exports to a
// collector that is down, mostly) to log instead of the standard logger,
// at most one line a minute: a collector outage must not flood the
// proxy's log. The SDK's error handler is process-wide.
func LogErrors(log *slog.Logger) {
	var last atomic.Int64
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		now := time.Now().UnixNano()
		prev := last.Load()
		if now-prev < int64(time.Minute) || !last.CompareAndSwap(prev, now) {
			return
		}
		log.Warn("trace export failed (further errors this minute are not logged)", "error", err)
	}))
}
