//go:build !linux

package observe

import (
	"runtime"

	"verge.dev/verge/internal/telemetry"
)

// processStats reports goroutines only: CPU and RSS are read from Linux
// interfaces, and the proxy runs on Linux.
func processStats() telemetry.ProcessStats {
	return telemetry.ProcessStats{Goroutines: runtime.NumGoroutine()}
}
