package h2

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// wire is what client and server connections share: the framer, the
// serialized write side and the connection-level flow control.
//
// Writes happen on the goroutine of the stream that writes, under wmu; the
// bufio.Writer is flushed by the last writer in line (one that sees nobody
// else waiting), and what a stream leaves at the end of a message is
// flushed by the connection's flusher goroutine after the runnable
// goroutines had their turn (unlockBatched), so that frames of concurrent
// streams leave in one TLS record and one syscall. Reads happen on the connection's reader goroutine
// only (fr's read side, hdec, recvWin decrements).
type wire struct {
	c  net.Conn
	br *bufio.Reader
	fr *http2.Framer
	// hdec decodes header blocks (headers.go).
	hdec headerDecoder

	// waiting counts writers queued for wmu, for flush coalescing.
	waiting atomic.Int32
	// wmu guards the write side: bw, fr's writes, henc and hbuf, werr and
	// armed.
	wmu  sync.Mutex
	bw   *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	// werr is the first write error; the connection is dead after it.
	werr error
	// armed is when the write deadline was last pushed forward.
	armed time.Time
	// kick wakes runFlusher when a message ended with bytes in bw.
	kick chan struct{}

	// peerFrame is the largest frame the peer accepts.
	peerFrame atomic.Uint32

	// fmu guards the send windows (the connection's here, each stream's in
	// its stream) and fdead; fcond wakes writers waiting for window.
	fmu   sync.Mutex
	fcond sync.Cond
	// sendWin is how much DATA the peer still accepts on the connection.
	sendWin int64
	// peerInit is the peer's SETTINGS_INITIAL_WINDOW_SIZE.
	peerInit int64
	// fdead is set when the connection died: window waits end with it.
	fdead error

	// recvWin is how much DATA the peer may still send on the connection
	// (decremented by the reader, credited back by consumers); unacked is
	// consumed data not yet credited.
	recvWin atomic.Int64
	unacked atomic.Int64
}

func (w *wire) init(c net.Conn) {
	w.c = c
	w.br = bufio.NewReaderSize(c, 16<<10)
	w.bw = bufio.NewWriterSize(c, 16<<10)
	w.fr = http2.NewFramer(w.bw, w.br)
	w.fr.SetMaxReadFrameSize(readFrameSize)
	// DATA payloads are copied into their stream at once.
	w.fr.SetReuseFrames()
	w.hdec.init()
	w.kick = make(chan struct{}, 1)
	w.henc = hpack.NewEncoder(&w.hbuf)
	w.peerFrame.Store(defaultFrameSize)
	w.fcond.L = &w.fmu
	w.sendWin = defaultWindow
	w.peerInit = defaultWindow
	w.recvWin.Store(connWindow)
}

// writePreamble writes this side's SETTINGS and the connection window
// increase (and, for a client, the preface first); it is flushed with the
// first request or at once for a server.
func (w *wire) writePreamble(client, flush bool, maxStreams uint32) error {
	w.lock()
	if client {
		_, _ = w.bw.WriteString(http2.ClientPreface)
	}
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		{ID: http2.SettingMaxFrameSize, Val: readFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	}
	if client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxStreams})
	}
	_ = w.fr.WriteSettings(settings...)
	_ = w.fr.WriteWindowUpdate(0, connWindow-defaultWindow)
	return w.unlock(flush)
}

// lock takes the write side.
func (w *wire) lock() {
	w.waiting.Add(1)
	w.wmu.Lock()
	w.waiting.Add(-1)
}

// unlock releases the write side, flushing first when asked and no other
// writer waits (that one flushes, or the next writer after it). It returns
// the connection's write error, if any.
func (w *wire) unlock(flush bool) error {
	if flush && w.waiting.Load() == 0 {
		w.flushLocked()
	}
	err := w.werr
	w.wmu.Unlock()
	if err != nil {
		// A broken write side makes the reader's next read fail too.
		_ = w.c.Close()
	}
	return err
}

// flushLocked writes out bw, under wmu.
func (w *wire) flushLocked() {
	if w.werr != nil || w.bw.Buffered() == 0 {
		return
	}
	if now := time.Now(); now.Sub(w.armed) > writeTimeout/2 {
		_ = w.c.SetWriteDeadline(now.Add(writeTimeout))
		w.armed = now
	}
	w.werr = w.bw.Flush()
}

