package observe

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"verge.dev/verge/internal/telemetry"
)

// processStats reads the process's CPU time (getrusage) and resident set
// (/proc/self/statm). A failed read leaves its field zero: the report is
// still worth sending.
func processStats() telemetry.ProcessStats {
	s := telemetry.ProcessStats{Goroutines: runtime.NumGoroutine()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.CPUSeconds = tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
	}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		// statm: size resident shared text lib data dt, in pages.
		if f := bytes.Fields(b); len(f) > 1 {
			if pages, err := strconv.ParseUint(string(f[1]), 10, 64); err == nil {
				s.RSSBytes = pages * uint64(os.Getpagesize())
			}
		}
	}
	return s
}

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}
