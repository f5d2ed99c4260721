//go:build linux

package memtrim

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

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
		// MADV_DONTNEED only drops resident copies of file pages. The raw
		// syscall takes the range as integers, so no Go pointer is made
		// to memory the runtime does not manage.
		for _, advice := range []int{unix.MADV_RANDOM, unix.MADV_DONTNEED} {
			if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), uintptr(advice)); errno != 0 {
				return total, fmt.Errorf("trim: madvise %s: %w", f[0], errno)
			}
		}
		total += int(end - start)
	}
	return total, nil
}