// flushNow writes out what is buffered before the connection is closed
// by us: the flusher may not have run yet for the last stream's response.
func (w *wire) flushNow() {
	w.lock()
	w.flushLocked()
	_ = w.unlock(false)
}

// unlockBatched releases the write side after the last write of a
// stream's message (request or response) and leaves the flush to the
// connection's flusher goroutine (runFlusher), which runs once the
// goroutines ready to run had their turn: under load those are the other
// streams of the connection with their frames ready, and one flush, one
// TLS record and one syscall then carries all of them. The old rule alone
// (flush unless a writer waits for the lock) almost never found a writer
// waiting on two cores, so every message cost a write(2) on each side, the
// largest share of the CPU mutual TLS added per request. A write error
// shows in a later write's result and, as the connection is closed, in the
// reader's.
func (w *wire) unlockBatched() error {
	if w.werr != nil || w.bw.Buffered() == 0 {
		return w.unlock(false)
	}
	w.wmu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default: // a flush is already due
	}
	return nil
}

// runFlusher flushes what unlockBatched left buffered, until done is
// closed (the connection ended). Woken by a writer it yields once first
// (runtime.Gosched): the wake-up puts it next in line on the writer's P,
// the yield behind the goroutines already runnable, whose frames then
// join the flush. Being a goroutine of its own rather than the writer
// yielding matters: waking it also wakes an idle P, which takes it at
// once, so that a core is never left idle while bytes wait in bw.
func (w *wire) runFlusher(done <-chan struct{}) {
	for {
		select {
		case <-w.kick:
		case <-done:
			return
		}
		runtime.Gosched()
		w.lock()
		// A writer queued behind us flushes or kicks again (unlock's rule).
		_ = w.unlock(true)
	}
}

// setWriteErr records err as the connection's write error, under wmu.
func (w *wire) setWriteErrLocked(err error) {
	if w.werr == nil && err != nil {
		w.werr = err
	}
}

// writeHeadersLocked encodes fields (pseudo-header fields first) and writes
// them as HEADERS and CONTINUATION frames no larger than the peer accepts.
func (w *wire) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) {
	w.hbuf.Reset()
	for _, f := range fields {
		_ = w.henc.WriteField(f)
	}
	blk := w.hbuf.Bytes()
	max := int(w.peerFrame.Load())
	first := true
	for first || len(blk) > 0 {
		chunk := blk[:min(len(blk), max)]
		blk = blk[len(chunk):]
		var err error
		if first {
			err = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: end, EndHeaders: len(blk) == 0})
			first = false
		} else {
			err = w.fr.WriteContinuation(id, len(blk) == 0, chunk)
		}
		w.setWriteErrLocked(err)
	}
}

// writeRST resets stream id.
func (w *wire) writeRST(id uint32, code http2.ErrCode) {
	w.lock()
	w.setWriteErrLocked(w.fr.WriteRSTStream(id, code))
	_ = w.unlock(true)
}

// writeWindowUpdate credits n bytes to the peer on stream id (0: the
// connection).
func (w *wire) writeWindowUpdate(id uint32, n uint32) {
	w.lock()
	w.setWriteErrLocked(w.fr.WriteWindowUpdate(id, n))
	_ = w.unlock(true)
}

// consumed accounts n bytes of DATA as consumed on the connection (read by
// a stream, or discarded) and credits the peer in steps.
func (w *wire) consumed(n int64) {
	if n <= 0 {
		return
	}
	u := w.unacked.Add(n)
	if u < creditStep {
		return
	}
	if w.unacked.CompareAndSwap(u, 0) {
		w.recvWin.Add(u)
		w.writeWindowUpdate(0, uint32(u))
	}
}

// reserve waits until st and the connection have send window and takes up
// to want bytes of it (at most a frame), or returns the stream's or the
// connection's error.
func (w *wire) reserve(st *stream, want int) (int, error) {
	w.fmu.Lock()
	defer w.fmu.Unlock()
	for {
		if st.sendErr != nil {
			return 0, st.sendErr
		}
		if w.fdead != nil {
			return 0, w.fdead
		}
		if st.sendWin > 0 && w.sendWin > 0 {
			break
		}
		w.fcond.Wait()
	}
	n := int64(min(want, int(w.peerFrame.Load())))
	n = min(n, st.sendWin, w.sendWin)
	st.sendWin -= n
	w.sendWin -= n
	return int(n), nil
}

