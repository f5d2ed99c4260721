package ratelimit

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"
)

// MaxChunk is the most bytes Copy writes per wait for tokens. Connections
// sharing a Bucket reserve chunk by chunk in turn, so none waits behind
// another's large write.
const MaxChunk = 16 << 10

// minChunk keeps a tiny burst from turning the copy into one syscall per
// few bytes.
const minChunk = 512

var chunkPool = sync.Pool{New: func() any { return new([MaxChunk]byte) }}

// Copy copies src to dst as io.Copy does, taking a token of lim per byte
// before writing it, and returns the bytes written. lim is typically one
// Bucket per service shared by every connection of the service, its
// Burst the bytes that may pass at once; each chunk read is at most
// min(Burst, MaxChunk) bytes (at least 512). A nil lim copies unlimited.
//
// Copy returns when src reaches EOF (nil error), a read or write fails, or
// ctx ends while waiting for tokens (ctx's error). A blocked Read or Write
// does not see ctx: the caller closes the connections when ctx ends, as
// the TCP proxy does on shutdown, which ends them.
func Copy(ctx context.Context, dst io.Writer, src io.Reader, lim *Bucket) (int64, error) {
	if lim == nil {
		return io.Copy(dst, src)
	}
	chunk := min(MaxChunk, max(minChunk, lim.p.burst))
	bufp := chunkPool.Get().(*[MaxChunk]byte)
	defer chunkPool.Put(bufp)
	buf := bufp[:chunk]

	// One timer for the whole copy; a new one per chunk would allocate.
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if wait := lim.Reserve(n); wait > 0 {
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case <-ctx.Done():
					return written, ctx.Err()
				case <-timer.C:
				}
			}
			m, werr := dst.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
			if m != n {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return written, nil
			}
			return written, rerr
		}
	}
}
