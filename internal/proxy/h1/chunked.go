package h1

import (
	"bufio"
	"io"
)

// chunkedReader decodes a chunked body (RFC 9112 7.1) from br as an
// io.Reader, for the exchanges whose other side is not an HTTP/1.1
// connection (Upstream, Pool.RoundTrip). Trailer fields are checked and
// dropped. The zero value is ready for a new body.
type chunkedReader struct {
	// left is what remains of the current chunk's data; crlf is set when
	// that data must be followed by its CRLF before the next size line.
	left int64
	crlf bool
	done bool
}

func (c *chunkedReader) read(br *bufio.Reader, p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	for c.left == 0 {
		if c.crlf {
			line, err := readLine(br)
			if err != nil {
				return 0, err
			}
			if len(line) != 0 {
				return 0, errChunkedEncoding
			}
			c.crlf = false
		}
		line, err := readLine(br)
		if err != nil {
			return 0, err
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return 0, errChunkedEncoding
		}
		if size == 0 {
			if err := skipTrailers(br); err != nil {
				return 0, err
			}
			c.done = true
			return 0, io.EOF
		}
		c.left, c.crlf = size, true
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := br.Read(p)
	c.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// skipTrailers reads the trailer section after the last chunk.
func skipTrailers(br *bufio.Reader) error {
	total := 0
	for {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if total += len(line); total > maxTrailerBytes {
			return errTrailerTooLarge
		}
		if !validFieldLine(line) {
			return errChunkedEncoding
		}
	}
}
