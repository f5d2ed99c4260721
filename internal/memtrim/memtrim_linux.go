//go:build linux

package memtrim

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrPIE is returned by Trim for a position-independent executable, which it
// leaves alone (see the package comment).
var ErrPIE = errors.New("memtrim: position-independent executable")

// Trim releases the resident pages of the executable's read-only mappings
// and returns how many bytes of mappings it advised. It is safe to call at
// any time and from any goroutine; an error means nothing more was trimmed.
func Trim() (int, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	typ := f.Type
	f.Close()
	if typ != elf.ET_EXEC {
		return 0, ErrPIE
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// address perms offset dev inode path
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[5] != exe || strings.ContainsRune(fs[1], 'w') || !strings.HasPrefix(fs[1], "r") {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			continue
		}
		// The mapping is the process's own, read-only and file-backed, in
		// a non-PIE binary: MADV_DONTNEED only drops resident copies of
		// file pages. The raw syscall takes the range as integers, so no
		// Go pointer is made to memory the runtime does not manage.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED); errno != 0 {
			return total, fmt.Errorf("trim: madvise %s: %w", fs[0], errno)
		}
		total += int(end - start)
	}
	return total, nil
}
