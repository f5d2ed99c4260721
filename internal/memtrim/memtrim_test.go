package memtrim

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func rssFile(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssFile:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestTrimKeepsTheProcessWorking trims, then exercises code and data that
// start-up touched (formatting, maps, reflection through the test framework),
// so a trim that dropped anything but clean file pages would crash here.
func TestTrimKeepsTheProcessWorking(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("trim is Linux-only")
	}
	before := rssFile(t)
	n, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no mapping of the executable was advised")
	}
	m := map[string]int{}
	for i := range 1000 {
		m[strconv.Itoa(i)] = i
	}
	if len(m) != 1000 || strings.Repeat("x", 3) != "xxx" {
		t.Fatal("process state changed after trim")
	}
	t.Logf("advised %d bytes; file-backed resident %d kB -> %d kB", n, before, rssFile(t))
}
