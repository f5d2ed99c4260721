//go:build !linux

package cli

import "io"

// keyMode leaves the terminal as it is off Linux: keys reach `verge top`
// when Enter is pressed.
func keyMode(io.Reader) (restore func()) { return func() {} }
