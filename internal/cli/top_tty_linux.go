package cli

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// keyMode puts a terminal on in into cbreak mode, so that `verge top` gets
// each key as it is pressed and the key is not echoed over the table. It
// keeps the terminal's signals (Ctrl-C) and output processing, which raw
// mode would take away. Anything but a terminal is left as it is.
func keyMode(in io.Reader) (restore func()) {
	f, ok := in.(*os.File)
	if !ok {
		return func() {}
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	t := *old
	t.Lflag &^= unix.ICANON | unix.ECHO
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return func() {}
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}
