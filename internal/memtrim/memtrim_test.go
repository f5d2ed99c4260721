package memtrim

import (
	"errors"
	"os"
	"os/exec"
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
// Under -buildmode=pie (see TestTrimPIE) Trim must refuse instead.
func TestTrimKeepsTheProcessWorking(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("trim is Linux-only")
	}
	before := rssFile(t)
	n, err := Trim()
	if errors.Is(err, ErrPIE) {
		t.Logf("position-independent test binary: trim refused, as it must")
		return
	}
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

// TestTrimPIE builds this package's tests as a position-independent
// executable and runs them: Trim must leave such a binary alone, since
// dropping its RELRO pages would crash it.
func TestTrimPIE(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("trim is Linux-only")
	}
	if os.Getenv("MEMTRIM_PIE_CHILD") == "1" {
		t.Skip("already the PIE child")
	}
	bin := t.TempDir() + "/memtrim-pie.test"
	if out, err := exec.Command("go", "test", "-c", "-buildmode=pie", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build PIE test binary: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-test.run", "TestTrimKeepsTheProcessWorking", "-test.v")
	cmd.Env = append(os.Environ(), "MEMTRIM_PIE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "trim refused") {
		t.Fatalf("PIE test binary: %v\n%s", err, out)
	}
}