// writeData sends p on st as DATA frames within the flow-control windows,
// the last one with END_STREAM when end is set. flush false leaves the
// last frame buffered for a write that follows at once; flush true hands
// it to the flusher (unlockBatched).
func (w *wire) writeData(st *stream, p []byte, end, flush bool) error {
	if len(p) == 0 {
		if !end {
			return nil
		}
		w.lock()
		w.setWriteErrLocked(w.fr.WriteData(st.id, true, nil))
		if flush {
			return w.unlockBatched()
		}
		return w.unlock(false)
	}
	for len(p) > 0 {
		n, err := w.reserve(st, len(p))
		if err != nil {
			return err
		}
		chunk := p[:n]
		p = p[n:]
		w.lock()
		w.setWriteErrLocked(w.fr.WriteData(st.id, end && len(p) == 0, chunk))
		switch {
		case len(p) > 0:
			// More to come after waiting for window: let the peer
			// have this much now.
			err = w.unlock(true)
		case flush:
			err = w.unlockBatched()
		default:
			err = w.unlock(false)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// die ends every wait for send window with err.
func (w *wire) die(err error) {
	w.fmu.Lock()
	if w.fdead == nil {
		w.fdead = err
	}
	w.fcond.Broadcast()
	w.fmu.Unlock()
}

// applySettings applies the peer's SETTINGS and acknowledges them; the
// reader goroutine calls it with a function listing the open streams
// (called without fmu held: stream maps are locked before fmu).
// maxStreams receives SETTINGS_MAX_CONCURRENT_STREAMS.
func (w *wire) applySettings(f *http2.SettingsFrame, streams func() []*stream, maxStreams func(uint32)) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			open := streams()
			w.fmu.Lock()
			delta := int64(s.Val) - w.peerInit
			w.peerInit = int64(s.Val)
			for _, st := range open {
				st.sendWin += delta
				if st.sendWin > 1<<31-1 {
					w.fmu.Unlock()
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			w.fcond.Broadcast()
			w.fmu.Unlock()
		case http2.SettingMaxFrameSize:
			w.peerFrame.Store(s.Val)
		case http2.SettingHeaderTableSize:
			w.lock()
			w.henc.SetMaxDynamicTableSizeLimit(s.Val)
			_ = w.unlock(false)
		case http2.SettingMaxConcurrentStreams:
			if maxStreams != nil {
				maxStreams(s.Val)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.lock()
	w.setWriteErrLocked(w.fr.WriteSettingsAck())
	return w.unlock(true)
}

// applyWindowUpdate credits send window to the connection (st nil) or a
// stream.
func (w *wire) applyWindowUpdate(st *stream, incr uint32) error {
	w.fmu.Lock()
	defer w.fmu.Unlock()
	if st == nil {
		w.sendWin += int64(incr)
		if w.sendWin > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else {
		st.sendWin += int64(incr)
		if st.sendWin > 1<<31-1 {
			return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeFlowControl}
		}
	}
	w.fcond.Broadcast()
	return nil
}

// ping answers a PING.
func (w *wire) ping(f *http2.PingFrame) {
	if f.IsAck() {
		return
	}
	w.lock()
	w.setWriteErrLocked(w.fr.WritePing(true, f.Data))
	_ = w.unlock(true)
}

// goAway writes a GOAWAY frame and flushes it.
func (w *wire) goAway(last uint32, code http2.ErrCode) {
	w.lock()
	w.setWriteErrLocked(w.fr.WriteGoAway(last, code, nil))
	_ = w.unlock(true)
}

// readPreface reads the client preface a server expects first.
func readPreface(br *bufio.Reader) bool {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, buf); err != nil {
		return false
	}
	return string(buf) == http2.ClientPreface
}

// stream is the state of one stream both sides share: received DATA
// waiting to be read, and the send window.
type stream struct {
	id uint32
	w  *wire

	// mu guards the receive side below; wake holds a token when it
	// changed, for the one goroutine that reads.
	mu   sync.Mutex
	wake chan struct{}
	buf  []byte
	off  int
	// ended is set when END_STREAM arrived; rerr when the stream was
	// reset or failed (reads return it once buf is drained... or at once).
	ended bool
	rerr  error
	// recvWin is what the peer may still send on the stream; unacked is
	// read and not yet credited.
	recvWin int64
	unacked int64
	// received counts DATA bytes, to check a declared content-length.
	received int64

	// sendWin and sendErr are guarded by w.fmu.
	sendWin int64
	sendErr error
}

// init sets up a stream that was not used yet.
func (st *stream) init(w *wire, id uint32, sendWin int64) {
	st.id, st.w, st.wake = id, w, make(chan struct{}, 1)
	st.recvWin, st.sendWin = streamWindow, sendWin
}

func (st *stream) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// deliver appends a DATA frame's payload (flow counts its padding too);
// the reader goroutine calls it. It returns a stream error when the peer
// overran the window.
func (st *stream) deliver(data []byte, flow int64, end bool) error {
	st.mu.Lock()
	if st.rerr != nil {
		// Nobody reads any more: give the connection window back.
		st.mu.Unlock()
		st.w.consumed(flow)
		return nil
	}
	if flow > st.recvWin {
		st.mu.Unlock()
		st.w.consumed(flow)
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeFlowControl}
	}
	st.recvWin -= flow
	st.buf = append(st.buf, data...)
	st.received += int64(len(data))
	pad := flow - int64(len(data))
	if end {
		st.ended = true
	}
	st.mu.Unlock()
	st.signal()
	if pad > 0 {
		st.w.consumed(pad)
	}
	return nil
}

// endStream marks the end of the peer's side without data (trailers).
func (st *stream) endStream() {
	st.mu.Lock()
	st.ended = true
	st.mu.Unlock()
	st.signal()
}

// fail ends the stream both ways with err, unless it already failed; it
// reports whether this call failed it. Buffered data is dropped and its
// connection window credited.
func (st *stream) fail(err error) bool {
	st.mu.Lock()
	if st.rerr != nil {
		st.mu.Unlock()
		return false
	}
	st.rerr = err
	dropped := int64(len(st.buf) - st.off)
	st.buf, st.off = nil, 0
	st.mu.Unlock()
	st.signal()
	st.w.consumed(dropped)
	st.w.fmu.Lock()
	if st.sendErr == nil {
		st.sendErr = err
	}
	st.w.fcond.Broadcast()
	st.w.fmu.Unlock()
	return true
}

// connDied ends the stream because its connection ended: a stream whose
// peer side had ended keeps what it received for its reader.
func (st *stream) connDied(err error) {
	st.mu.Lock()
	ended := st.ended
	st.mu.Unlock()
	if !ended {
		st.fail(err)
		return
	}
	st.w.fmu.Lock()
	if st.sendErr == nil {
		st.sendErr = err
	}
	st.w.fcond.Broadcast()
	st.w.fmu.Unlock()
}

// failed returns the stream's error, if it failed.
func (st *stream) failed() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.rerr
}

// read reads received DATA. Before blocking it calls beforeWait, if set (a
// caller relaying the data flushes what it wrote). It returns io.EOF with
// the last bytes when END_STREAM arrived and everything was read.
func (st *stream) read(p []byte, beforeWait func()) (int, error) {
	for {
		st.mu.Lock()
		if st.rerr != nil {
			err := st.rerr
			st.mu.Unlock()
			return 0, err
		}
		if n := len(st.buf) - st.off; n > 0 {
			k := copy(p, st.buf[st.off:])
			st.off += k
			if st.off == len(st.buf) {
				st.buf, st.off = st.buf[:0], 0
			}
			var credit int64
			if !st.ended {
				st.unacked += int64(k)
				if st.unacked >= creditStep {
					credit, st.unacked = st.unacked, 0
					st.recvWin += credit
				}
			}
			eof := st.ended && len(st.buf) == 0
			st.mu.Unlock()
			st.w.consumed(int64(k))
			if credit > 0 {
				st.w.writeWindowUpdate(st.id, uint32(credit))
			}
			if eof {
				return k, io.EOF
			}
			return k, nil
		}
		if st.ended {
			st.mu.Unlock()
			return 0, io.EOF
		}
		st.mu.Unlock()
		if beforeWait != nil {
			beforeWait()
		}
		<-st.wake
	}
}

// allRead reports whether END_STREAM arrived and every byte was read.
func (st *stream) allRead() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.ended && len(st.buf) == st.off
}
