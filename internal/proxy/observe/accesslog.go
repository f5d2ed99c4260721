package observe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// maxPendingBytes bounds the lines waiting for the writer. At 25k
	// requests/s of ~400-byte lines that is 100 ms of traffic, far more
	// than a healthy disk needs; past it the disk is not keeping up and
	// lines are dropped rather than held in memory. The writer keeps a
	// second buffer of the same size, so the log costs at most twice this.
	maxPendingBytes = 1 << 20
	// flushDelay is the longest a line waits for the writer: like Envoy's
	// access log flush interval (1 s by default), it lets a quiet proxy
	// wake once per interval rather than once per request. A busy one
	// writes whenever flushBytes are pending, long before that.
	flushDelay = time.Second
	// flushBytes pending start a write at once: large writes (a few
	// hundred a second at 25k requests/s) without holding lines longer
	// than a busy disk needs.
	flushBytes = 64 << 10
	// lineCap is the initial capacity of a pooled line buffer.
	lineCap = 512
)

// AccessLogger writes JSON access log lines without blocking the request
// path: lines queue in a bounded buffer drained by one goroutine; when the
// buffer is full, lines are dropped and counted in
// verge_access_log_dropped_total. Safe for concurrent use; several
// Observers and Requests may share one AccessLogger.
//
// A line is formatted on the caller's goroutine into a pooled buffer
// (hand-written appends rather than encoding/json, whose reflection
// allocates and costs several times more per line), then copied into the
// pending buffer under a short lock. The writer goroutine swaps the pending
// buffer for its spare one and writes it in one call.
type AccessLogger struct {
	w       io.Writer
	c       io.Closer // nil for standard output
	dropped prometheus.Counter
	lines   sync.Pool // *[]byte
	max     int
	delay   time.Duration

	wake chan struct{} // capacity 1: "pending became non-empty"
	full chan struct{} // capacity 1: "pending reached flushAt"
	// flushAt is flushBytes, or less for a small max.
	flushAt int
	quit    chan struct{} // closed by Close
	done    chan struct{} // closed when the writer returned

	// mu guards pending and closed.
	mu      sync.Mutex
	pending []byte
	closed  bool

	// err is the writer's first write error; read after done.
	err error
}

// OpenAccessLog opens (appends to) path, or standard output for
// "/dev/stdout" (standard error for "/dev/stderr"), and starts the writer
// goroutine; Close stops it. reg (may be nil) receives
// verge_access_log_dropped_total, shared by every AccessLogger on it.
func OpenAccessLog(path string, reg *prometheus.Registry) (*AccessLogger, error) {
	switch path {
	case "":
		return nil, errors.New("access log: path is empty")
	case "/dev/stdout":
		return newAccessLogger(os.Stdout, nil, droppedCounter(reg), maxPendingBytes, flushDelay), nil
	case "/dev/stderr":
		return newAccessLogger(os.Stderr, nil, droppedCounter(reg), maxPendingBytes, flushDelay), nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return newAccessLogger(f, f, droppedCounter(reg), maxPendingBytes, flushDelay), nil
}

func newAccessLogger(w io.Writer, c io.Closer, dropped prometheus.Counter, max int, delay time.Duration) *AccessLogger {
	l := &AccessLogger{
		w:       w,
		c:       c,
		dropped: dropped,
		max:     max,
		delay:   delay,
		wake:    make(chan struct{}, 1),
		full:    make(chan struct{}, 1),
		flushAt: min(flushBytes, max/4),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	initial := min(max, 64<<10)
	l.pending = make([]byte, 0, initial)
	l.lines.New = func() any {
		b := make([]byte, 0, lineCap)
		return &b
	}
	go l.run(make([]byte, 0, initial))
	return l
}

// Close flushes the queued lines, stops the writer and closes the file
// (not standard output). Lines logged after Close are dropped and counted.
// It returns the first write error the writer met, if any. Calling Close
// again returns nil.
func (l *AccessLogger) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.quit)
	<-l.done
	var cerr error
	if l.c != nil {
		cerr = l.c.Close()
	}
	return errors.Join(l.err, cerr)
}

func (l *AccessLogger) logRequest(r *Request) {
	p := l.lines.Get().(*[]byte)
	b := appendRequestLine((*p)[:0], r)
	l.enqueue(b)
	*p = b
	l.lines.Put(p)
}

func (l *AccessLogger) logConn(c *Conn) {
	p := l.lines.Get().(*[]byte)
	b := appendConnLine((*p)[:0], c)
	l.enqueue(b)
	*p = b
	l.lines.Put(p)
}

// enqueue copies line into the pending buffer, or drops it when the buffer
// is full or the logger closed.
func (l *AccessLogger) enqueue(line []byte) {
	l.mu.Lock()
	if l.closed || len(l.pending)+len(line) > l.max {
		l.mu.Unlock()
		l.dropped.Inc()
		return
	}
	before := len(l.pending)
	l.pending = append(l.pending, line...)
	after := len(l.pending)
	l.mu.Unlock()
	if before == 0 {
		signal(l.wake)
	}
	if before < l.flushAt && after >= l.flushAt {
		signal(l.full)
	}
}

// signal wakes the writer unless a wake-up is pending already.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// run is the writer: it owns spare and the file until it returns. After
// the first line of a batch it waits for flushAt bytes, the delay, or
// Close, whichever comes first, and writes the batch in one call.
func (l *AccessLogger) run(spare []byte) {
	defer close(l.done)
	t := time.NewTimer(l.delay)
	t.Stop()
	for {
		select {
		case <-l.wake:
			t.Reset(l.delay)
			select {
			case <-t.C:
			case <-l.full:
				t.Stop()
			case <-l.quit:
				t.Stop()
			}
		case <-l.full:
		case <-l.quit:
		}
		l.mu.Lock()
		batch := l.pending
		l.pending = spare[:0]
		closed := l.closed
		l.mu.Unlock()
		if len(batch) > 0 {
			if _, err := l.w.Write(batch); err != nil {
				if l.err == nil {
					l.err = fmt.Errorf("access log: %w", err)
				}
				// Lines that did not reach the file are lost like
				// dropped ones; count them so the loss is visible.
				l.dropped.Add(float64(bytes.Count(batch, []byte{'\n'})))
			}
		}
		spare = batch[:0]
		if closed {
			// closed was read under the same lock as the swap, and
			// enqueue refuses lines once it is set: nothing is left.
			return
		}
	}
}

// LogRequest writes r's line only, for a listener whose metrics are off
// but whose access log is on.
func (l *AccessLogger) LogRequest(r *Request) { l.logRequest(r) }

// LogConn writes c's line only (see LogRequest).
func (l *AccessLogger) LogConn(c *Conn) { l.logConn(c) }
