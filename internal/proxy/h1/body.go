package h1

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
)

// The copy functions below move a message body from src to dst on the
// caller's goroutine. They report read errors (src) and write errors (dst)
// apart, because the two sides fail differently: a broken upstream becomes a
// 502 or a closed downstream, a broken downstream just ends the connection.
//
// Before any read that would block they flush dst, so a streamed body
// (server-sent events, long-poll) reaches the peer as soon as it arrives,
// while a body that is already buffered goes out in one write.

// copyFixed copies exactly n bytes.
func copyFixed(dst *bufio.Writer, src *bufio.Reader, n int64, cb *copyBuf) (rerr, werr error) {
	for n > 0 {
		if b := src.Buffered(); b > 0 {
			// Already buffered: write it from src's buffer, no extra copy.
			k := int(min(int64(b), n))
			p, _ := src.Peek(k)
			if _, err := dst.Write(p); err != nil {
				return nil, err
			}
			_, _ = src.Discard(k)
			n -= int64(k)
			cb.n += int64(k)
			continue
		}
		if err := dst.Flush(); err != nil {
			return nil, err
		}
		buf := cb.get()
		k, err := src.Read(buf[:min(int64(len(buf)), n)])
		if k > 0 {
			if _, err := dst.Write(buf[:k]); err != nil {
				return nil, err
			}
			n -= int64(k)
			cb.n += int64(k)
		}
		if err != nil && n > 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err, nil
		}
	}
	return nil, nil
}

// copyUntilEOF copies until src ends; EOF is success.
func copyUntilEOF(dst *bufio.Writer, src *bufio.Reader, cb *copyBuf) (rerr, werr error) {
	for {
		if b := src.Buffered(); b > 0 {
			p, _ := src.Peek(b)
			if _, err := dst.Write(p); err != nil {
				return nil, err
			}
			_, _ = src.Discard(b)
			cb.n += int64(b)
			continue
		}
		if err := dst.Flush(); err != nil {
			return nil, err
		}
		buf := cb.get()
		k, err := src.Read(buf)
		if k > 0 {
			if _, err := dst.Write(buf[:k]); err != nil {
				return nil, err
			}
			cb.n += int64(k)
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// maxTrailerBytes bounds a chunked body's trailer section.
const maxTrailerBytes = 64 << 10

// copyChunked reads a chunked body (RFC 9112 7.1) from src. With rechunk it
// writes it to dst chunked again, same chunk sizes and the trailer fields
// included (extensions are dropped); without it writes only the data, for
// an HTTP/1.0 recipient.
func copyChunked(dst *bufio.Writer, src *bufio.Reader, cb *copyBuf, rechunk bool) (rerr, werr error) {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return nil, err
			}
		}
		line, err := readLine(src)
		if err != nil {
			return err, nil
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return errChunkedEncoding, nil
		}
		if size == 0 {
			break
		}
		if rechunk {
			if err := writeChunkSize(dst, size); err != nil {
				return nil, err
			}
		}
		if rerr, werr := copyFixed(dst, src, size, cb); rerr != nil || werr != nil {
			return rerr, werr
		}
		line, err = readLine(src)
		if err != nil {
			return err, nil
		}
		if len(line) != 0 {
			return errChunkedEncoding, nil
		}
		if rechunk {
			if _, err := dst.WriteString("\r\n"); err != nil {
				return nil, err
			}
		}
	}
	if rechunk {
		if _, err := dst.WriteString("0\r\n"); err != nil {
			return nil, err
		}
	}
	total := 0
	for {
		line, err := readLine(src)
		if err != nil {
			return err, nil
		}
		if len(line) == 0 {
			break
		}
		if total += len(line); total > maxTrailerBytes {
			return errTrailerTooLarge, nil
		}
		if !validFieldLine(line) {
			return errChunkedEncoding, nil
		}
		if rechunk {
			_, _ = dst.Write(line)
			if _, err := dst.WriteString("\r\n"); err != nil {
				return nil, err
			}
		}
	}
	if rechunk {
		if _, err := dst.WriteString("\r\n"); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// readLine reads one line without its CRLF or LF. The slice aliases src's
// buffer until the next read; a line longer than that buffer is an error.
func readLine(src *bufio.Reader) ([]byte, error) {
	line, err := src.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errChunkedEncoding
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, nil
}

// parseChunkSize parses "1a2b[ ][;ext...]".
func parseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i >= 15 {
			return 0, false
		}
		n = n<<4 | int64(d)
	}
rest:
	if i == 0 {
		return 0, false
	}
	ext := trimOWS(line[i:])
	if len(ext) > 0 && ext[0] != ';' {
		return 0, false
	}
	for _, c := range ext {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	return n, true
}

func writeChunkSize(dst *bufio.Writer, n int64) error {
	if dst.Available() < 20 {
		if err := dst.Flush(); err != nil {
			return err
		}
	}
	b := strconv.AppendInt(dst.AvailableBuffer(), n, 16)
	b = append(b, '\r', '\n')
	_, err := dst.Write(b)
	return err
}

// validFieldLine checks a trailer field line the way parseFields checks a
// header field line.
func validFieldLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) {
		return false
	}
	for _, c := range line[colon+1:] {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
