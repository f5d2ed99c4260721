//go:build linux

package memtrim

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Trim releases the resident pages of the executable's read-only mappings
// and returns how many bytes of mappings it advised. It is safe to call at
// any time and from any goroutine; errors only mean nothing was trimmed.
func Trim() (int, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// address perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != exe || strings.ContainsRune(f[1], 'w') || !strings.HasPrefix(f[1], "r") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			continue
		}
		// The mapping is the process's own, read-only and file-backed:
		// MADV_DONTNEED only drops resident copies of file pages.
		mem := unsafe.Slice((*byte)(unsafe.Pointer(uintptr(start))), end-start)
		if err := unix.Madvise(mem, unix.MADV_RANDOM); err != nil {
			return total, fmt.Errorf("trim: madvise random %s: %w", f[0], err)
		}
		if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
			return total, fmt.Errorf("trim: madvise dontneed %s: %w", f[0], err)
		}
		total += int(end - start)
	}
	return total, nil
}
